"""Signing, encryption, node credentials and TLS: the cryptography every deployment shares (all from `cryptography`)."""

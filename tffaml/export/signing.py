"""Signed model packages: a manifest of SHA-256 digests, signed with Ed25519.

A package is a directory (an exported SavedModel, a checkpoint). Signing
writes `SIGNATURE_FILE` inside it: the manifest (every other file's relative
path and SHA-256 digest) and an Ed25519 signature (RFC 8032, via
`cryptography`) over the manifest's canonical JSON. Verification checks the
signature with the publisher's public key, then every file on disk against
the manifest: a modified, missing or added file, or the wrong key, is
refused with what is wrong. No file escapes the manifest.

The `model-signing` package (Sigstore bundles) would be preferred, but its
releases that work need typing-extensions >= 4.14 while TFF 0.87 pins
< 4.6, so this is the plain-`cryptography` form the issue allows.
"""

import base64
import hashlib
import json
import os

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tffaml import errors
from tffaml import io

SIGNATURE_FILE = 'tffaml-signature.json'
ALGORITHM = 'ed25519-sha256-manifest-v1'
PRIVATE_KEY_FILE = 'signing_key.pem'
PUBLIC_KEY_FILE = 'signing_key.pub.pem'


class VerificationError(errors.InputError):
  """A package that is not exactly what its publisher signed."""


def generate_keys(out_dir: str) -> tuple[str, str]:
  """Writes a new Ed25519 key pair; the private key is readable by its owner only.

  Returns:
    (private key path, public key path).
  """
  private, public = (os.path.join(out_dir, n) for n in (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE))
  for path in (private, public):
    if os.path.exists(path):
      raise FileExistsError(f'{path} exists; keys are never overwritten.')
  key = ed25519.Ed25519PrivateKey.generate()
  os.makedirs(out_dir, exist_ok=True)
  with io.atomic_path(private) as tmp:
    os.chmod(tmp, 0o600)
    with open(tmp, 'wb') as f:
      f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
  with io.atomic_path(public) as tmp:
    with open(tmp, 'wb') as f:
      f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo))
  return private, public


def _load_key(path: str, *, private: bool):
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: key file not found.')
  with open(path, 'rb') as f:
    data = f.read()
  try:
    key = (serialization.load_pem_private_key(data, password=None) if private
           else serialization.load_pem_public_key(data))
  except ValueError as e:
    raise errors.InputError(f'{path}: not a PEM {"private" if private else "public"} key: {e}') from None
  expected = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
  if not isinstance(key, expected):
    raise errors.InputError(f'{path}: not an Ed25519 key (scripts/keygen.py writes one).')
  return key


def fingerprint(public_key: ed25519.Ed25519PublicKey) -> str:
  raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
  return hashlib.sha256(raw).hexdigest()[:16]


def _digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def manifest(package_dir: str) -> dict[str, str]:
  """Relative path -> SHA-256 of every file in the package but the signature."""
  if not os.path.isdir(package_dir):
    raise FileNotFoundError(f'{package_dir}: package directory not found.')
  files = {}
  for root, _, names in os.walk(package_dir):
    for name in names:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, package_dir).replace(os.sep, '/')
      if relative != SIGNATURE_FILE:
        files[relative] = _digest(path)
  return dict(sorted(files.items()))


def _canonical(files: dict[str, str]) -> bytes:
  return json.dumps({'algorithm': ALGORITHM, 'files': files}, sort_keys=True,
                    separators=(',', ':')).encode()


def sign(package_dir: str, private_key_file: str) -> str:
  """Signs every file of `package_dir`; returns the signature file's path."""
  key = _load_key(private_key_file, private=True)
  files = manifest(package_dir)
  if not files:
    raise errors.InputError(f'{package_dir}: no files to sign.')
  signature = {
      'algorithm': ALGORITHM,
      'public_key_fingerprint': fingerprint(key.public_key()),
      'files': files,
      'signature': base64.b64encode(key.sign(_canonical(files))).decode(),
  }
  path = os.path.join(package_dir, SIGNATURE_FILE)
  io.write_json(path, signature)
  return path


def verify(package_dir: str, public_key_file: str) -> dict[str, str]:
  """Checks `package_dir` against its signature; returns the verified manifest.

  Raises:
    VerificationError: naming the problem (unsigned, wrong key or altered
      manifest, modified / missing / unsigned file).
  """
  key = _load_key(public_key_file, private=False)
  path = os.path.join(package_dir, SIGNATURE_FILE)
  if not os.path.isfile(path):
    raise VerificationError(f'{package_dir}: not signed (no {SIGNATURE_FILE}); refusing to load it.')
  try:
    with open(path) as f:
      signed = json.load(f)
    files, signature = signed['files'], base64.b64decode(signed['signature'])
    if signed['algorithm'] != ALGORITHM:
      raise VerificationError(f'{path}: unknown algorithm {signed["algorithm"]!r}.')
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise VerificationError(f'{path}: unreadable signature file ({e}).') from None
  try:
    key.verify(signature, _canonical(files))
  except crypto_exceptions.InvalidSignature:
    raise VerificationError(
        f'{package_dir}: the signature does not verify with {public_key_file} (key'
        f' {fingerprint(key)}; signed by key {signed.get("public_key_fingerprint")}): wrong key,'
        ' or the manifest was altered.') from None
  on_disk = manifest(package_dir)
  for name, digest in files.items():
    if name not in on_disk:
      raise VerificationError(f'{package_dir}: signed file {name!r} is missing.')
    if on_disk[name] != digest:
      raise VerificationError(
          f'{package_dir}: file {name!r} was modified (SHA-256 {on_disk[name][:16]}..., signed'
          f' {digest[:16]}...).')
  added = sorted(set(on_disk) - set(files))
  if added:
    raise VerificationError(f'{package_dir}: file(s) {added} are not in the signed manifest.')
  return files

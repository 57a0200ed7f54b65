"""Signed messages between the coordinator and the institutions' nodes.

Everything that travels is a `Message`: a kind, a JSON header and numpy
arrays (weights, updates, statistics), signed by its sender. The coordinator
signs with its Ed25519 key (the one that signs exported packages); a node with
its EC P-384 node key (the one Flower authenticates it with). TLS protects a
message in transit; the signature says who wrote it, so a node trains only on
a plan and a global model its coordinator signed, and the coordinator
aggregates only updates its registered nodes signed.

Wire form: 2-byte signature length, signature, then the signed body: 4-byte
header length, header JSON (UTF-8), arrays as an `.npz` (no pickles).
"""

import dataclasses
import hashlib
import io
import json
import zipfile
from typing import Any, Collection, Union

from cryptography import exceptions as cryptography_exceptions
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
import numpy as np

from tffaml import errors

PrivateKey = Union[ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey]
PublicKey = Union[ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey]


class Refused(errors.Refusal):
  """A message that does not verify, or that its receiver did not agree to."""


@dataclasses.dataclass(frozen=True)
class Message:
  kind: str
  header: dict[str, Any]
  arrays: tuple[np.ndarray, ...] = ()


def _body(message: Message) -> bytes:
  header = json.dumps({'kind': message.kind, **message.header}, sort_keys=True).encode()
  buffer = io.BytesIO()
  np.savez(buffer, *message.arrays)
  return len(header).to_bytes(4, 'big') + header + buffer.getvalue()


def _sign(key: PrivateKey, data: bytes) -> bytes:
  if isinstance(key, ed25519.Ed25519PrivateKey):
    return key.sign(data)
  if isinstance(key, ec.EllipticCurvePrivateKey):
    return key.sign(data, ec.ECDSA(hashes.SHA384()))
  raise TypeError(f'cannot sign with a {type(key).__name__}.')


def _verify(key: PublicKey, signature: bytes, data: bytes) -> None:
  if isinstance(key, ed25519.Ed25519PublicKey):
    key.verify(signature, data)
  elif isinstance(key, ec.EllipticCurvePublicKey):
    key.verify(signature, data, ec.ECDSA(hashes.SHA384()))
  else:
    raise TypeError(f'cannot verify with a {type(key).__name__}.')


def seal(message: Message, key: PrivateKey) -> bytes:
  """`message` signed with `key`, as bytes to send."""
  body = _body(message)
  signature = _sign(key, body)
  return len(signature).to_bytes(2, 'big') + signature + body


def unseal(blob: bytes, key: PublicKey, *, sender: str, kinds: Collection[str]) -> Message:
  """The message in `blob` if `key` (its `sender`'s) signed it and it is one of `kinds`.

  Raises:
    Refused: a signature that does not verify (tampered, or another
      sender's), a malformed blob, or a message of another kind.
  """
  try:
    length = int.from_bytes(blob[:2], 'big')
    signature, body = blob[2:2 + length], blob[2 + length:]
    _verify(key, signature, body)
  except (cryptography_exceptions.InvalidSignature, ValueError, IndexError):
    raise Refused(f'a message claiming to be from {sender} does not verify with its registered key:'
                  ' it was altered, or someone else signed it; it was discarded.') from None
  try:
    header, arrays = _parse(body)
  except (ValueError, KeyError, EOFError, OSError, zipfile.BadZipFile) as e:
    # Signed by a registered sender, yet not what `seal` writes (its bug, or malice): a refusal the
    # coordinator drops that node's reply for, not a traceback that stops the federation.
    raise Refused(f'{sender} sent a malformed message ({e}); it was discarded.') from None
  if header.get('kind') not in kinds:
    raise Refused(f'{sender} sent a {header.get("kind")!r} message where one of {sorted(kinds)} was due.')
  return Message(kind=header.pop('kind'), header=header, arrays=arrays)


def _parse(body: bytes) -> tuple[dict[str, Any], tuple[np.ndarray, ...]]:
  """The header and arrays of a message's body; ValueError if `_body` did not write it."""
  header_length = int.from_bytes(body[:4], 'big')
  header = json.loads(body[4:4 + header_length])
  if not isinstance(header, dict):
    raise ValueError('its header is not a JSON object')
  archive = np.load(io.BytesIO(body[4 + header_length:]), allow_pickle=False)
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise ValueError('its arrays are not an .npz')
  with archive:
    return header, tuple(archive[f'arr_{i}'] for i in range(len(archive.files)))


def peek(blob: bytes) -> Message:
  """The message in `blob` WITHOUT checking its signature: only to choose the key to `unseal` it with."""
  length = int.from_bytes(blob[:2], 'big')
  body = blob[2 + length:]
  header_length = int.from_bytes(body[:4], 'big')
  header = json.loads(body[4:4 + header_length])
  return Message(kind=header.pop('kind', ''), header=header)


def digest(blob: bytes) -> str:
  """A message's SHA-256, so a reply names the request it answers."""
  return hashlib.sha256(blob).hexdigest()


def load_private_key(path: str) -> PrivateKey:
  """A PEM (the coordinator's Ed25519) or OpenSSH (a node's EC) private key."""
  data = _read(path)
  try:
    loader = (serialization.load_ssh_private_key if data.startswith(b'-----BEGIN OPENSSH')
              else serialization.load_pem_private_key)
    key = loader(data, password=None)
  except (ValueError, cryptography_exceptions.UnsupportedAlgorithm) as e:
    raise errors.InputError(f'{path}: not a private key ({e}); scripts/pki.py writes them.') from None
  except TypeError:  # What cryptography raises for a key under a passphrase: it was a traceback.
    raise errors.InputError(f'{path}: the key is encrypted with a passphrase; give an unencrypted key'
                            ' readable by its owner only, as scripts/pki.py writes them.') from None
  return _usable(key, path, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey))


def load_public_key(path: str) -> PublicKey:
  """A PEM (the coordinator's Ed25519) or OpenSSH (a node's EC) public key."""
  data = _read(path)
  try:
    if data.startswith(b'-----BEGIN'):
      key = serialization.load_pem_public_key(data)
    else:
      key = serialization.load_ssh_public_key(data)
  except (ValueError, cryptography_exceptions.UnsupportedAlgorithm) as e:
    raise errors.InputError(f'{path}: not a public key ({e}); scripts/pki.py writes them.') from None
  return _usable(key, path, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey))


def _usable(key, path: str, types: tuple[type, ...]):
  """`key` if messages can be signed or verified with it (else `_sign` or `_verify` fails with a traceback)."""
  if not isinstance(key, types):
    kind = type(key).__name__.removeprefix('_').replace('PrivateKey', '').replace('PublicKey', '')
    raise errors.InputError(f'{path}: the key is {kind}; messages are signed with Ed25519 or EC keys,'
                            ' as scripts/pki.py writes them.')
  return key


def _read(path: str) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise errors.InputError(f'{path}: cannot read the key ({e.strerror}).') from None

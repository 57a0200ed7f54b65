"""Signed model packages: a manifest of SHA-256 digests, signed with Ed25519.

A package is a directory (an exported SavedModel, a checkpoint). Signing
writes `SIGNATURE_FILE` inside it: the manifest (every other file's relative
path and SHA-256 digest, and every directory) and an Ed25519 signature (RFC
8032, via `cryptography`) over the manifest's canonical JSON. Verification
checks the whole tree against the manifest: a modified, missing or added
file or directory, or the wrong key, is refused with what is wrong. A
package holds only regular files and directories: a symlink (which could
point outside the package), a FIFO or a device anywhere in it is refused
from its directory entry, before anything is read (reading a FIFO would
hang). No entry escapes the manifest.

The `model-signing` package (Sigstore bundles) would be preferred, but its
releases that work need typing-extensions >= 4.14 while TFF 0.87 pins
< 4.6, so this is the plain-`cryptography` form the issue allows.
"""

import base64
import hashlib
import json
import os
import stat

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tffaml import errors
from tffaml import io

SIGNATURE_FILE = 'tffaml-signature.json'
ALGORITHM = 'ed25519-sha256-manifest-v2'  # v2: directories too; only files and directories.
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


def _kind(mode: int) -> str:
  for test, name in ((stat.S_ISLNK, 'symbolic link'), (stat.S_ISFIFO, 'FIFO'),
                     (stat.S_ISCHR, 'character device'), (stat.S_ISBLK, 'block device'),
                     (stat.S_ISSOCK, 'socket')):
    if test(mode):
      return name
  return 'special file'


def tree(package_dir: str) -> tuple[list[str], list[str]]:
  """(files, directories) under `package_dir`, relative, sorted; reads no file.

  Raises:
    VerificationError: on any entry that is neither a regular file nor a
      directory (symlinks are not followed).
  """
  if not os.path.isdir(package_dir) or os.path.islink(package_dir):
    raise FileNotFoundError(f'{package_dir}: package directory not found.')
  files, directories, pending = [], [], ['']
  while pending:
    relative = pending.pop()
    with os.scandir(os.path.join(package_dir, relative)) as entries:
      for entry in entries:
        name = f'{relative}/{entry.name}' if relative else entry.name
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
          directories.append(name)
          pending.append(name)
        elif stat.S_ISREG(mode):
          files.append(name)
        else:
          raise VerificationError(
              f'{package_dir}: {name!r} is a {_kind(mode)}; a package holds only regular files'
              ' and directories. Refusing it without reading it.')
  return sorted(files), sorted(directories)


def manifest(package_dir: str) -> dict:
  """{'files': relative path -> SHA-256 (all but the signature), 'directories': [relative path]}."""
  files, directories = tree(package_dir)
  return {'files': {name: _digest(os.path.join(package_dir, name))
                    for name in files if name != SIGNATURE_FILE},
          'directories': directories}


def _canonical(entries: dict) -> bytes:
  return json.dumps({'algorithm': ALGORITHM, **entries}, sort_keys=True,
                    separators=(',', ':')).encode()


def sign(package_dir: str, private_key_file: str) -> str:
  """Signs every file of `package_dir`; returns the signature file's path."""
  key = _load_key(private_key_file, private=True)
  entries = manifest(package_dir)
  if not entries['files']:
    raise errors.InputError(f'{package_dir}: no files to sign.')
  signature = {
      'algorithm': ALGORITHM,
      'public_key_fingerprint': fingerprint(key.public_key()),
      **entries,
      'signature': base64.b64encode(key.sign(_canonical(entries))).decode(),
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
  files_on_disk, directories_on_disk = tree(package_dir)  # Refuses links and special files first.
  path = os.path.join(package_dir, SIGNATURE_FILE)
  if SIGNATURE_FILE not in files_on_disk:
    raise VerificationError(f'{package_dir}: not signed (no {SIGNATURE_FILE}); refusing to load it.')
  try:
    with open(path) as f:
      signed = json.load(f)
    if signed['algorithm'] != ALGORITHM:
      raise VerificationError(
          f'{path}: algorithm {signed["algorithm"]!r} is not {ALGORITHM!r} (v1 did not cover'
          ' directories); have the publisher re-sign the package with scripts/sign.py.')
    entries = {'files': signed['files'], 'directories': signed['directories']}
    files, signature = entries['files'], base64.b64decode(signed['signature'])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise VerificationError(f'{path}: unreadable signature file ({e}).') from None
  try:
    key.verify(signature, _canonical(entries))
  except crypto_exceptions.InvalidSignature:
    raise VerificationError(
        f'{package_dir}: the signature does not verify with {public_key_file} (key'
        f' {fingerprint(key)}; signed by key {signed.get("public_key_fingerprint")}): wrong key,'
        ' or the manifest was altered.') from None
  on_disk = set(files_on_disk) - {SIGNATURE_FILE}
  for name, digest in files.items():
    if name not in on_disk:
      raise VerificationError(f'{package_dir}: signed file {name!r} is missing.')
    actual = _digest(os.path.join(package_dir, name))
    if actual != digest:
      raise VerificationError(
          f'{package_dir}: file {name!r} was modified (SHA-256 {actual[:16]}..., signed'
          f' {digest[:16]}...).')
  added = sorted(on_disk - set(files))
  if added:
    raise VerificationError(f'{package_dir}: file(s) {added} are not in the signed manifest.')
  for problem, names in (('are not in the signed manifest', set(directories_on_disk) - set(entries['directories'])),
                         ('are signed but missing', set(entries['directories']) - set(directories_on_disk))):
    if names:
      raise VerificationError(f'{package_dir}: directories {sorted(names)} {problem}.')
  return files

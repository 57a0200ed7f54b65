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

What is loaded must be what was verified: a file of the package could be
rewritten (through another hard link, or by anyone who may write it)
between the check and the load. `verified_copy` therefore copies each file
into a fresh private directory while hashing the bytes it copies, and the
caller loads the copy; a file with more than one hard link is refused
outright. The signature file is read only up to `MAX_SIGNATURE_BYTES`, and
only its known fields are accepted, before it is parsed further.

The `model-signing` package (Sigstore bundles) would be preferred, but its
releases that work need typing-extensions >= 4.14 while TFF 0.87 pins
< 4.6, so this is the plain-`cryptography` form the issue allows.
"""

import base64
import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from typing import Iterator, Optional

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tffaml import errors
from tffaml import io

SIGNATURE_FILE = 'tffaml-signature.json'
ALGORITHM = 'ed25519-sha256-manifest-v2'  # v2: directories too; only files and directories.
PRIVATE_KEY_FILE = 'signing_key.pem'
PUBLIC_KEY_FILE = 'signing_key.pub.pem'
# A manifest entry is about 100 bytes and an export has about ten files: 4 MiB
# is tens of thousands of files, and bounds the memory a hostile file can take.
MAX_SIGNATURE_BYTES = 4 << 20
_FIELDS = frozenset({'algorithm', 'public_key_fingerprint', 'files', 'directories', 'signature'})
_BLOCK = 1 << 20


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


def _sha256(f, out=None) -> str:
  """SHA-256 of the rest of the open file `f`, read once in blocks; each block also written to `out` if given."""
  digest = hashlib.sha256()
  for block in iter(lambda: f.read(_BLOCK), b''):
    digest.update(block)
    if out:
      out.write(block)
  return digest.hexdigest()


def file_digest(path: str) -> str:
  """SHA-256 (hex) of the file at `path`, read in blocks."""
  with open(path, 'rb') as f:
    return _sha256(f)


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
  return {'files': {name: file_digest(os.path.join(package_dir, name))
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


def _refuse_unsafe(package_dir: str, name: str, info: os.stat_result) -> None:
  if not stat.S_ISREG(info.st_mode):
    raise VerificationError(
        f'{package_dir}: {name!r} is a {_kind(info.st_mode)}; a package holds only regular files'
        ' and directories. Refusing it without reading it.')
  if info.st_nlink > 1:
    raise VerificationError(
        f'{package_dir}: file {name!r} has {info.st_nlink} hard links; it could be rewritten through'
        ' another of them after it is verified. Copy the package with cp -r (not cp -a or ln) so that'
        ' each file has one link, and use the copy.')


def _open_package_file(package_dir: str, name: str) -> int:
  """A read-only descriptor of `name`, refused unless it is a regular file with one link."""
  try:  # O_NOFOLLOW, O_NONBLOCK: an entry swapped for a link or a FIFO since `tree` is not followed, nor waited on.
    fd = os.open(os.path.join(package_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise VerificationError(f'{package_dir}: {name!r} is a symbolic link; a package holds only'
                              ' regular files and directories.') from None
    raise
  try:
    _refuse_unsafe(package_dir, name, os.fstat(fd))
  except BaseException:
    os.close(fd)
    raise
  return fd


def _hash_file(package_dir: str, name: str, copy_to: Optional[str]) -> str:
  """SHA-256 of `name`'s bytes, read once; those same bytes are written to `copy_to`/`name`."""
  with open(_open_package_file(package_dir, name), 'rb') as f, contextlib.ExitStack() as stack:
    out = stack.enter_context(open(os.path.join(copy_to, name), 'xb')) if copy_to else None
    return _sha256(f, out)


def _read_signature(package_dir: str) -> tuple[dict, bytes]:
  """The signature file's fields and bytes; its size is checked before it is read, its fields before use."""
  path = os.path.join(package_dir, SIGNATURE_FILE)
  with open(_open_package_file(package_dir, SIGNATURE_FILE), 'rb') as f:
    size = os.fstat(f.fileno()).st_size
    data = f.read(MAX_SIGNATURE_BYTES + 1) if size <= MAX_SIGNATURE_BYTES else b''
  if size > MAX_SIGNATURE_BYTES or len(data) > MAX_SIGNATURE_BYTES:
    raise VerificationError(
        f'{path}: {max(size, len(data)):,} bytes; a signature file is at most'
        f' {MAX_SIGNATURE_BYTES:,} bytes. Refusing it unread: have the publisher re-sign the'
        ' package with scripts/sign.py.')
  try:
    signed = json.loads(data)
    algorithm = signed['algorithm']
  except (KeyError, TypeError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors.
    raise VerificationError(f'{path}: unreadable signature file ({e}).') from None
  if algorithm != ALGORITHM:
    raise VerificationError(
        f'{path}: algorithm {algorithm!r} is not {ALGORITHM!r} (v1 did not cover'
        ' directories); have the publisher re-sign the package with scripts/sign.py.')
  unknown, missing = sorted(set(signed) - _FIELDS), sorted(_FIELDS - set(signed))
  if unknown or missing:
    raise VerificationError(
        f'{path}: ' + '; '.join(f'{what} field(s) {names}' for what, names in
                                (('unknown', unknown), ('missing', missing)) if names) +
        f'. A signature file holds exactly {sorted(_FIELDS)} (anything else is not signed);'
        ' have the publisher re-sign the package with scripts/sign.py.')
  return signed, data


def _check_signature(package_dir: str, public_key_file: str, key, signed: dict) -> dict:
  """The signed manifest {'files', 'directories'}, once its signature verifies."""
  path = os.path.join(package_dir, SIGNATURE_FILE)
  try:
    entries = {'files': dict(signed['files']), 'directories': list(signed['directories'])}
    signature = base64.b64decode(signed['signature'])
  except (TypeError, ValueError) as e:
    raise VerificationError(f'{path}: unreadable signature file ({e}).') from None
  try:
    key.verify(signature, _canonical(entries))
  except crypto_exceptions.InvalidSignature:
    raise VerificationError(
        f'{package_dir}: the signature does not verify with {public_key_file} (key'
        f' {fingerprint(key)}; signed by key {signed.get("public_key_fingerprint")}): wrong key,'
        ' or the manifest was altered.') from None
  return entries


def _check_tree(package_dir: str, entries: dict, files_on_disk: list[str],
                directories_on_disk: list[str]) -> None:
  """Refuses a missing or an unsigned file or directory (from directory entries only)."""
  on_disk = set(files_on_disk) - {SIGNATURE_FILE}
  for name in entries['files']:
    if name not in on_disk:
      raise VerificationError(f'{package_dir}: signed file {name!r} is missing.')
  added = sorted(on_disk - set(entries['files']))
  if added:
    raise VerificationError(f'{package_dir}: file(s) {added} are not in the signed manifest.')
  for problem, names in (('are not in the signed manifest', set(directories_on_disk) - set(entries['directories'])),
                         ('are signed but missing', set(entries['directories']) - set(directories_on_disk))):
    if names:
      raise VerificationError(f'{package_dir}: directories {sorted(names)} {problem}.')


def _verify(package_dir: str, public_key_file: str, copy_to: Optional[str]) -> dict[str, str]:
  """`verify`; with `copy_to`, also writes the bytes it hashed there (a new directory)."""
  key = _load_key(public_key_file, private=False)
  files_on_disk, directories_on_disk = tree(package_dir)  # Refuses links and special files first.
  if SIGNATURE_FILE not in files_on_disk:
    raise VerificationError(f'{package_dir}: not signed (no {SIGNATURE_FILE}); refusing to load it.')
  signed, data = _read_signature(package_dir)
  entries = _check_signature(package_dir, public_key_file, key, signed)
  # Names below are the walk's own (the signed sets equal it): none can escape `copy_to`.
  _check_tree(package_dir, entries, files_on_disk, directories_on_disk)
  if copy_to:
    os.makedirs(copy_to)
    for directory in sorted(entries['directories']):
      os.makedirs(os.path.join(copy_to, directory))
    with open(os.path.join(copy_to, SIGNATURE_FILE), 'xb') as f:
      f.write(data)
  for name, digest in entries['files'].items():
    actual = _hash_file(package_dir, name, copy_to)
    if actual != digest:
      raise VerificationError(
          f'{package_dir}: file {name!r} was modified (SHA-256 {actual[:16]}..., signed'
          f' {digest[:16]}...).')
  return entries['files']


def verify(package_dir: str, public_key_file: str) -> dict[str, str]:
  """Checks `package_dir` against its signature; returns the verified manifest.

  To load the package, use `verified_copy`: the files checked here may
  change after this returns.

  Raises:
    VerificationError: naming the problem (unsigned, wrong key or altered
      manifest, modified / missing / unsigned / hard-linked file, an
      oversized signature file or one with fields that are not signed).
  """
  return _verify(package_dir, public_key_file, copy_to=None)


@contextlib.contextmanager
def verified_copy(package_dir: str, public_key_file: str) -> Iterator[str]:
  """A private copy of `package_dir` holding exactly the bytes that verified; load from it.

  The copy is in a new directory only we can enter (`tempfile.mkdtemp`),
  each file written from the same reads that were hashed, and is deleted
  when the block ends, also on an error.

  Raises:
    VerificationError: as `verify`.
  """
  private = tempfile.mkdtemp(prefix='tffaml-verified-')
  try:
    copy = os.path.join(private, 'package')
    _verify(package_dir, public_key_file, copy_to=copy)
    yield copy
  finally:
    shutil.rmtree(private, ignore_errors=True)

"""Encrypted model packages for transfer and storage: AES-256-GCM.

A package directory is archived (tar) and sealed with AES-256-GCM
(`cryptography`'s AESGCM; a random 96-bit nonce per file, the format header
as associated data), so a wrong key or any altered byte fails
authentication before anything is extracted. Signing (`signing`) says who
published a package; encryption keeps it unreadable on the way.

File layout: MAGIC | nonce (12 bytes) | ciphertext with its 16-byte tag.
The key is 32 random bytes, kept base64-encoded in a file or an environment
variable (`generate_key`). The archive holds only regular files and
directories, as a signed package does (`signing`): a hard link would give a
decrypted package a file that can be rewritten through another name after
it is verified, so one is refused on both sides.
"""

import base64
import io as stdlib_io
import os
import secrets
import tarfile
from typing import Optional

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives.ciphers import aead

from tffaml import errors
from tffaml import io

MAGIC = b'TFFAML-AESGCM-1\n'
_NONCE_BYTES = 12


class DecryptionError(errors.InputError):
  """Ciphertext that does not authenticate under the key."""


def generate_key(path: str) -> str:
  """Writes a new random AES-256 key (base64) readable by its owner only."""
  if os.path.exists(path):
    raise FileExistsError(f'{path} exists; keys are never overwritten.')
  with io.atomic_path(path) as tmp:
    os.chmod(tmp, 0o600)
    with open(tmp, 'w') as f:
      f.write(base64.b64encode(secrets.token_bytes(32)).decode() + '\n')
  return path


def load_key(*, key_file: Optional[str] = None, key_env: Optional[str] = None) -> bytes:
  """The 32-byte key from a file or an environment variable (base64)."""
  if (key_file is None) == (key_env is None):
    raise errors.InputError('give exactly one of --key_file and --key_env.')
  if key_file is not None:
    if not os.path.isfile(key_file):
      raise FileNotFoundError(f'{key_file}: key file not found.')
    with open(key_file, 'rb') as f:  # Bytes: a raw binary key file must be refused, not a UnicodeDecodeError.
      text, source = f.read().strip(), key_file
  else:
    if key_env not in os.environ:
      raise errors.InputError(f'environment variable {key_env} is not set.')
    text, source = os.environ[key_env].strip(), f'${key_env}'
  try:
    key = base64.b64decode(text, validate=True)
  except ValueError:  # binascii.Error, or non-ASCII text.
    raise errors.InputError(f'{source}: not base64 (generate_key writes a key:'
                            ' python scripts/encrypt.py --help).') from None
  if len(key) != 32:
    raise errors.InputError(f'{source}: an AES-256 key is 32 bytes, got {len(key)}.')
  return key


def _check_key(key: bytes) -> None:
  # AESGCM also takes 16- and 24-byte keys: a short key would silently be AES-128 or -192.
  if len(key) != 32:
    raise ValueError(f'an AES-256 key is 32 bytes, got {len(key)}.')


def seal(data: bytes, key: bytes, *, context: bytes = b'') -> bytes:
  """`data` sealed under `key`: MAGIC | nonce | AES-256-GCM ciphertext and tag.

  `context` is authenticated but not stored (e.g. what the data is, so that
  one sealed file cannot stand in for another); `unseal` needs the same.
  """
  _check_key(key)
  nonce = secrets.token_bytes(_NONCE_BYTES)
  return MAGIC + nonce + aead.AESGCM(key).encrypt(nonce, data, MAGIC + context)


def unseal(blob: bytes, key: bytes, *, source: str, context: bytes = b'') -> bytes:
  """The data `seal` sealed.

  Raises:
    DecryptionError: wrong key or context, altered or truncated data, not our format.
  """
  _check_key(key)
  if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _NONCE_BYTES + 16:
    raise DecryptionError(f'{source}: not a tffaml encrypted file.')
  nonce = blob[len(MAGIC):len(MAGIC) + _NONCE_BYTES]
  try:
    return aead.AESGCM(key).decrypt(nonce, blob[len(MAGIC) + _NONCE_BYTES:], MAGIC + context)
  except crypto_exceptions.InvalidTag:
    raise DecryptionError(f'{source}: does not authenticate: wrong key, or the file was altered.') from None


def _package_member(member: tarfile.TarInfo, *, source: str, fix: str) -> tarfile.TarInfo:
  """`member`, refused unless it is a regular file or a directory."""
  if member.isfile() or member.isdir():
    return member
  kind = ('hard link' if member.islnk() else 'symbolic link' if member.issym() else 'special file')
  raise errors.InputError(
      f'{source}: {member.name!r} is a {kind}; a package holds only regular files and directories,'
      f' each file with one link (see scripts/verify.py). {fix}')


def encrypt_package(package_dir: str, output: str, key: bytes) -> None:
  """Archives and seals `package_dir` into the file `output` (written atomically)."""
  if not os.path.isdir(package_dir):
    raise FileNotFoundError(f'{package_dir}: package directory not found.')
  archive = stdlib_io.BytesIO()
  with tarfile.open(fileobj=archive, mode='w') as tar:
    tar.add(package_dir, arcname='.', filter=lambda member: _package_member(
        member, source=package_dir, fix='Copy the package with cp -r (not cp -a) and encrypt the copy.'))
  with io.atomic_path(output) as tmp:
    with open(tmp, 'wb') as f:
      f.write(seal(archive.getvalue(), key))


def decrypt_package(encrypted: str, output_dir: str, key: bytes, *, overwrite: bool = False) -> None:
  """Authenticates and unpacks `encrypted` into `output_dir` (atomically).

  Raises:
    DecryptionError: wrong key, altered or truncated file, not our format.
  """
  with open(encrypted, 'rb') as f:
    plain = unseal(f.read(), key, source=encrypted)
  with io.atomic_path(output_dir, directory=True, replace=overwrite) as tmp:
    os.makedirs(tmp)
    with tarfile.open(fileobj=stdlib_io.BytesIO(plain)) as tar:
      for member in tar.getmembers():  # All before any is written.
        _package_member(member, source=encrypted, fix='Have its sender encrypt a copy made with cp -r.')
      tar.extractall(tmp, filter='data')  # Refuses absolute paths, '..', devices.

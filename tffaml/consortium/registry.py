"""The coordinator's registry of node keys, changed while the federation runs: admit, rotate, revoke.

The registry is the folder of `<institution>.pub` keys (scripts/coordinator.py
--nodes) and the SuperLink's list derived from it (--auth-list-public-keys).
Each change rewrites both atomically (a temporary file renamed onto the
old), the list last: the SuperLink (scripts/superlink.py) reloads it when it
changes, and the coordinator reads the folder again when it changes
(`LiveKeys`), so nobody restarts. A replaced or revoked key is kept in
`<folder>/revoked/` for the record; no new CA is needed, since the TLS
certificate is the coordinator's alone.
"""

import glob
import os
import re
import time
from typing import Iterator, Mapping

from tffaml import errors
from tffaml import io
from tffaml.consortium import messages
from tffaml.security import credentials

_NAME = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.-]*')


class RegistryError(errors.InputError):
  """A registry change that cannot be made as asked."""


def _key_file(nodes: str, institution: str) -> str:
  if not _NAME.fullmatch(institution or ''):
    raise RegistryError(f'--institution={institution!r}: give the institution\'s name (letters, digits, _ . -).')
  return os.path.join(nodes, institution + '.pub')


def _write_list(nodes: str, key_list: str) -> None:
  """The SuperLink's list from every key in the folder (the registry's single source)."""
  content = credentials.authorized_nodes(sorted(glob.glob(os.path.join(nodes, '*.pub'))))
  with io.atomic_path(key_list) as tmp, open(tmp, 'wb') as f:
    f.write(content)


def _read(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def _copy_in(public_key: str, path: str) -> None:
  credentials.authorized_nodes([public_key])  # A node's OpenSSH EC key on Flower's curve, or refused.
  data = _read(public_key)
  if any(_read(p).strip() == data.strip() for p in glob.glob(os.path.join(os.path.dirname(path), '*.pub'))):
    raise RegistryError(f'{public_key}: this key is already registered; each institution needs its own key.')
  with io.atomic_path(path) as tmp, open(tmp, 'wb') as f:
    f.write(data)


def _retire(path: str) -> str:
  """Moves a registered key to `revoked/`, named by the UTC time (kept for the record)."""
  stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
  retired = os.path.join(os.path.dirname(path), 'revoked', f'{os.path.basename(path)[:-4]}.{stamp}.pub')
  os.makedirs(os.path.dirname(retired), exist_ok=True)
  os.replace(path, retired)
  return retired


def admit(nodes: str, key_list: str, institution: str, public_key: str) -> str:
  """Registers a new institution's key; returns its file in the registry."""
  path = _key_file(nodes, institution)
  if os.path.exists(path):
    raise RegistryError(f'{path}: {institution} is already registered; to replace its key use rotate.')
  _copy_in(public_key, path)
  _write_list(nodes, key_list)
  return path


def rotate(nodes: str, key_list: str, institution: str, public_key: str) -> str:
  """Replaces a registered institution's key by a new one (the old one is refused from now on)."""
  path = _key_file(nodes, institution)
  if not os.path.exists(path):
    raise RegistryError(f'{path}: {institution} is not registered; admit it first.')
  retired = _retire(path)
  try:
    _copy_in(public_key, path)
  except BaseException:
    os.replace(retired, path)  # Refused: the registry stays as it was.
    raise
  _write_list(nodes, key_list)
  return path


def revoke(nodes: str, key_list: str, institution: str) -> str:
  """Removes an institution's key; returns where the revoked key is kept."""
  path = _key_file(nodes, institution)
  if not os.path.exists(path):
    raise RegistryError(f'{path}: {institution} is not registered.')
  retired = _retire(path)
  _write_list(nodes, key_list)
  return retired


def read_keys(nodes: str) -> dict[str, messages.PublicKey]:
  """The registered nodes' public keys, by institution (the file's basename)."""
  return {os.path.basename(p)[:-len('.pub')]: messages.load_public_key(p)
          for p in sorted(glob.glob(os.path.join(nodes, '*.pub')))}


class LiveKeys(Mapping[str, messages.PublicKey]):
  """The registry's keys, read again whenever the folder changes (a key admitted, rotated or revoked)."""

  def __init__(self, nodes: str):
    self._nodes, self._seen = nodes, None
    self._keys: dict[str, messages.PublicKey] = {}
    self._current()

  def _current(self) -> dict[str, messages.PublicKey]:
    # Each change renames a new file in (a new inode) or one out; modification times alone
    # are as coarse as the kernel's clock tick, too coarse for two changes in a row.
    seen = sorted((e.name, e.inode()) for e in os.scandir(self._nodes) if e.name.endswith('.pub'))
    if seen != self._seen:
      self._keys, self._seen = read_keys(self._nodes), seen
    return self._keys

  def __getitem__(self, name: str) -> messages.PublicKey:
    return self._current()[name]

  def __iter__(self) -> Iterator[str]:
    return iter(dict(self._current()))

  def __len__(self) -> int:
    return len(self._current())

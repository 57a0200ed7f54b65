"""Where a run's checkpoints live: TFF's files, or sealed with AES-256-GCM.

A checkpoint holds the model, the server optimizer's and aggregator's state,
the privacy ledger and the released model's running average. On a shared or
backed-up disk that is worth keeping unreadable: with a key,
`EncryptedProgramStateManager` writes each round's state as one sealed file
(`tffaml.security.encryption`, the code that seals model packages), bound to
its round so that an old file cannot be passed off as a newer one.
"""

import io as stdlib_io
import os
import re
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import errors
from tffaml import io
from tffaml.security import encryption

_FILE = 'state_{version}.sealed'
_FILE_PATTERN = re.compile(r'^state_(\d+)\.sealed$')
# tff.program.FileProgramStateManager's directories: a plaintext checkpoint.
_PLAIN_PATTERN = re.compile(r'^program_state_\d+$')


class EncryptedProgramStateManager(tff.program.ProgramStateManager):
  """Program state per version in one file sealed with AES-256-GCM, the latest `keep_total` kept.

  The state is a structure of arrays and numbers (what TFF's file manager
  also takes); `load` needs the same structure, as TFF's does.
  """

  def __init__(self, root_dir: str, key: bytes, *, keep_total: int = 2):
    self._root, self._key, self._keep = root_dir, key, keep_total

  def _path(self, version: int) -> str:
    return os.path.join(self._root, _FILE.format(version=version))

  async def get_versions(self) -> Optional[list[int]]:
    if not os.path.isdir(self._root):
      return None
    versions = sorted(int(m.group(1)) for m in map(_FILE_PATTERN.match, os.listdir(self._root)) if m)
    return versions or None

  async def load(self, version: int, structure):
    path = self._path(version)
    with open(path, 'rb') as f:
      plain = encryption.unseal(f.read(), self._key, source=path, context=_context(version))
    with np.load(stdlib_io.BytesIO(plain), allow_pickle=False) as arrays:
      leaves = [arrays[f'arr_{i}'] for i in range(len(arrays.files))]
    return tf.nest.pack_sequence_as(structure, leaves)

  async def save(self, program_state, version: int) -> None:
    buffer = stdlib_io.BytesIO()
    np.savez(buffer, *[np.asarray(leaf) for leaf in tf.nest.flatten(program_state)])
    os.makedirs(self._root, exist_ok=True)
    with io.atomic_path(self._path(version)) as tmp:
      with open(tmp, 'wb') as f:
        f.write(encryption.seal(buffer.getvalue(), self._key, context=_context(version)))
    for old in (await self.get_versions() or [])[:-self._keep]:
      os.remove(self._path(old))


def _context(version: int) -> bytes:
  return f'tffaml checkpoint, round {version}'.encode()


def state_manager(root_dir: str, key: Optional[bytes], *, keep_total: int = 2) -> tff.program.ProgramStateManager:
  """The run's checkpoints: sealed under `key`, or TFF's plaintext files when it is None.

  Raises:
    errors.InputError: `root_dir` holds checkpoints of the other kind (a run
      started with a key resumes only with it, and one started without a key
      only without one), before anything is written.
  """
  names = os.listdir(root_dir) if os.path.isdir(root_dir) else []
  sealed = any(_FILE_PATTERN.match(n) for n in names)
  plain = any(_PLAIN_PATTERN.match(n) for n in names)
  if key is None and sealed:
    raise errors.InputError(f'{root_dir}: the checkpoints are encrypted; resume with the key the run'
                            ' started with (--checkpoint_key_file or --checkpoint_key_env).')
  if key is not None and plain:
    raise errors.InputError(f'{root_dir}: the run started without encrypted checkpoints; resume it without'
                            ' a checkpoint key, or start a new run in another --workdir.')
  if key is None:
    return tff.program.FileProgramStateManager(root_dir, keep_total=keep_total, keep_first=False)
  return EncryptedProgramStateManager(root_dir, key, keep_total=keep_total)

"""A run's workdir: who holds it, what its checkpoints were made from, its secrets.

Four promises rest on this module:
  * One run at a time: `lock` takes an exclusive `flock` on `<workdir>/.lock`
    and names the holder's pid to a second run. Before that it writes a
    probe file: a workdir that is a file, read-only or full is refused in
    one line before any work.
  * A disk that fills mid-run (`disk_full_resumes`) ends the run in one
    line naming the path: the run resumes from its last checkpoint once
    space is freed, as after a kill.
  * A resumed run continues the run that wrote the checkpoints, or is refused
    before any work: `Identity` (written once, before round 1) records the
    data's fingerprint (institutions and their row counts) and the noise the
    checkpoints were trained with. A change of data, or a config change that
    would change the calibrated noise (e.g. more rounds under a target ε), is
    refused naming what changed, because the statement is computed from the
    noise actually used.
  * Checkpoints may travel (they are packages, see `tffaml.security.signing`);
    the DP noise seed must not. `redact` removes it from the state before a
    checkpoint is written and `restore` puts it back from
    `<workdir>/secret/noise_seed` (mode 0600), which never leaves the
    coordinator. Whoever holds that seed can regenerate and subtract the noise.
"""

import contextlib
import dataclasses
import errno
import fcntl
import glob
import json
import os
import re
import shutil
import tempfile
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
import tree


from tffaml import errors
from tffaml import io

IDENTITY_FILE = 'run_identity.json'
SECRET_DIR = 'secret'
NOISE_SEED_FILE = 'noise_seed'
_NOISE_KEY_FIELD = 'noise_key'  # dp_queries: [noise seed, stream] in the aggregator state.


class WorkdirError(errors.InputError):
  """A workdir that cannot be used for this run, with why and what to do."""


_FULL = (errno.ENOSPC, errno.EDQUOT)
_RESUME = 'free space and run the same command again: it resumes from the last checkpoint.'


def _unwritable(root: str, error: OSError) -> WorkdirError:
  if error.errno in _FULL:
    return WorkdirError(f'--workdir={root}: no space left on its device ({error.strerror}); free space'
                        ' there or use a --workdir on another disk.')
  why = {errno.EROFS: 'is on a read-only file system',
         errno.ENOTDIR: 'has a file, not a directory, in its path'}.get(
             error.errno, f'cannot be written ({error.strerror})')
  return WorkdirError(f'--workdir={root} {why}; use a --workdir you can write to.')


def check_writable(root: str) -> None:
  """Makes `root` and writes a probe file in it: refuses a file, a read-only directory or a full disk.

  The probe writes a block and syncs it, so that a full disk answers here
  rather than at a checkpoint. As root, permission bits do not stop a write;
  a read-only mount does, and is refused here.
  """
  if os.path.exists(root) and not os.path.isdir(root):
    raise WorkdirError(f'--workdir={root} is a file, not a directory; name a directory (a new one, or'
                       ' the workdir of the run to resume).')
  try:
    os.makedirs(root, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=root, prefix='.write_probe.tmp-')  # A leftover is a stale temporary.
    try:
      os.write(fd, bytes(4096))
      os.fsync(fd)
    finally:
      os.close(fd)
      with contextlib.suppress(FileNotFoundError):  # A starting run may have just removed it as stale.
        os.remove(probe)
  except OSError as e:
    raise _unwritable(root, e) from None


def disk_full(error: BaseException) -> bool:
  """Whether `error` is the OS's or TensorFlow's "No space left on device" (or quota exceeded)."""
  if isinstance(error, OSError):
    return error.errno in _FULL
  return isinstance(error, tf.errors.ResourceExhaustedError) and 'No space left on device' in str(error)


def _full_path(error: BaseException) -> Optional[str]:
  """The file a full disk refused, where the error names it (TF's: '<path>; No space left on device')."""
  if isinstance(error, OSError):
    return error.filename
  found = re.search(r'(/[^\s;]+)[;:]? No space left on device', str(error))
  return found.group(1) if found else None


@contextlib.contextmanager
def disk_full_resumes(root: str) -> Iterator[None]:
  """Turns a full disk in the block into one line naming the path: the run resumes once space is freed.

  Checkpoints, metrics and the export are written atomically (a temporary
  renamed into place, removed on failure or by `remove_stale_temporaries`),
  so what a full disk interrupts is redone by the same command.
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not disk_full(e):
      raise
    where = _full_path(e) or root
    raise WorkdirError(f'no space left on the device of {where} (--workdir={root}); {_RESUME}') from None


@contextlib.contextmanager
def lock(root: str) -> Iterator[None]:
  """Holds an exclusive lock on `root` for the block; refuses if another run holds it.

  Raises:
    WorkdirError: another run holds `root`, or it cannot be written (`check_writable`).
  """
  check_writable(root)
  path = os.path.join(root, '.lock')
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'unknown'
      raise WorkdirError(
          f'{root} is in use by another run (pid {holder}); wait for it to end or use'
          ' another --workdir.') from None
    f.seek(0)
    f.truncate()
    f.write(f'{os.getpid()}\n')
    f.flush()
    try:
      yield
    finally:
      f.seek(0)
      f.truncate()
      fcntl.flock(f, fcntl.LOCK_UN)


def remove_stale_temporaries(root: str) -> list[str]:
  """Removes what a killed run left half-written: `io.atomic_path` temporaries, TFF temp checkpoints.

  Call with the lock held: only a live run could still be writing them.
  """
  patterns = ('.*.tmp-*', '*/.*.tmp-*', 'checkpoints/*_temp*', 'results/.*.tmp-*',
              'results/metrics.csv_temp*')  # TFF's CSV manager's, e.g. when a full disk stopped it.
  removed = sorted({p for pattern in patterns for p in glob.glob(os.path.join(root, pattern))})
  for path in removed:
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  return removed


def check_outside(root: str, data_dir: str) -> None:
  """Refuses a workdir inside the data directory (it would be read as an institution)."""
  root, data_dir = os.path.realpath(root), os.path.realpath(data_dir)
  if os.path.commonpath([root, data_dir]) == data_dir:
    raise WorkdirError(
        f'--workdir={root} is inside config.data.dir={data_dir}, where every folder is read as an'
        ' institution; put the workdir outside the data directory.')


@dataclasses.dataclass(frozen=True)
class Identity:
  """What a run's checkpoints were trained on and with.

  Attributes:
    institutions: (name, training rows, test rows) of each institution.
    record_noise_multiplier: DP-SGD's noise multiplier; None without record-level DP.
    client_noise_multiplier: The DP aggregator's; None without client-level DP.
    rounds: The rounds the noise was calibrated for (None: not calibrated).
  """

  institutions: tuple[tuple[str, int, int], ...]
  record_noise_multiplier: Optional[float]
  client_noise_multiplier: Optional[float]
  rounds: Optional[int]

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, value: dict) -> 'Identity':
    return cls(institutions=tuple(tuple(i) for i in value['institutions']),
               record_noise_multiplier=value['record_noise_multiplier'],
               client_noise_multiplier=value['client_noise_multiplier'], rounds=value['rounds'])


def _data_change(saved: Identity, current: Identity) -> Optional[str]:
  before = {name: (train, test) for name, train, test in saved.institutions}
  now = {name: (train, test) for name, train, test in current.institutions}
  changes = [f'{n} added' for n in sorted(set(now) - set(before))]
  changes += [f'{n} removed' for n in sorted(set(before) - set(now))]
  changes += [f'{n}: {before[n][0]}/{before[n][1]} -> {now[n][0]}/{now[n][1]} train/test rows'
              for n in sorted(set(now) & set(before)) if now[n] != before[n]]
  return '; '.join(changes) or None


def check_identity(root: str, current: Identity, *, checkpoint_round: Optional[int],
                   rounds: int, target_epsilon: Optional[float]) -> None:
  """Refuses to resume checkpoints that `current` (this run) would misdescribe.

  Args:
    root: The workdir.
    current: This run's data and planned noise.
    checkpoint_round: The latest checkpoint's round; None when there is none.
    rounds: `config.federated.rounds` of this run.
    target_epsilon: `config.privacy.target_epsilon` of this run.

  Raises:
    WorkdirError: naming the change and what to do.
  """
  if checkpoint_round is None:
    return
  path = os.path.join(root, IDENTITY_FILE)
  if not os.path.isfile(path):
    raise WorkdirError(f'{root} holds checkpoints without {IDENTITY_FILE}; they cannot be checked'
                       ' against this run. Use a new --workdir.')
  with open(path) as f:
    saved = Identity.from_dict(json.load(f))
  change = _data_change(saved, current)
  if change:
    raise WorkdirError(f'{root}: the data changed since its checkpoints were written ({change});'
                       ' resume with the same data or use a new --workdir.')
  if checkpoint_round > rounds:
    raise WorkdirError(
        f'config.federated.rounds={rounds} is fewer than the {checkpoint_round} rounds {root} has'
        ' trained: its model and privacy statement cover those rounds. Set'
        f' --config.federated.rounds={checkpoint_round} (or more) or use a new --workdir.')
  for unit in ('record', 'client'):
    was, now = (getattr(x, f'{unit}_noise_multiplier') for x in (saved, current))
    if was != now:
      why = (f'config.federated.rounds={rounds}: the noise of {root} was calibrated for'
             f' config.privacy.target_epsilon={target_epsilon} over {saved.rounds} rounds'
             if saved.rounds != rounds and target_epsilon is not None else 'the config')
      raise WorkdirError(
          f'{why}, and this run would use a {unit}-level noise multiplier of {_number(now)} where'
          f' its checkpoints used {_number(was)}; the privacy statement must describe the noise actually'
          f' added. Resume with --config.federated.rounds={saved.rounds} or use a new --workdir.')


def _number(value: Optional[float]) -> str:
  return 'none' if value is None else f'{value:.4g}'


def write_identity(root: str, identity: Identity) -> None:
  io.write_json(os.path.join(root, IDENTITY_FILE), identity.to_dict())


def noise_seed(root: str, configured: Optional[int], draw) -> int:
  """The run's noise seed: the configured one, or a secret kept in `<root>/secret/`.

  Args:
    root: The workdir.
    configured: `config.privacy.noise_seed` (None: secret).
    draw: Returns a fresh secret seed (e.g. from the OS).
  """
  if configured is not None:
    return int(configured)
  path = os.path.join(root, SECRET_DIR, NOISE_SEED_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      return int(f.read().strip())
  seed = int(draw())
  os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
  with io.atomic_path(path) as tmp:
    os.chmod(tmp, 0o600)
    with open(tmp, 'w') as f:
      f.write(f'{seed}\n')
  return seed


def _map_noise_keys(state, fn):
  def visit(path: Sequence, leaf):
    return fn(leaf) if path and path[-1] == _NOISE_KEY_FIELD else leaf
  return tree.map_structure_with_path(visit, state)


def redact(state):
  """`state` with every DP noise key's seed zeroed (its stream kept)."""
  return _map_noise_keys(state, lambda key: np.asarray([0, np.asarray(key)[1]], np.int64))


def restore(state, seed: int):
  """A redacted `state` with the noise seed put back."""
  return _map_noise_keys(state, lambda key: np.asarray([seed, np.asarray(key)[1]], np.int64))

"""Atomic file output: a reader never sees a half-written file."""

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: str, *, directory: bool = False, replace: bool = False) -> Iterator[str]:
  """Yields a temporary path beside `path`, renamed onto it on success.

  On an exception the temporary file (or directory) is removed and `path` is
  left as it was.

  Args:
    path: The final file or directory path.
    directory: Whether the output is a directory (replaced as a whole).
    replace: For a directory: whether a non-empty one at `path` may be
      replaced (and so everything in it deleted). Only for directories we
      made, or the user named for overwriting.

  Yields:
    The temporary path to write to.

  Raises:
    FileExistsError: `path` is a non-empty directory and `replace` is False.
  """
  if directory and not replace and os.path.isdir(path) and os.listdir(path):
    raise FileExistsError(f'{path} exists and is not empty; refusing to replace what it holds.'
                          ' Name a new directory (or pass --overwrite where offered).')
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  prefix = f'.{os.path.basename(path)}.tmp-'
  if directory:
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix)
    os.rmdir(tmp)  # The writer creates it (tf.saved_model.save insists).
  else:
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=prefix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # As open() would create it; mkstemp makes it private.
  try:
    yield tmp
    if directory and os.path.isdir(path):
      old = tempfile.mkdtemp(dir=parent, prefix=prefix)
      os.replace(path, os.path.join(old, 'old'))
      os.replace(tmp, path)
      shutil.rmtree(old)
    else:
      os.replace(tmp, path)
  except BaseException:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp)
    elif os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, 'w') as f:
      f.write(text)


def write_json(path: str, value: Any) -> None:
  # allow_nan=False: NaN and Infinity are not JSON; an undefined value is null.
  write_text(path, json.dumps(value, indent=2, sort_keys=False, allow_nan=False) + '\n')

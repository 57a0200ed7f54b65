"""The scripts' entry point: bad input is one message and a non-zero exit, never a traceback.

`run(main)` is `absl.app.run(main)` with two differences:
  * flag errors, including an unknown `--config.x.y` key (which
    ml_collections raises as a garbled AttributeError), are one line naming
    the flag and the nearest known key;
  * an `errors.Refusal` raised by `main` (bad data, config, workdir, or a
    diverged run) prints `error: <message>` and exits with status 2;
  * SIGTERM or SIGHUP ends it within seconds, with status 128 + the signal
    (`runtime.stops_on_signals`).
Anything else is our bug and keeps its traceback.
"""

import re
import sys
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags

from tffaml import errors
from tffaml import runtime

EXIT_REFUSED = 2


class CheckpointKeyFlags:
  """--checkpoint_key_file / --checkpoint_key_env, for the scripts that train."""

  def __init__(self):
    self._file = flags.DEFINE_string(
        'checkpoint_key_file', None, 'File holding a base64 AES-256 key (scripts/keygen.py'
        ' --encryption_key): checkpoints are sealed with it; a run resumes only with the key it started with.')
    self._env = flags.DEFINE_string('checkpoint_key_env', None,
                                    'Environment variable holding that key, instead of a file.')

  def key(self) -> Optional[bytes]:
    """The key given, or None (plaintext checkpoints)."""
    if self._file.value is None and self._env.value is None:
      return None
    if self._file.value is not None and self._env.value is not None:
      raise errors.InputError('give one of --checkpoint_key_file and --checkpoint_key_env, not both.')
    from tffaml.security import encryption  # pylint: disable=g-import-not-at-top
    return encryption.load_key(key_file=self._file.value, key_env=self._env.value)


def _unknown_key_message(error: Exception, argv: Sequence[str]) -> str:
  while error.args and isinstance(error.args[0], BaseException):  # AttributeError(KeyError(text)).
    error = error.args[0]
  text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
  names = re.findall(r"'([^']+)'", text)
  hint = re.search(r'Did you mean "([^"]+)"', text)
  bad = names[0] if names else '?'
  flag = next((a.split('=')[0] for a in argv[1:] if re.search(rf'\.{re.escape(bad)}(=|$)', a)), f'--{bad}')
  suggestion = f'; did you mean {hint.group(1)!r}?' if hint else ''
  return f'{flag}: unknown config key {bad!r}{suggestion} (see the config file for every key).'


def _without_traceback(text: str) -> str:
  """ml_collections puts a config file's traceback inside its flag error: keep its last line."""
  if 'Traceback (most recent call last)' not in text:
    return text
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return f'{lines[0]} {lines[-1]}'


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing with one-line errors (for `app.run`'s `flags_parser`)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {_without_traceback(str(e))}\nPass --help for the flags.')
  except (AttributeError, KeyError) as e:  # ml_collections: an unknown --config.x.y key.
    sys.exit(f'error: {_unknown_key_message(e, argv)}')


def _refusing(call: Callable[[], None]) -> None:
  """`call()`; a refusal is `error: <message>` and exit status 2."""
  try:
    call()
  except (errors.Refusal, FileNotFoundError, FileExistsError, IsADirectoryError,
          NotADirectoryError, PermissionError) as e:  # Our messages, or the OS's on a path given.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_REFUSED)


def run(main: Callable[[list[str]], None], *, import_tensorflow: bool = False,
        check: Optional[Callable[[], None]] = None) -> None:
  """Runs `main` as `app.run` does, reporting refusals as one message.

  Args:
    main: The script's main.
    check: Once the flags parse, before TensorFlow is imported: the script's
      refusals that need no TensorFlow (its flags, the config's ranges,
      files it is given), answered in a second rather than after the 5-8
      CPU-seconds TensorFlow and TFF take to load. Raises as `main` does.
    import_tensorflow: Import TensorFlow once the flags check out, before
      `main`, for scripts that import it lazily (so a mistyped flag is
      answered at once). Imported inside `main` instead, TensorFlow 2.14's
      Keras fails to build a CategoryEncoding layer (its range check runs
      as eager Python on a symbolic tensor), so the logistic model broke.
  """

  def parser(argv):
    rest = parse_flags(argv)
    if check is not None:
      _refusing(check)
    if import_tensorflow:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    return rest

  def guarded(argv):
    # SIGTERM ends every script within seconds, in any state (waiting on a
    # SuperLink that is gone, mid-round in the TFF worker): `runtime.stops_on_signals`.
    with runtime.stops_on_signals():
      _refusing(lambda: main(argv))

  try:
    app.run(guarded, flags_parser=parser)
  finally:  # Scripts that import TFF without running it (audit, privacy) have a manager too.
    runtime.disarm_tff_service_managers()

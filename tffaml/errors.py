"""What the scripts report as one message, without a traceback.

`Refusal` is raised for what the user can fix: bad input data, a bad config
value, a workdir that does not fit the run, a run that diverged. Its message
says where (file, line and column, or `config.x.y`) and what to do.
Everything else is our bug and keeps its traceback.
"""

import enum
from typing import TypeVar

E = TypeVar('E', bound=enum.Enum)


class Refusal(Exception):
  """Base of the errors reported to users as one message."""


class InputError(Refusal, ValueError):
  """Input (a file, a flag, a config value) that cannot be used."""


class ConfigError(InputError):
  """A config value that cannot be used; the message names it as `config.x.y`."""


class RunFailed(Refusal, RuntimeError):
  """A run that could not produce a usable model (e.g. a non-finite loss)."""


def parse_enum(enum_cls: type[E], value: str, key: str) -> E:
  """`enum_cls(value)`, or a ConfigError naming `config.<key>` and the choices."""
  try:
    return enum_cls(value)
  except ValueError:
    raise ConfigError(f'config.{key}={value!r} is not one of {[m.value for m in enum_cls]}.') from None

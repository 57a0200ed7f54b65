"""What the scripts report as one message, without a traceback.

`Refusal` is raised for what the user can fix: bad input data, a bad config
value, a workdir that does not fit the run, a run that diverged. Its message
says where (file, line and column, or `config.x.y`) and what to do.
Everything else is our bug and keeps its traceback.
"""

import contextlib
import copy
import enum
from typing import Iterator, Mapping, Sequence, TypeVar

E = TypeVar('E', bound=enum.Enum)
V = TypeVar('V')


class Refusal(Exception):
  """Base of the errors reported to users as one message."""


class InputError(Refusal, ValueError):
  """Input (a file, a flag, a config value) that cannot be used.

  The library names only its own arguments: one it blames is written
  `{name}` in the message and listed in `blames`, and reads as the bare
  name until the config layer, which alone knows where the value came from,
  renames it (`named_as`) to `config.x.y`.
  """

  def __init__(self, message: str = '', *, blames: Sequence[str] = ()):
    self.template, self.blames = message, tuple(blames)
    super().__init__(self._message({}))

  def _message(self, names: Mapping[str, str]) -> str:
    message = self.template
    for argument in self.blames:
      message = message.replace('{' + argument + '}', names.get(argument, argument))
    return message

  def renamed(self, names: Mapping[str, str]) -> 'InputError':
    """This error with its blamed arguments called `names[argument]`."""
    error = copy.copy(self)
    error.args = (self._message(names),)
    return error


class ConfigError(InputError):
  """A config value that cannot be used; the message names it as `config.x.y`."""


class RunFailed(Refusal, RuntimeError):
  """A run that could not produce a usable model (e.g. a non-finite loss)."""


@contextlib.contextmanager
def named_as(names: Mapping[str, str]) -> Iterator[None]:
  """Re-raises InputErrors from the block with their blamed arguments renamed."""
  try:
    yield
  except InputError as error:
    if not set(error.blames) & set(names):
      raise
    raise error.renamed(names) from None


def parse_enum(enum_cls: type[E], value: str, key: str) -> E:
  """`enum_cls(value)`, or a ConfigError naming `config.<key>` and the choices."""
  try:
    return enum_cls(value)
  except ValueError:
    raise ConfigError(f'config.{key}={value!r} is not one of {[m.value for m in enum_cls]}.') from None


def registered(registry: Mapping[E, V], member: E, where: str) -> V:
  """`registry[member]`; a member without an entry is our bug, a ValueError naming the registry `where`.

  Every enum-keyed registry (the models, aggregators and data sources) is
  read through this, so a dispatch on an enum always ends in this raise.
  """
  try:
    return registry[member]
  except KeyError:
    raise ValueError(f'{member!r} has no entry in {where}: add one.') from None

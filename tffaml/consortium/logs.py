"""The federation's log lines, each prefixed with its UTC time (ISO 8601, to the second).

The coordinator's and every node's logs are read side by side, across
machines and after an outage: a shared clock (UTC) is what lines them up.
"""

import datetime
from typing import Optional


def stamped(text: str, now: Optional[datetime.datetime] = None) -> str:
  """`text` with each of its lines prefixed `2026-12-06T21:15:42Z ` (`now`, default the current UTC time)."""
  when = (now or datetime.datetime.now(datetime.timezone.utc)).strftime('%Y-%m-%dT%H:%M:%SZ')
  return '\n'.join(f'{when} {line}' if line else line for line in text.split('\n'))


def log(text: str) -> None:
  """Prints `text` stamped, at once (a party's log is a file, read while it runs)."""
  print(stamped(text), flush=True)

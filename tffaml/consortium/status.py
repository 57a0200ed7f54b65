"""What a person reads while a federation runs: the coordinator's status, each bank's answers log.

    <coordinator workdir>/status.json   rewritten atomically after each round
                                        (`write_status`): round k/n, the nodes
                                        joined, asked, answered and dropped in
                                        it, ε spent so far per unit, the ETA
    <node workdir>/answers.jsonl        one JSON line per request the node
                                        answered or refused (`AnswerLog`):
                                        time, kind, run, round, noised or
                                        not, ε its rows spent by its own count

The answers log is only ever appended to (never rewritten), so it outlives
a node's restart and is the bank's own record against the coordinator's.
"""

import datetime
import json
import os
import time
from typing import Any, Mapping, Optional, Sequence

from tffaml import io

STATUS_FILE = 'status.json'
ANSWERS_FILE = 'answers.jsonl'


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def write_status(root: str, *, round_num: int, rounds: int, registered: Sequence[str], asked: Sequence[str],
                 answered: Sequence[str], epsilon: Mapping[str, float], delta: Optional[float],
                 round_seconds: float, eta_seconds: float) -> dict:
  """Writes `<root>/status.json` atomically (a reader never sees half of it); returns what it wrote."""
  status = {
      'updated': utc_now(),
      'state': 'trained' if round_num >= rounds else 'training',
      'round': round_num, 'rounds': rounds,
      'nodes': {'joined': list(registered), 'asked': list(asked), 'answered': list(answered),
                'dropped': [n for n in asked if n not in answered]},
      'epsilon': dict(epsilon), 'delta': delta,
      'round_seconds': round(round_seconds, 3), 'eta_seconds': round(eta_seconds, 1),
      'eta': time.strftime('%H:%M:%S', time.gmtime(eta_seconds)),
  }
  io.write_json(os.path.join(root, STATUS_FILE), status)
  return status


def status_line(status: Mapping[str, Any]) -> str:
  """The status in one log line."""
  nodes = status['nodes']
  dropped = ', '.join(nodes['dropped']) or 'none'
  spent = ' '.join(f'ε({unit})={value:.4g}' for unit, value in status['epsilon'].items())
  return (f'status: round {status["round"]}/{status["rounds"]}: {len(nodes["joined"])} nodes joined,'
          f' {len(nodes["answered"])} of {len(nodes["asked"])} answered, dropped: {dropped}'
          + (f' | {spent}' if spent else '') + f' | ETA {status["eta"]}')


class AnswerLog:
  """A node's append-only record of what it answered (`<workdir>/answers.jsonl`)."""

  def __init__(self, path: str):
    self.path = path
    self._trained: dict[str, set[int]] = {}  # Per coordinator run: the rounds answered with an update.
    if os.path.exists(path):
      with open(path) as f:
        for line in f:
          self._count(line)

  def _count(self, line: str) -> None:
    try:
      entry = json.loads(line)
    except ValueError:  # A line a killed node left half-written: skipped, never rewritten.
      return
    if entry.get('kind') == 'train' and 'refused' not in entry:
      self._trained.setdefault(str(entry.get('run')), set()).add(entry.get('round'))

  def rounds_trained(self, run: str, round_num: Optional[int] = None) -> int:
    """The rounds of `run` answered with an update (with `round_num`, counting it too)."""
    rounds = self._trained.get(run, set())
    return len(rounds | ({round_num} if round_num is not None else set()))

  def append(self, entry: Mapping[str, Any]) -> None:
    """Adds one line, flushed to disk before the answer leaves (an answer is never sent unlogged)."""
    line = json.dumps({'time': utc_now(), **entry}, sort_keys=False, allow_nan=False)
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    with open(self.path, 'a+b') as f:
      if f.tell() and not self._ends_with_newline(f):  # After a line a killed node cut short.
        f.write(b'\n')
      f.write(line.encode() + b'\n')
      f.flush()
      os.fsync(f.fileno())
    self._count(line)

  @staticmethod
  def _ends_with_newline(f) -> bool:
    f.seek(-1, os.SEEK_END)
    last = f.read(1)
    f.seek(0, os.SEEK_END)
    return last == b'\n'

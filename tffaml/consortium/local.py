"""A whole federation on one machine, as separate processes (`make federation`).

Writes each institution's folder (the bring-your-own-data layout), the
credentials, starts a SuperLink and one node process per institution on
localhost, and stops every process it started, however the run ends.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from tffaml import io
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BIN = os.path.dirname(sys.executable)
STOP_SECONDS = 15.0  # After SIGTERM, before SIGKILL.


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def write_institutions(data: federated_data.FederatedData, out_dir: str) -> tuple[str, str]:
  """(data directory, schema file): <out_dir>/data/<institution>/{train,test}.csv and schema.json."""
  data_dir = os.path.join(out_dir, 'data')
  for institution in data.institutions:
    for split in ('train', 'test'):
      path = os.path.join(data_dir, institution.name, f'{split}.csv')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with io.atomic_path(path) as tmp:
        _as_written(getattr(institution, split), data.schema).to_csv(tmp, index=False)
  schema_file = os.path.join(out_dir, 'schema.json')
  io.write_json(schema_file, data.schema.to_dict())
  return data_dir, schema_file


def _as_written(frame: pd.DataFrame, schema: schema_lib.Schema) -> pd.DataFrame:
  """A validated frame with the schema's column names and label values, as an institution's file holds them."""
  negative = '0' if schema.positive != '0' else '1'
  frame = frame.rename(columns={schema_lib.LABEL_COLUMN: schema.label, schema_lib.UNIT_COLUMN: schema.unit})
  frame[schema.label] = np.where(frame[schema.label] == 1, schema.positive, negative)
  return frame


class Processes:
  """Child processes in their own sessions, every one stopped on leaving the `with` block."""

  def __init__(self, log_dir: str):
    self._log_dir, self._children, self._logs = log_dir, [], []
    self.pids: dict[str, int] = {}  # By the name given to `start`.
    os.makedirs(log_dir, exist_ok=True)

  def __enter__(self) -> 'Processes':
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  def start(self, name: str, argv: Sequence[str]) -> str:
    """Starts `argv` (its program from this Python's bin directory); returns its log file."""
    log = os.path.join(self._log_dir, f'{name}.log')
    with open(log, 'w') as f:
      self._children.append(subprocess.Popen(
          [os.path.join(_BIN, argv[0]), *argv[1:]], stdout=f, stderr=subprocess.STDOUT,
          cwd=_REPO, start_new_session=True))
    self._logs.append(log)
    self.pids[name] = self._children[-1].pid
    return log

  def exited(self) -> Optional[str]:
    """Which child processes have exited (and where their logs are), or None."""
    gone = [f'{log} (exit {child.poll()})' for child, log in zip(self._children, self._logs)
            if child.poll() is not None]
    return f'process(es) exited: {", ".join(gone)}' if gone else None

  def stop(self) -> None:
    """SIGTERM to every child's process group, then SIGKILL to what is left."""
    for child in self._children:
      _signal(child, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for child in self._children:
      try:
        child.wait(timeout=max(deadline - time.monotonic(), 0.1))
      except subprocess.TimeoutExpired:
        pass
    for child in self._children:
      _signal(child, signal.SIGKILL)  # The group: a node's TFF worker too.
      child.wait()
    self._children, self._logs, self.pids = [], [], {}


def _signal(child: subprocess.Popen, signum: int) -> None:
  try:
    os.killpg(child.pid, signum)
  except ProcessLookupError:
    pass


def wait_for_text(path: str, text: str, *, timeout: float) -> Optional[str]:
  """None once `path` contains `text`; else, after `timeout` s, the file's tail (for the error)."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    with open(path, errors='replace') as f:
      content = f.read()
    if text in content:
      return None
    time.sleep(0.25)
  return content[-2000:]


def superlink_argv(files, *, fleet: str, driver: str) -> list[str]:
  """A SuperLink with TLS and node authentication (`files`: `credentials.FederationFiles`).

  Flower's SuperLink through scripts/superlink.py: restarted nodes rejoin and
  the admitted keys follow `files.authorized_nodes` live.
  """
  return ['python', os.path.join(_REPO, 'scripts', 'superlink.py'), '--ssl-ca-certfile', files.tls.ca_certificate,
          '--ssl-certfile', files.tls.certificate, '--ssl-keyfile', files.tls.key,
          '--auth-list-public-keys', files.authorized_nodes,
          '--auth-superlink-private-key', files.superlink_key,
          '--auth-superlink-public-key', files.superlink_key + '.pub',
          '--fleet-api-address', fleet, '--driver-api-address', driver,
          '--database', ':flwr-in-memory-state:']


def node_argv(files, *, config_args: Sequence[str], name: str, rows: Sequence[str], workdir: str,
              fleet: str) -> list[str]:
  """`scripts/node.py` for institution `name`; `rows`: --data_dir, or --transactions and --bank."""
  return ['python', os.path.join(_REPO, 'scripts', 'node.py'), *config_args, *rows,
          f'--workdir={workdir}', f'--superlink={fleet}', f'--ca={files.tls.ca_certificate}',
          f'--key={os.path.join(files.nodes, name)}', f'--coordinator_key={files.coordinator_public_key}']

"""One TFF worker of a multi-machine simulation, serving the institutions whose files it holds.

    prepare(data_dir, serve_dir)   the institutions' rows as the worker reads them
    serve(serve_dir, port=...)     TFF's worker_binary, run in `serve_dir`, until stopped

`data_dir` is either the bring-your-own-data layout
(`<institution>/{train,test}.csv`, with the schema file) or a directory of
per-institution shard files with their `manifest.json`, as the streaming
path writes them (`tffaml.data.shards`). Either way `serve_dir` ends up
holding one `<institution>.{train,test}.csv` per institution (linked, for
shard files) and `worker.json`, which describes them: the schema, and per
institution its files, row counts and DP units. Nothing else of the rows
leaves the worker: the coordinator reads `worker.json` through TFF (a
graph that reads the file), and its graphs name the institutions' files
relative to `serve_dir`, the worker's working directory, so the worker reads
them itself.
"""

import os
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

import pandas as pd
import portpicker
import tensorflow_federated as tff

from tffaml import errors
from tffaml import io
from tffaml import runtime
from tffaml.security import tls
from tffaml.data import csv_dir
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.data import shards

INFO = 'worker.json'
LOG = 'worker_binary.log'
WORKER_BINARY = os.path.join(os.path.dirname(tff.__file__), 'data', 'worker_binary')


def prepare(data_dir: str, serve_dir: str, *, schema_file: str = '',
            log: Callable[[str], None] = print) -> dict:
  """Puts `data_dir`'s institutions in `serve_dir` (new or empty) with `worker.json`; returns its content.

  Raises:
    schema_lib.DataError: the files do not validate (naming file, line and column).
  """
  if os.path.isdir(serve_dir) and os.listdir(serve_dir):
    raise FileExistsError(f'{serve_dir} is not empty; the worker serves from a new or empty directory.')
  os.makedirs(serve_dir, exist_ok=True)
  if os.path.isfile(os.path.join(data_dir, shards.MANIFEST)):
    data = _linked_shards(data_dir, serve_dir)
  else:
    schema_file = schema_file or os.path.join(data_dir, 'schema.json')
    data = csv_dir.load(data_dir, schema_lib.Schema.from_json(schema_file))
    data = shards.store_federation(data, serve_dir, key={'csv_dir': os.path.abspath(data_dir)})
  info = describe(data)
  io.write_json(os.path.join(serve_dir, INFO), info)
  log(f'serving {len(info["institutions"])} institutions from {data_dir}: '
      + ', '.join(f'{i["name"]} ({i["counts"]["train_rows"]} train rows)' for i in info['institutions']))
  return info


def _linked_shards(data_dir: str, serve_dir: str) -> federated_data.FederatedData:
  """The shard files of `data_dir`'s manifest, linked into `serve_dir` (not copied)."""
  stored = shards.read_manifest(data_dir, key=None)  # Whatever made them.
  if stored is None:
    raise schema_lib.DataError(f'{os.path.join(data_dir, shards.MANIFEST)}: names files that are missing;'
                               ' rewrite the shards (rerun the streaming data step).')
  linked = []
  for institution in stored:
    paths = {}
    for split in ('train', 'test'):
      source = os.path.abspath(getattr(institution, f'{split}_path'))
      paths[split] = os.path.join(serve_dir, os.path.basename(source))
      os.symlink(source, paths[split])
    linked.append(shards.StoredInstitution(institution.name, institution.schema, paths['train'],
                                           paths['test'], institution.counts))
  return federated_data.FederatedData(schema=stored[0].schema, institutions=tuple(linked))


def describe(data: federated_data.FederatedData) -> dict:
  """`worker.json`: the schema and, per institution, its files (relative), counts and DP units."""
  return {
      'schema': data.schema.to_dict(),
      'institutions': [
          {'name': i.name, 'train': os.path.basename(i.train_path), 'test': os.path.basename(i.test_path),
           'counts': i.counts, 'units': _units(i, data.schema)}
          for i in data.institutions],
  }


def _units(institution: shards.StoredInstitution, schema: schema_lib.Schema) -> int:
  """The institution's DP units (`dp_sgd.unit_codes`): its rows, or the distinct values of its unit column."""
  if not schema.unit:
    return institution.counts['train_rows']
  # That column alone: the whole frame held this process at 830 MB for a 10M-row worker.
  column = pd.read_csv(institution.train_path, usecols=[schema_lib.UNIT_COLUMN], dtype=str, keep_default_na=False)
  return int(column[schema_lib.UNIT_COLUMN].nunique())


def start_binary(serve_dir: str, port: int) -> subprocess.Popen:
  """TFF's worker_binary serving `port` from `serve_dir` (its output in `serve_dir`/worker_binary.log)."""
  with open(os.path.join(serve_dir, LOG), 'ab') as log_file:
    return subprocess.Popen([WORKER_BINARY, f'--port={port}'], cwd=serve_dir, stdin=subprocess.DEVNULL,
                            stdout=log_file, stderr=subprocess.STDOUT)


def start_listening(serve_dir: str, *, port: Optional[int], timeout: float = 60.0
                    ) -> tuple[subprocess.Popen, int]:
  """The worker_binary for `serve_dir` and its port, once it accepts connections.

  `port` None: a free port of our choosing, chosen again if another process
  takes it first (the worker_binary then exits at once, with status 0).

  Raises:
    errors.InputError: `port` is in use.
    RuntimeError: it exited, or did not listen within `timeout` s.
  """
  if port:
    runtime.check_port_free(port)
  for _ in range(1 if port else _PORT_TRIES):
    chosen = port or portpicker.pick_unused_port()
    if not port and runtime.port_taken(chosen):
      continue
    binary = start_binary(serve_dir, chosen)
    deadline = time.monotonic() + timeout
    # Its own socket: a probe connecting to the port would also count another process's.
    while binary.poll() is None and not runtime.port_taken(chosen, pid=binary.pid):
      if time.monotonic() > deadline:
        binary.kill()
        binary.wait()
        raise RuntimeError(f'worker_binary did not listen on port {chosen} within {timeout:.0f} s;'
                           f' see {os.path.join(serve_dir, LOG)}.')
      time.sleep(0.1)
    if binary.poll() is None:
      return binary, chosen
    if port:
      raise errors.InputError(f'--port={port}: the worker_binary cannot listen there (in use by another'
                              ' process?); pick a free port.')
  raise RuntimeError(f'worker_binary found no free port in {_PORT_TRIES} tries;'
                     f' see {os.path.join(serve_dir, LOG)}.')


_PORT_TRIES = 5


def serve(serve_dir: str, *, port: int, host: str = '127.0.0.1', certificates: Optional[tls.ClusterTls],
          log: Callable[[str], None] = print, until: Callable[[], bool] = lambda: False) -> None:
  """Runs the worker for `serve_dir` until SIGTERM, SIGINT or `until()`; stops it however we end.

  With `certificates`, clients reach it on `host`:`port` through mutual TLS
  and the worker_binary itself listens on a free port (still on every
  interface: firewall it); without, the worker_binary listens on `port`.
  Either way it prints READY only once the worker_binary accepts connections.
  """
  with runtime.owned_workers():
    binary, worker_port = start_listening(serve_dir, port=None if certificates else port)
    proxy = None
    try:
      if certificates:
        proxy = tls.start_proxy(listen=f'{host}:{port}', worker_port=worker_port, files=certificates)
        log(f'{READY} on {host}:{port} (mutual TLS); its worker_binary listens in the clear on port'
            f' {worker_port} of every interface: firewall it from other machines. Serving {serve_dir}')
      else:
        log(f'{READY} on port {port} of every interface, IN THE CLEAR and without authentication;'
            f' serving {serve_dir}')
      while binary.poll() is None and not until():
        time.sleep(0.2)
      if binary.poll() is not None:
        raise RuntimeError(f'worker_binary exited with status {binary.returncode};'
                           f' see {os.path.join(serve_dir, LOG)}.')
    finally:
      if proxy is not None:
        proxy.stop(grace=None)


READY = 'worker ready'  # What `serve` prints once clients can connect.
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      'scripts', 'worker.py')


def spawn(data_dir: str, *, port: int, log_path: str, flags: Sequence[str] = ('--insecure',),
          timeout: float = 120.0, cpus: Optional[set[int]] = None) -> subprocess.Popen:
  """scripts/worker.py for `data_dir` in a new process on this machine, once it serves (for tests, benchmarks).

  `cpus`: the cores it (and its worker_binary) may run on; None: any.

  Raises:
    RuntimeError: it exited or did not serve within `timeout` s (its output in the message).
  """
  pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
  with open(log_path, 'w') as out:
    process = subprocess.Popen([sys.executable, SCRIPT, f'--port={port}', f'--data_dir={data_dir}', *flags],
                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=pin)
  deadline = time.monotonic() + timeout
  while True:
    with open(log_path) as f:
      output = f.read()
    if READY in output:
      return process
    if process.poll() is not None or time.monotonic() > deadline:
      process.kill()
      process.wait()
      raise RuntimeError(f'the worker for {data_dir} did not start:\n{output[-2000:]}')
    time.sleep(0.2)

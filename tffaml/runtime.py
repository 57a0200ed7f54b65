"""The local TFF runtime, with a worker process that never outlives us.

TFF 0.87 executes computations in a `worker_binary` child process that it
only stops from a `__del__` that does not run at interpreter exit. The orphan
keeps our stdout open, so `python scripts/train.py | tail` never returns.

`local_runtime()` installs TFF's local C++ execution context, on a worker
that fails the run in bounded time when it dies or does not answer
(`local_worker`), and guarantees the worker is stopped:
  * on leaving the `with` block, on exceptions, and on SIGTERM/SIGHUP (turned
    into `SystemExit` so `finally` blocks and checkpoints unwind normally);
  * on SIGKILL of this process, by a small watchdog process that waits for our
    end (EOF on a pipe only we hold) and then stops the workers we started,
    found as our descendants while we live and, for one started just before
    the kill, by the owner mark in its environment.
"""

import contextlib
import gc
import os
import signal
import subprocess
import sys
from typing import Iterator

import psutil

_WORKER_NAME = 'worker_binary'
OWNER_ENV = 'TFFAML_RUNTIME_OWNER'  # Set for the workers we start: whose they are.
_WATCHDOG_POLL_SECONDS = 0.5
_STOP_TIMEOUT_SECONDS = 5.0

# Runs in its own process, with no handle on our stdout/stderr. It records the
# workers among our children while we live, and stops them once we are gone.
_WATCHDOG_SOURCE = f"""
import select, sys, psutil
workers = {{{{}}}}
try:
  parent = psutil.Process({{parent_pid}})
except psutil.Error:  # We died before this process got going: only the scan below can help.
  parent = None
while parent is not None:
  ready, _, _ = select.select([sys.stdin], [], [], {_WATCHDOG_POLL_SECONDS})
  if ready and not sys.stdin.buffer.read1(1):
    break
  try:
    children = parent.children(recursive=True)
  except psutil.Error:  # We are gone.
    break
  for child in children:
    try:
      if child.name() == {_WORKER_NAME!r}:
        workers[child.pid] = child
    except psutil.Error:  # A child that ended since it was listed: not a reason to stop our workers.
      pass
# A worker started within the last poll is not among them yet: every worker
# inherits our OWNER_ENV, so find the rest by it (reparented, they are not our
# descendants any more).
for proc in psutil.process_iter(['name']):
  try:
    if proc.info['name'] == {_WORKER_NAME!r} and proc.environ().get({OWNER_ENV!r}) == '{{parent_pid}}':
      workers[proc.pid] = proc
  except psutil.Error:
    pass
alive = [w for w in workers.values() if w.is_running()]
for w in alive:
  w.terminate()
_, alive = psutil.wait_procs(alive, timeout={_STOP_TIMEOUT_SECONDS})
for w in alive:
  w.kill()
"""


def worker_processes(parent_pid: int | None = None) -> list[psutil.Process]:
  """The TFF worker processes started (transitively) by `parent_pid`."""
  parent = psutil.Process(parent_pid or os.getpid())
  return [
      child
      for child in parent.children(recursive=True)
      if child.name() == _WORKER_NAME
  ]


def stop_workers() -> None:
  """Stops every TFF worker process this process started; waits for them."""
  workers = worker_processes()
  for worker in workers:
    worker.send_signal(signal.SIGINT)  # TFF's own way of stopping it.
  _, alive = psutil.wait_procs(workers, timeout=_STOP_TIMEOUT_SECONDS)
  for worker in alive:
    worker.kill()
  psutil.wait_procs(alive, timeout=_STOP_TIMEOUT_SECONDS)


def disarm_tff_service_managers() -> None:
  """Stops TFF's worker managers from acting at interpreter exit: we stopped their workers.

  Their `__del__` would otherwise run during interpreter teardown, when the
  `subprocess` module is already gone, and print an ignored AttributeError
  after every run (or refusal) of ours. Importing TFF makes one, so a script
  that never starts a worker needs this too (`cli.run` calls it at exit).
  """
  if 'tensorflow_federated' not in sys.modules:
    return
  for obj in gc.get_objects():
    cls = type(obj)
    if cls.__name__ == 'ServiceManager' and cls.__module__.endswith('executor_factory'):
      cls.__del__ = lambda self: None


def _start_watchdog() -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, '-c', _WATCHDOG_SOURCE.format(parent_pid=os.getpid())],
      stdin=subprocess.PIPE,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
      start_new_session=True,  # A Ctrl-C aimed at us must not kill it first.
  )


def _raise_system_exit(signum, frame):
  del frame
  raise SystemExit(128 + signum)


@contextlib.contextmanager
def owned_workers() -> Iterator[None]:
  """Stops every TFF worker this process starts in the block, however the block or the process ends.

  On leaving the block (exceptions included), on SIGTERM/SIGHUP (raised as
  `SystemExit`), and, by the watchdog, on SIGKILL of this process.
  """
  os.environ[OWNER_ENV] = str(os.getpid())  # Inherited by every worker_binary we start.
  watchdog = _start_watchdog()
  previous_handlers = {
      sig: signal.signal(sig, _raise_system_exit)
      for sig in (signal.SIGTERM, signal.SIGHUP)
  }
  try:
    yield
  finally:
    stop_workers()
    for sig, handler in previous_handlers.items():
      signal.signal(sig, handler)
    watchdog.stdin.close()
    watchdog.wait()


@contextlib.contextmanager
def local_runtime() -> Iterator[None]:
  """Runs TFF computations in this block on the local C++ runtime.

  Yields:
    Nothing; TFF computations invoked inside the block use the runtime.
  """
  from tffaml import local_worker  # pylint: disable=g-import-not-at-top  (imports TFF)

  with owned_workers():
    # TFF's local C++ runtime, compiling secure-sum intrinsics (secure
    # aggregation) into the plain sums they compute: the C++ runtime has no
    # secure aggregation protocol, so the simulation runs them in the clear.
    # Its worker is ours (`local_worker`): TFF's can wait forever on a dead one.
    worker = local_worker.Worker()
    local_worker.set_context(worker)
    try:
      yield
    finally:
      worker.stop()
      stop_workers()
      disarm_tff_service_managers()

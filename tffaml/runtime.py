"""The local TFF runtime, with a worker process that never outlives us.

TFF 0.87 executes computations in a `worker_binary` child process that it
only stops from a `__del__` that does not run at interpreter exit. The orphan
keeps our stdout open, so `python scripts/train.py | tail` never returns.

`local_runtime()` installs TFF's local C++ execution context, on a worker
that fails the run in bounded time when it dies or does not answer
(`local_worker`), and guarantees the worker is stopped:
  * on leaving the `with` block, on exceptions, and on SIGTERM/SIGHUP (turned
    into `SystemExit` so `finally` blocks and checkpoints unwind normally;
    `stops_on_signals` ends the process within `STOP_SECONDS` even when they
    cannot: a main thread blocked in C, a library's own signal handler);
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
import threading
import time
from typing import Iterator

import psutil

from tffaml import errors

_WORKER_NAME = 'worker_binary'
OWNER_ENV = 'TFFAML_RUNTIME_OWNER'  # Set for the workers we start: whose they are.
_WATCHDOG_POLL_SECONDS = 0.5
_STOP_TIMEOUT_SECONDS = 5.0
# From SIGTERM to a forced exit: the unwinding (finally blocks, the checkpoint
# being written, which is atomic) gets this long, and the whole stop, with a
# loaded machine's delays, stays under the 5 s a supervisor is promised.
STOP_SECONDS = 3.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_stopping = threading.Event()  # Set once a stop signal came: no worker starts any more.
_armed = threading.Event()  # `stops_on_signals` is active in this process.
_signal_received: list[int] = []  # The stop signal, once it came.

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


def port_taken(port: int, *, pid: int | None = None) -> bool:
  """Whether a process of this machine (process `pid`, if given) listens on TCP `port`.

  gRPC servers (TFF's worker_binary among them) set SO_REUSEPORT: a second
  one on a port the first serves binds it too, and clients' calls are then
  split between the two. So a port is checked before a worker starts on it.
  """
  try:
    sockets = psutil.Process(pid).net_connections(kind='tcp') if pid else psutil.net_connections(kind='tcp')
  except psutil.Error:  # `pid` has exited.
    return False
  return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in sockets)


def check_port_free(port: int) -> None:
  """Raises errors.InputError naming `port` (as --port) if a process listens on it (`port_taken`)."""
  if port_taken(port):
    raise errors.InputError(f'--port={port}: another process listens there (a worker still running?);'
                            ' stop it or pick a free port.')


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
  _note_stop(signum)
  raise SystemExit(128 + signum)


def _note_stop(signum: int) -> None:
  if not _signal_received:
    _signal_received.append(signum)
  _stopping.set()


def stopping() -> bool:
  """Whether a stop signal came (`stops_on_signals`): then nothing new should start."""
  return _stopping.is_set()


def _kill(processes: list[psutil.Process]) -> None:
  for process in processes:
    try:
      process.kill()
    except psutil.Error:  # Already gone.
      pass


def _stop_on_signal(read_fd: int) -> None:
  """The stop thread: waits for a stop signal's number on the wakeup pipe, then ends the process in time."""
  while True:
    received = os.read(read_fd, 64)
    if not received:  # The block ended without a stop signal.
      os.close(read_fd)
      return
    signums = [s for s in received if s in _STOP_SIGNALS]  # The pipe gets every handled signal's number.
    if signums:
      break
  _note_stop(signums[0])
  # The computation in progress is lost anyway, and a main thread blocked in a
  # gRPC call into the worker returns once it is gone.
  _kill(worker_processes())
  time.sleep(STOP_SECONDS)
  _kill(psutil.Process().children(recursive=True))  # Still here: nothing we started may outlive us.
  _exit_now()


def _exit_now() -> None:
  """Ends the process with the stop signal's status, without the interpreter's slow teardown.

  Once the main thread has unwound, what is left (atexit handlers, TensorFlow's
  and gRPC's teardown, joining their threads) took seconds on a loaded
  machine, and this thread cannot act then: Python stops daemon threads as
  it finalizes. Only output is kept; the files we write are atomic.
  """
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except  (a closed or broken stream: nothing to keep)
      pass
  os._exit(128 + _signal_received[0])  # pylint: disable=protected-access


@contextlib.contextmanager
def stops_on_signals() -> Iterator[None]:
  """In the block, SIGTERM/SIGHUP end this process within `STOP_SECONDS` (plus a moment), in any state.

  The signal is raised in the main thread as `SystemExit(128 + signum)`, so
  `finally` blocks unwind. Python runs that handler only between the main
  thread's bytecodes, and only if it is still ours: the main thread may be
  blocked in C (a call into the TFF worker, Flower's gRPC) or a library may
  have put its own handler in (Flower's SuperNode, whose handler deregisters
  from a SuperLink that may be gone, retrying for minutes). So the C-level
  handler also writes the signal to a pipe (`signal.set_wakeup_fd`) that a
  daemon thread waits on: it kills our TFF workers at once, and if the
  process is still alive `STOP_SECONDS` later, kills everything it started
  and exits (`os._exit`) with the same status. Call from the main thread;
  nested blocks are the outer one's.
  """
  if _armed.is_set() or threading.current_thread() is not threading.main_thread():
    yield
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)  # As set_wakeup_fd requires: a full pipe must not block the handler.
  previous_handlers = {sig: signal.signal(sig, _raise_system_exit) for sig in _STOP_SIGNALS}
  previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  threading.Thread(target=_stop_on_signal, args=(read_fd,), name='tffaml-stop', daemon=True).start()
  _armed.set()
  try:
    yield
  finally:
    if _stopping.is_set():
      _exit_now()
    signal.set_wakeup_fd(previous_fd)
    for sig, handler in previous_handlers.items():
      signal.signal(sig, handler)
    os.close(write_fd)  # EOF: the thread ends.
    _armed.clear()


@contextlib.contextmanager
def owned_workers() -> Iterator[None]:
  """Stops every TFF worker this process starts in the block, however the block or the process ends.

  On leaving the block (exceptions included), on SIGTERM/SIGHUP (raised as
  `SystemExit`, the process ended in bounded time: `stops_on_signals`), and,
  by the watchdog, on SIGKILL of this process.
  """
  os.environ[OWNER_ENV] = str(os.getpid())  # Inherited by every worker_binary we start.
  with stops_on_signals():  # Outside: a stop ends the process only once the workers are stopped.
    watchdog = _start_watchdog()
    try:
      yield
    finally:
      stop_workers()
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
    worker = local_worker.Worker(stopping=stopping)
    local_worker.set_context(worker)
    try:
      yield
    finally:
      worker.stop()
      stop_workers()
      disarm_tff_service_managers()

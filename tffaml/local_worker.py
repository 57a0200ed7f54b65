"""TFF's local C++ execution context, with a worker that cannot hang a run.

TFF 0.87's own (`tff.backends.test.set_sync_test_cpp_execution_context`)
starts its `worker_binary` on a port `portpicker` found free a moment
before, then waits for it with `while not stub.is_ready: sleep(1)`, never
looking at the process. When a socket takes the port in between (another
job's portpicker probe, a connection's ephemeral port: likelier while other
jobs start and stop workers), the worker exits at once with status 0
("Address already in use"), stays a `<defunct>` child nobody reaps, and the
run waits forever: tests/runtime_test.py reproduces it. (Another job's
worker started on the same port does not stop ours: gRPC binds with
SO_REUSEPORT, and the two share the port.) TFF also retries a failed call
forever, 30 s apart, and stops a worker with an unbounded `wait()`.

Here:
  * the worker binds port 0, so the kernel picks a free port atomically
    (read back from its listening socket): no port to race for;
  * starting waits at most `START_TIMEOUT_SECONDS`, watching the process,
    and tries `START_ATTEMPTS` times;
  * a worker found dead (or not answering) between calls is stopped with a
    bounded wait and started again, as TFF does, and a call that fails
    with a retryable gRPC error is tried `CALL_ATTEMPTS` times;
  * otherwise the run fails with `WorkerFailed`, one line; its checkpoints
    are kept, so the same command resumes it.
A call that a live worker never answers (a deadlock in it) still waits: it
cannot be told from a long computation.
"""

import asyncio
import os
import signal
import subprocess
import time
from typing import Callable, Optional

import grpc
import psutil
from tensorflow_federated.python.core.backends.native import compiler as native_compiler
from tensorflow_federated.python.core.backends.test import compiler as test_compiler
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl
from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context
from tensorflow_federated.python.core.impl.execution_contexts import sync_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import executor_factory
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import executors_errors
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub
from tensorflow_federated.python.core.impl.types import placements

from tffaml import errors

BINARY = os.path.join(os.path.dirname(executor_factory.__file__), '..', '..', '..', '..', 'data', 'worker_binary')
START_TIMEOUT_SECONDS = 120.0  # It answers in ~1 s; far more on a loaded machine loading its 300 MB.
START_ATTEMPTS = 3
CALL_ATTEMPTS = 3  # Each on a worker checked (and restarted if dead) first.
_STOP_TIMEOUT_SECONDS = 5.0
_RESUME = 'run the same command again to resume from the last checkpoint'
# As TFF's: computations' values travel in single messages.
_CHANNEL_OPTIONS = [('grpc.max_message_length', 2_000_000_000), ('grpc.max_receive_message_length', 2_000_000_000),
                    ('grpc.max_send_message_length', 2_000_000_000)]


class WorkerFailed(errors.RunFailed):
  """The local TFF worker died or stopped answering; the run can be resumed."""


def _stop(process: subprocess.Popen) -> None:
  """Stops `process` (SIGINT, TFF's way; then SIGKILL) and reaps it, waiting a bounded time."""
  if process.poll() is None:
    process.send_signal(signal.SIGINT)
    try:
      process.wait(_STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait(_STOP_TIMEOUT_SECONDS)


def _listening_port(process: subprocess.Popen) -> Optional[int]:
  try:
    ports = [c.laddr.port for c in psutil.Process(process.pid).net_connections('tcp')
             if c.status == psutil.CONN_LISTEN]
  except psutil.Error:
    return None
  return ports[0] if ports else None


class Worker:
  """This process's worker_binary and a stub on it, started again when found dead."""

  def __init__(self, stopping: Callable[[], bool] = lambda: False):
    """`stopping`: whether the process is being stopped (by a signal): a dead worker is not started again."""
    # Port 0: the kernel picks a free one as the worker binds it.
    self._command = [BINARY, '--port=0', '--max_concurrent_computation_calls=-1']
    self._stopping = stopping
    self._process: Optional[subprocess.Popen] = None
    self._channel: Optional[grpc.Channel] = None
    self._stub = None

  def stub(self) -> remote_executor_grpc_stub.RemoteExecutorGrpcStub:
    """A stub on a live worker that answers, or WorkerFailed."""
    if self._process is not None and self._process.poll() is None:
      try:  # A channel may be idle or reconnecting: a live worker gets a short while to answer.
        grpc.channel_ready_future(self._channel).result(timeout=_STOP_TIMEOUT_SECONDS)
        return self._stub
      except grpc.FutureTimeoutError:
        pass
    self.stop()
    if self._stopping():  # Killed by the stop: starting another would only delay the exit.
      raise WorkerFailed(f'the TFF worker was stopped with this process. Nothing is lost: {_RESUME}.')
    problems = []
    for _ in range(START_ATTEMPTS):
      problem = self._start()
      if problem is None:
        return self._stub
      problems.append(problem)
    raise WorkerFailed(f'the TFF worker ({self._command[0]}) could not be started: {"; ".join(problems)}.'
                       f' Nothing is lost: {_RESUME}.')

  def _start(self) -> Optional[str]:
    """Starts the worker and waits for it to answer; what went wrong, or None."""
    process = subprocess.Popen(self._command)  # Inherits our stdout/stderr, as TFF's.
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    port = None
    while port is None:
      if process.poll() is not None:
        return f'it exited with status {process.returncode} before listening'
      if time.monotonic() > deadline:
        _stop(process)
        return f'it did not listen within {START_TIMEOUT_SECONDS:g} s'
      port = _listening_port(process)
      time.sleep(0.05 if port is None else 0)
    channel = grpc.insecure_channel(f'localhost:{port}', _CHANNEL_OPTIONS)
    try:
      grpc.channel_ready_future(channel).result(timeout=max(deadline - time.monotonic(), 1.0))
    except grpc.FutureTimeoutError:
      channel.close()
      _stop(process)
      return f'it did not answer on port {port} within {START_TIMEOUT_SECONDS:g} s'
    self._process, self._channel = process, channel
    self._stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(channel)
    return None

  def stop(self) -> None:
    if self._channel is not None:
      self._channel.close()
    if self._process is not None:
      _stop(self._process)
    self._process = self._channel = self._stub = None


class _AsyncContext(async_execution_context.AsyncExecutionContext):
  """TFF's async context, trying a call `CALL_ATTEMPTS` times, not forever."""

  _once = async_execution_context.AsyncExecutionContext.invoke.__wrapped__

  async def invoke(self, comp, arg):
    if asyncio.iscoroutine(arg):
      arg = await arg  # Once: a retry cannot await it again.
    for attempt in range(1, CALL_ATTEMPTS + 1):
      try:
        return await self._once(comp, arg)
      except executors_errors.RetryableError as e:  # The worker died, or its connection did.
        if attempt == CALL_ATTEMPTS:
          code = e.code().name if isinstance(e, grpc.Call) else type(e).__name__
          raise WorkerFailed(f'the TFF worker failed {CALL_ATTEMPTS} times in a row ({code}), restarted'
                             f' each time. Nothing is lost: {_RESUME}.') from None
        await asyncio.sleep(attempt)


class _SyncContext(sync_execution_context.SyncExecutionContext):

  def __init__(self, executor_fn, compiler_fn, **kwargs):
    super().__init__(executor_fn, compiler_fn, **kwargs)
    self._async_context = _AsyncContext(executor_fn=executor_fn, compiler_fn=compiler_fn, **kwargs)


def _compile(comp):
  # The C++ runtime has no secure aggregation protocol: secure sums compile
  # into the plain sums they compute (as TFF's test context does).
  return native_compiler.desugar_and_transform_to_native(test_compiler.replace_secure_intrinsics_with_bodies(comp))


def set_context(worker: Worker) -> None:
  """Makes TFF run computations on `worker` (TFF's local C++ context otherwise)."""

  def stack_fn(cardinalities):
    if cardinalities.get(placements.CLIENTS) is None:
      cardinalities[placements.CLIENTS] = 0
    executor = remote_executor.RemoteExecutor(worker.stub())
    executor.set_cardinalities(cardinalities)
    return executor

  context = _SyncContext(
      python_executor_stacks.ResourceManagingExecutorFactory(executor_stack_fn=stack_fn), _compile,
      transform_args=tensorflow_computation.transform_args,
      transform_result=tensorflow_computation.transform_result)
  context_stack_impl.context_stack.set_default_context(context)

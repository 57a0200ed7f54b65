"""The TFF worker process never outlives the program that started it."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import tensorflow as tf

from tffaml import errors
from tffaml import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
import tensorflow as tf, tensorflow_federated as tff
from tffaml import runtime
with runtime.local_runtime():
  @tff.tensorflow.computation(tf.int32)
  def add_one(x):
    return x + 1
  assert add_one(1) == 2
  print(runtime.worker_processes()[0].pid, flush=True)
  time.sleep(600)
"""

# The port TFF would pick is taken before its worker binds it (by another
# job's worker, probe or connection): its worker exits and TFF waited forever.
_PORT_TAKEN = """
import os, signal, socket, sys
sys.path.insert(0, {root!r})
import portpicker, tensorflow as tf, tensorflow_federated as tff
from tffaml import runtime
taken = socket.socket()
taken.bind(('localhost', 0))
portpicker.pick_unused_port = lambda *a, **k: taken.getsockname()[1]
with runtime.local_runtime():
  @tff.tensorflow.computation(tf.int32)
  def add_one(x):
    return x + 1
  print(add_one(1), flush=True)
  os.kill(runtime.worker_processes()[0].pid, signal.SIGKILL)  # Dead between calls: started again.
  print(add_one(2), flush=True)
"""

# Workers that never answer (or die at once): each run fails, in one line.
# One process tries them in turn (one TensorFlow import, not one per worker).
_NO_WORKER = """
import sys, time
sys.path.insert(0, {root!r})
import tensorflow as tf, tensorflow_federated as tff
from tffaml import errors, local_worker, runtime
local_worker.START_TIMEOUT_SECONDS = 2
for binary in {binaries!r}:
  local_worker.BINARY, started = binary, time.monotonic()
  try:
    with runtime.local_runtime():
      @tff.tensorflow.computation(tf.int32)
      def add_one(x):
        return x + 1
      add_one(1)
    print('ran', flush=True)
  except errors.Refusal as e:
    print(f'{{time.monotonic() - started:.1f}} s error: {{e}}', flush=True)
"""


def _run_bounded(test, code: str, timeout: float) -> subprocess.CompletedProcess:
  child = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True)
  try:
    out, _ = child.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    child.kill()  # Its watchdog stops its worker.
    child.communicate()
    test.fail(f'hung: no result after {timeout:g} s')
  return subprocess.CompletedProcess(child.args, child.returncode, out)


class RuntimeTest(tf.test.TestCase):

  def test_a_taken_port_does_not_hang_and_a_killed_worker_is_replaced(self):
    done = _run_bounded(self, _PORT_TAKEN.format(root=ROOT), timeout=240)
    self.assertEqual((done.returncode, done.stdout.split()), (0, ['2', '3']))

  def test_a_worker_that_never_answers_or_dies_fails_the_run_in_one_line(self):
    tmp = tempfile.mkdtemp()
    silent = f'sleep 300.{os.getpid()}'  # Named by this test's pid: no other process's.
    binaries = []
    for name, body in (('silent', f'exec {silent}'), ('dead', 'exit 0')):
      binaries.append(os.path.join(tmp, name))
      with open(binaries[-1], 'w') as f:
        f.write(f'#!/bin/sh\n{body}\n')
      os.chmod(binaries[-1], 0o755)
    done = _run_bounded(self, _NO_WORKER.format(root=ROOT, binaries=binaries), timeout=180)
    self.assertEqual(done.returncode, 0, done.stdout)
    lines = done.stdout.splitlines()
    self.assertLen(lines, 2, done.stdout)  # One line each: the message holds no newline.
    for line, reason in zip(lines, ('did not listen within 2 s', 'exited with status 0 before listening')):
      self.assertRegex(line, rf'^[\d.]+ s error: the TFF worker .* could not be started: it {reason}(; .*)?\.'
                             r' Nothing is lost: run the same command again to resume from the last checkpoint\.$')
      self.assertLess(float(line.split()[0]), 60)  # The 2 s start timeout, not a hang.
    left = [p.pid for p in psutil.process_iter(['cmdline'])
            if ' '.join(p.info['cmdline'] or ()) in (*binaries, silent)]
    self.assertEqual(left, [], 'a fake worker was left running')

  def test_a_child_ending_as_the_watchdog_looks_leaves_the_workers_running(self):
    # Under load a short-lived child (a subprocess, a test's worker script) often ends between the
    # watchdog's listing and its look at that child; the watchdog then stopped every worker while we lived.
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    fake = os.path.join(tmp, 'worker_binary')  # A worker to the watchdog, by its name.
    shutil.copy('/bin/sleep', fake)
    # The watchdog guards a parent of its own, not this process: on leaving it stops every worker
    # its parent owns, and this test process owns the session's real TFF worker (tests/conftest.py).
    parent = subprocess.Popen(['sh', '-c', f'{fake} 300 & sleep 300 & wait'])
    self.addCleanup(parent.wait)
    self.addCleanup(lambda: [c.kill() for c in psutil.Process(parent.pid).children()] and None)
    children = []
    while len(children) < 2:
      time.sleep(0.1)
      children = psutil.Process(parent.pid).children()
    worker = next(c for c in children if c.name() == 'worker_binary')
    ending = next(c for c in children if c.name() != 'worker_binary')
    ends_when_looked_at = (  # psutil's answer for a child gone since it was listed.
        'import psutil\n_name = psutil.Process.name\n'
        f'psutil.Process.name = lambda p: _name(p) if p.pid != {ending.pid} else exec("raise psutil.NoSuchProcess(p.pid)")\n')
    source = ends_when_looked_at + runtime._WATCHDOG_SOURCE.format(parent_pid=parent.pid)
    watchdog = subprocess.Popen([sys.executable, '-c', source], stdin=subprocess.PIPE)
    time.sleep(5)  # Several of its polls.
    self.assertTrue(worker.is_running(), 'the watchdog stopped a worker while its parent lives')
    watchdog.stdin.close()  # As runtime.owned_workers ends: now it stops them.
    watchdog.wait(timeout=60)
    worker.wait(timeout=30)  # Not our child: psutil waits for it to end, raising if it does not.
    self.assertFalse(worker.is_running())

  def test_worker_is_stopped_when_its_parent_is_killed(self):
    child = subprocess.Popen(
        [sys.executable, '-c', _CHILD.format(root=ROOT)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    worker = psutil.Process(int(child.stdout.readline()))
    self.assertEqual(worker.name(), 'worker_binary')
    child.send_signal(signal.SIGKILL)  # No handler, no atexit: the watchdog's case.
    child.wait()
    deadline = time.monotonic() + 15
    while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE:
      self.assertLess(time.monotonic(), deadline, 'worker_binary outlived its parent')
      time.sleep(0.2)

  def test_worker_is_stopped_when_its_parent_is_killed_as_it_starts(self):
    # Killed the moment its worker exists: before the watchdog's next poll
    # could see the worker among its descendants.
    child = subprocess.Popen([sys.executable, '-c', _CHILD.format(root=ROOT)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(child.pid)
    deadline = time.monotonic() + 120
    workers = []
    while not workers:
      self.assertLess(time.monotonic(), deadline, 'no worker_binary started')
      workers = [p for p in parent.children(recursive=True) if p.name() == 'worker_binary']
      time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    worker = workers[0]
    deadline = time.monotonic() + 15
    while worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE:
      self.assertLess(time.monotonic(), deadline, 'worker_binary outlived its parent')
      time.sleep(0.2)



class PortTest(tf.test.TestCase):

  def test_a_listening_port_is_taken_and_refused_by_name_and_a_closed_one_is_free(self):
    with socket.create_server(('127.0.0.1', 0)) as server:
      port = server.getsockname()[1]
      self.assertTrue(runtime.port_taken(port))
      with self.assertRaisesRegex(errors.InputError, f'--port={port}: another process listens there'):
        runtime.check_port_free(port)
    self.assertFalse(runtime.port_taken(port))
    runtime.check_port_free(port)

if __name__ == '__main__':
  tf.test.main()

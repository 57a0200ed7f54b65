"""The TFF worker process never outlives the program that started it."""

import os
import signal
import subprocess
import sys
import time

import psutil
import tensorflow as tf

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


class RuntimeTest(tf.test.TestCase):

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


if __name__ == '__main__':
  tf.test.main()

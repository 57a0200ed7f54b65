"""Every long-running script stops within 5 s of SIGTERM, in the state where it blocks, leaving no worker behind.

Each script runs as a supervisor runs it: its own process group, SIGTERM to
the script's process alone. Before `runtime.stops_on_signals`, scripts/train.py
took 6.0-9.6 s mid-round (the TFF worker, asked to stop with SIGINT while it
computed, got its 5 s; then the interpreter's teardown), and a node that lost
its SuperLink kept retrying inside Flower's own SIGTERM handler.
"""

import os
import signal
import subprocess
import sys
import time

import psutil
import tensorflow as tf

from tests import helpers
from tffaml.consortium import local
from tffaml.security import credentials

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPTS = os.path.join(_REPO, 'scripts')
_STOP_SECONDS = 5.0  # What issue 35 promises a supervisor.
_READY_SECONDS = 300.0  # Start-up only: TensorFlow's import on two loaded cores.
_EXIT_SIGTERM = 128 + signal.SIGTERM


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
  alive = []
  for process in processes:
    try:
      if process.status() != psutil.STATUS_ZOMBIE:
        alive.append(process)
    except psutil.Error:
      pass
  return alive


def _named(process: psutil.Process, name: str) -> bool:
  try:
    return process.name() == name
  except psutil.Error:  # Gone already.
    return False


class StopOnSigtermTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.started: list[subprocess.Popen] = []
    self.addCleanup(self._kill_started)

  def _kill_started(self):
    for process in self.started:
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

  def _start(self, name: str, argv: list[str]) -> tuple[subprocess.Popen, str]:
    log = os.path.join(self.dir, f'{name}.log')
    with open(log, 'w') as f:
      process = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=_REPO, start_new_session=True)
    self.started.append(process)
    return process, log

  def _assert_stops(self, process: subprocess.Popen, log: str, ready: str, *, settle: float = 0.0) -> float:
    """SIGTERM once `ready` is in `log` (and `settle` s later): exit 143 within 5 s, nothing left running."""
    problem = local.wait_for_text(log, ready, timeout=_READY_SECONDS)
    self.assertIsNone(problem, problem)
    time.sleep(settle)
    self.assertIsNone(process.poll(), open(log).read()[-3000:])
    descendants = psutil.Process(process.pid).children(recursive=True)
    workers = [p for p in descendants if _named(p, 'worker_binary')]
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
      status = process.wait(timeout=60.0)
    except subprocess.TimeoutExpired:
      status = None
    seconds = time.monotonic() - started
    self.assertLessEqual(seconds, _STOP_SECONDS, f'exit {status} after {seconds:.1f} s; {open(log).read()[-3000:]}')
    self.assertEqual(status, _EXIT_SIGTERM, open(log).read()[-3000:])
    self.assertEqual(_alive(workers), [])  # At the exit already, not later by the watchdog.
    _, left = psutil.wait_procs(descendants, timeout=5.0)  # The SIGKILL watchdog itself ends too.
    self.assertEqual(_alive(left), [])
    return seconds

  def test_training_mid_round(self):
    process, log = self._start('train', [
        sys.executable, os.path.join(_SCRIPTS, 'train.py'), '--config=configs/loan_risk.py:smoke',
        f'--workdir={os.path.join(self.dir, "run")}', '--config.federated.rounds=500'])
    # A round takes about 1 s: the signal comes in the middle of one, the main thread in the TFF worker.
    self._assert_stops(process, log, 'round 2/')

  def _federation(self) -> tuple[credentials.FederationFiles, str]:
    data_dir, schema_file = helpers.write_federation(self.dir)
    files = credentials.write_federation(os.path.join(self.dir, 'pki'), hosts=['127.0.0.1'],
                                         institutions=sorted(os.listdir(data_dir)))
    return files, schema_file

  def test_a_node_whose_superlink_is_gone(self):
    files, schema_file = self._federation()
    nowhere = f'127.0.0.1:{local.free_port()}'  # Nothing listens there: Flower retries, backing off.
    argv = local.node_argv(files, config_args=['--config=configs/csv.py', f'--config.data.schema_file={schema_file}'],
                           name='bank_a', rows=[f'--data_dir={os.path.join(self.dir, "data", "bank_a")}'],
                           workdir=os.path.join(self.dir, 'node'), fleet=nowhere)
    process, log = self._start('node', [sys.executable, *argv[1:]])
    # Stopped once it waits for the SuperLink, which it says in its own words (not Flower's "may be offline").
    self._assert_stops(process, log, f'SuperLink unreachable at {nowhere} (')

  def test_a_coordinator_waiting_for_its_nodes(self):
    files, schema_file = self._federation()
    fleet, driver = f'127.0.0.1:{local.free_port()}', f'127.0.0.1:{local.free_port()}'
    link, link_log = self._start('superlink', [sys.executable, *local.superlink_argv(files, fleet=fleet,
                                                                                   driver=driver)[1:]])
    self.assertIsNone(local.wait_for_text(link_log, 'Starting Driver API', timeout=_READY_SECONDS))
    process, log = self._start('coordinator', [
        sys.executable, os.path.join(_SCRIPTS, 'coordinator.py'), '--config=configs/csv.py',
        f'--config.data.schema_file={schema_file}', f'--workdir={os.path.join(self.dir, "run")}',
        f'--driver_api={driver}', f'--ca={files.tls.ca_certificate}', f'--key={files.coordinator_key}',
        f'--nodes={files.nodes}'])
    self._assert_stops(process, log, 'waiting for 3 nodes', settle=1.0)
    link.send_signal(signal.SIGTERM)
    link.wait(timeout=60.0)


if __name__ == '__main__':
  tf.test.main()

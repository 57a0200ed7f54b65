"""A simulation spread over TFF workers (scripts/worker.py) on this machine, against one process."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np
import portpicker
import psutil

from configs import csv as csv_config
from tests import helpers
from tffaml import errors
from tffaml import features
from tffaml import runtime
from tffaml.cluster import runtime as cluster_runtime
from tffaml.cluster import statistics
from tffaml.security import tls
from tffaml.cluster import worker as worker_lib
from tffaml.data import csv_dir
from tffaml.data import schema as schema_lib
from tffaml.data import shards
from tffaml.studies import canary_audit
from tffaml.training import program

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTITUTIONS = ('bank_a', 'bank_b', 'bank_c', 'bank_d')
SPLIT = (('w1', ('bank_a', 'bank_b')), ('w2', ('bank_c', 'bank_d')))


def write_split_federation(root: str) -> tuple[str, str, dict[str, str]]:
  """The federation under `root`/data, and each worker's part of it: (data dir, schema, {worker: dir})."""
  data_dir, schema_file = helpers.write_federation(root, institutions=INSTITUTIONS, rows=80)
  parts = {}
  for worker, names in SPLIT:
    parts[worker] = os.path.join(root, worker)
    for name in names:
      shutil.copytree(os.path.join(data_dir, name), os.path.join(parts[worker], name))
    shutil.copy(schema_file, os.path.join(parts[worker], 'schema.json'))
  return data_dir, schema_file, parts


class WorkerProcess:
  """scripts/worker.py in its own process, on a free port of this machine."""

  def __init__(self, data_dir: str, *, port: int = 0, certificates: str = '', schema_file: str = ''):
    self.port = port or portpicker.pick_unused_port()
    self.log = tempfile.NamedTemporaryFile('w+', suffix='.log', delete=False).name
    security = [f'--certificates={certificates}', '--host=localhost'] if certificates else ['--insecure']
    self.process = worker_lib.spawn(data_dir, port=self.port, log_path=self.log,
                                    flags=[f'--schema_file={schema_file}', *security])

  @property
  def address(self) -> str:
    return f'localhost:{self.port}'

  def output(self) -> str:
    with open(self.log) as f:
      return f.read()

  def binaries(self) -> list[psutil.Process]:
    """Its worker_binary processes, found by the owner mark they inherit."""
    found = []
    for proc in psutil.process_iter(['name']):
      try:
        if (proc.info['name'] == 'worker_binary'
            and proc.environ().get(runtime.OWNER_ENV) == str(self.process.pid)):
          found.append(proc)
      except psutil.Error:
        pass
    return found

  def stop(self, sig: int = signal.SIGTERM) -> None:
    binaries = self.binaries()
    if self.process.poll() is None:
      self.process.send_signal(sig)
    self.process.wait(timeout=60)
    _, alive = psutil.wait_procs(binaries, timeout=20)  # The watchdog's work after a SIGKILL.
    assert not alive, f'worker_binary left behind: {alive}'


def _weights(result: program.RunResult) -> np.ndarray:
  return np.concatenate([w.ravel() for w in result.model.get_weights()])


class TwoWorkersTest(absltest.TestCase):
  """Two workers holding two institutions each, over mutual TLS, started once for these tests.

  Every run here goes over TLS, as a deployment's would (`test_mutual_tls_refuses_clients_without_the_
  cluster_certificate`: what it keeps out).
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.data_dir, cls.schema_file, cls.parts = write_split_federation(cls.root)
    cls.tls = tls.write_cluster_tls(os.path.join(cls.root, 'pki'), hosts=['localhost'])
    cls.workers = [cls._worker(w) for w, _ in SPLIT]

  @classmethod
  def _worker(cls, name: str, port: int = 0) -> WorkerProcess:
    return WorkerProcess(cls.parts[name], port=port, certificates=cls.tls.directory)

  @classmethod
  def tearDownClass(cls):
    for w in cls.workers:
      w.stop()
    super().tearDownClass()

  def _config(self, preset: str):
    config = csv_config.get_config(preset)
    config.data.dir, config.data.schema_file = self.data_dir, self.schema_file
    config.federated.rounds, config.federated.batch_size = 2, 16
    config.features.min_category_count = 1
    return config

  def _single(self, config) -> program.RunResult:
    """The run in this process, rows streamed from files as on the workers."""
    single = config.copy_and_resolve_references()
    single.data.stream = True
    return program.run(single, self.create_tempdir().full_path, log=lambda _: None)

  def _on_workers(self, config) -> None:
    config.runtime.workers = ','.join(w.address for w in self.workers)
    config.runtime.certificates = self.tls.directory
    config.data.dir = ''  # The coordinator holds no rows: the workers' files and its schema file.

  def _both(self, config) -> tuple[program.RunResult, program.RunResult]:
    """The run in this process, and on the workers."""
    one = self._single(config)
    self._on_workers(config)
    lines = []
    spread = _run(config, self.create_tempdir().full_path, log=lines.append)
    self.assertIn(f'worker {self.workers[0].address}: bank_a, bank_b', lines)
    return one, spread

  def test_seeded_client_dp_with_a_worker_idle_in_a_round_gives_the_single_process_model(self):
    # One run for both claims (each run costs ~15 CPU-s on each side): client-level DP with adaptive
    # clipping, its noise drawn in the coordinator; one institution a round, so one worker idles.
    config = self._config('smoke')
    config.privacy.noise_seed = 3
    config.federated.sampling, config.federated.clients_per_round = 'fixed_size', 1
    one, spread = self._both(config)
    np.testing.assert_allclose(_weights(spread), _weights(one), atol=1e-6)
    self.assertAlmostEqual(spread.metrics['federated']['pooled']['auc'], one.metrics['federated']['pooled']['auc'],
                           places=5)
    self.assertEqual(spread.metrics['privacy'], one.metrics['privacy'])
    self.assertEqual(set(spread.metrics['federated']['institutions']), set(INSTITUTIONS))
    for name in INSTITUTIONS:
      self.assertAlmostEqual(spread.metrics['federated']['institutions'][name]['loss'],
                             one.metrics['federated']['institutions'][name]['loss'], places=5)
    rows = open(os.path.join(spread.paths.root, 'results', 'metrics.csv')).read()
    self.assertIn('cluster/bytes_sent_per_worker', rows)

  def test_mutual_tls_refuses_clients_without_the_cluster_certificate(self):
    stranger = tls.write_cluster_tls(os.path.join(self.create_tempdir().full_path, 'other'), hosts=['localhost'])
    for certificates in (None, stranger):  # In the clear; another CA's certificate.
      with self.subTest(certificates=certificates), self.assertRaisesRegex(errors.RunFailed, 'no answer'):
        cluster_runtime.connect(self.workers[0].address, certificates, timeout=1.0)
    cluster_runtime.connect(self.workers[0].address, self.tls, timeout=60.0)  # The cluster's own: answered.

  def test_record_level_dp_killed_in_a_round_fails_naming_the_worker_and_resumes_to_the_single_process_model(self):
    # One run on the workers for both claims (each run costs ~15 CPU-s): a killed worker fails the round
    # naming it, the same command resumes, and the resumed run is the single-process run (a resumed run
    # ends with the uninterrupted run's model). The class's workers; the killed one is replaced on its port.
    config = self._config('')  # Distributed DP-SGD at ε = 1 and DP feature statistics.
    config.privacy.noise_seed = 5
    one = self._single(config)
    first, second = self.workers
    self._on_workers(config)
    config.runtime.connect_seconds = 5.0
    workdir = os.path.join(self.create_tempdir().full_path, 'run')

    def kill_after_round_1(line: str) -> None:
      if line.startswith('round 1/2'):  # A round before the kill, one after.
        second.stop(signal.SIGKILL)  # Mid-run; its watchdog stops the worker_binary (checked in stop).

    try:
      with self.assertRaisesRegex(errors.RunFailed, f'worker {second.address} failed .*rerun the same command'):
        _run(config, workdir, log=kill_after_round_1)
      with self.assertRaisesRegex(errors.RunFailed, f'worker {second.address}: no answer after 5 s'):
        _run(config, workdir, log=lambda _: None)
    finally:
      if second.process.poll() is not None:
        self.workers[1] = self._worker('w2', port=second.port)  # The class's list: theirs too.
    config.runtime.connect_seconds = 60.0  # A loaded machine took over 5 s to answer.
    lines = []
    spread = _run(config, workdir, log=lines.append)
    self.assertEqual(spread.rounds_completed, 2)
    self.assertIn(f'resuming {workdir} after round 1', lines)
    np.testing.assert_allclose(_weights(spread), _weights(one), atol=1e-6)
    self.assertEqual(spread.metrics['privacy'], one.metrics['privacy'])
    self.assertIn('record', json.dumps(spread.metrics['privacy']))


def _run(config, workdir: str, **kwargs) -> program.RunResult:
  """`program.run` on the runtime config.runtime names, as scripts/train.py runs it."""
  return program.run(config, workdir, runtime=cluster_runtime.configured(config), **kwargs)


class FaultsTest(absltest.TestCase):

  def test_an_absent_worker_is_named(self):
    config = helpers.smoke_config(self.create_tempdir().full_path)
    config.runtime.workers = f'localhost:{portpicker.pick_unused_port()}'
    config.runtime.connect_seconds = 0.5
    with self.assertRaisesRegex(errors.RunFailed, f'worker {config.runtime.workers}: no answer after 0.5 s'):
      _run(config, self.create_tempdir().full_path, log=lambda _: None)


  def test_the_worker_binary_listens_before_serve_returns_and_a_taken_port_is_refused(self):
    # Not inside runtime.owned_workers(): leaving it stops every worker_binary of this process,
    # this module's local runtime included.
    serve_dir = self.create_tempdir().full_path
    binary, port = worker_lib.start_listening(serve_dir, port=None)
    self.addCleanup(binary.wait)
    self.addCleanup(binary.kill)
    self.assertIsNone(binary.poll())
    with socket.create_connection(('127.0.0.1', port), timeout=5):
      pass  # Accepted: the TLS proxy forwards to a worker that answers.
    # A second worker on its port would bind it too (SO_REUSEPORT) and take half the calls: refused.
    with self.assertRaisesRegex(errors.InputError, f'--port={port}: another process listens there'):
      other, _ = worker_lib.start_listening(serve_dir, port=port)
      other.kill()
    binary.kill()
    binary.wait()
    with socket.create_server(('', port)):  # Taken (without SO_REUSEPORT, which gRPC servers share).
      with self.assertRaisesRegex(errors.InputError, f'--port={port}: .*pick a free port'):
        other, _ = worker_lib.start_listening(serve_dir, port=port)  # It exits at once (status 0).
        other.kill()


class TlsTest(absltest.TestCase):

  def test_certificates_are_never_overwritten(self):
    directory = self.create_tempdir().full_path
    tls.write_cluster_tls(directory, hosts=['localhost'])
    with self.assertRaises(FileExistsError):
      tls.write_cluster_tls(directory, hosts=['localhost'])


class RefusalsTest(absltest.TestCase):

  def test_what_the_workers_cannot_run_is_refused_before_connecting(self):
    cases = {'model.alert_budget': 0.01, 'evaluation.alert_budgets': (0.01,), 'attack.type': 'boost'}
    for key, value in cases.items():
      config = helpers.smoke_config(self.create_tempdir().full_path)
      config.runtime.workers = 'localhost:1'  # Nobody there: refused before trying.
      section, field = key.split('.')
      config[section][field] = value
      with self.subTest(key), self.assertRaisesRegex(errors.ConfigError, 'in one process'):
        _run(config, self.create_tempdir().full_path, log=lambda _: None)

  def test_record_level_dp_over_units_of_several_rows_is_refused(self):
    config = csv_config.get_config()
    schema = schema_lib.Schema.from_dict(dict(helpers.SCHEMA, unit='account'))
    with self.assertRaisesRegex(errors.ConfigError, "unit column 'account'"):
      cluster_runtime.check_units(config, schema)
    cluster_runtime.check_units(config, schema_lib.Schema.from_dict(helpers.SCHEMA))  # Rows as units.
    config.record_dp.enabled = False
    cluster_runtime.check_units(config, schema)  # Client-level DP: units do not matter.

  def test_a_malformed_address_names_the_key(self):
    config = csv_config.get_config('smoke')
    config.runtime.workers = 'localhost'
    with self.assertRaisesRegex(errors.ConfigError, "config.runtime.workers: 'localhost' is not host:port"):
      cluster_runtime.configured(config)
    config.runtime.workers = ''
    self.assertIsInstance(cluster_runtime.configured(config), program.InProcess)
    config.runtime.workers = ' a:1, b:2 '
    self.assertEqual(cluster_runtime.configured(config).addresses, ('a:1', 'b:2'))

  def test_commands_with_their_own_runtime_refuse_workers(self):
    config = helpers.smoke_config(self.create_tempdir().full_path)
    config.runtime.workers = 'localhost:1'
    with self.assertRaisesRegex(errors.ConfigError, 'the canary audit runs in this process'):
      canary_audit.audit(config, canaries=10, seed=0)
    with self.assertRaisesRegex(errors.ConfigError, 'this command runs in this process'):
      program.run(config, self.create_tempdir().full_path, runtime=program.InProcess())
    with self.assertRaisesRegex(errors.ConfigError, 'this command runs in this process'):
      program.run(config, self.create_tempdir().full_path)  # The workers are scripts/train.py's choice.

  def test_worker_script_needs_certificates_or_insecure(self):
    out = subprocess.run([sys.executable, worker_lib.SCRIPT, '--port=1',
                          f'--data_dir={REPO}'], capture_output=True, text=True, cwd=REPO, timeout=120)
    self.assertEqual(out.returncode, 2, out.stderr)
    self.assertIn('give --certificates=DIR', out.stderr)
    self.assertNotIn('Traceback', out.stderr)


class WorkerDataTest(absltest.TestCase):

  def test_statistics_graphs_answer_as_the_python_does(self):
    data = helpers.load_federation()
    stored = shards.store(data.institutions[0], data.schema, self.create_tempdir().full_path)
    frame = stored.train
    candidates = {'grade': ['A', 'C', 'Z']}
    requests = [(features.Request.CANDIDATES, {'min_count': 18}), (features.Request.HISTOGRAMS, {}),
                (features.Request.STATISTICS, {'candidates': candidates, 'lower': [2000.0, None],
                                               'upper': [None, 20.0]})]
    chunk_rows = statistics._CHUNK_ROWS
    self.addCleanup(setattr, statistics, '_CHUNK_ROWS', chunk_rows)
    for request, params in requests:
      statistics._CHUNK_ROWS = 7  # Nine chunks of the 60 rows: sums and value counts carried across them.
      with self.subTest(request.value):
        value = statistics.as_answer(request, statistics.computation(stored.train_path, data.schema, request,
                                                                     params)())
        expected = features.answer(frame, data.schema, request, params)
        self.assertEqual(list(value), list(expected))
        for key in expected:
          if request is features.Request.CANDIDATES:
            self.assertEqual(value[key], expected[key])
            self.assertNotEmpty(expected[key])
          else:
            np.testing.assert_allclose(value[key], expected[key], rtol=1e-12)

  def test_dp_statistics_are_the_python_answers_once_the_coordinator_adds_the_noise(self):
    data = helpers.load_federation()
    stored = shards.store(data.institutions[1], data.schema, self.create_tempdir().full_path)
    key = (1234, 1)  # (noise seed, institution index)
    requests = [(features.Request.HISTOGRAMS, {'noise_share': 2.0, 'release': 0}),
                (features.Request.FINE_COUNTS, {'noise_share': 2.0, 'release': 1, 'hash_buckets': 16,
                                                'ranges': [(1000.0, 30000.0, 10.0), (5.0, 25.0, 0.1)]})]
    chunk_rows = statistics._CHUNK_ROWS
    self.addCleanup(setattr, statistics, '_CHUNK_ROWS', chunk_rows)
    statistics._CHUNK_ROWS = 7
    for request, params in requests:
      with self.subTest(request.value):
        exact = statistics.as_answer(request, statistics.computation(stored.train_path, data.schema, request,
                                                                     params)())
        expected = features.answer(stored.train, data.schema, request, params, noise_key=key)
        for name, value in features.noised(exact, params['noise_share'], key, params['release']).items():
          np.testing.assert_allclose(value, expected[name], rtol=1e-12)
    # The hashed slots' counts (the model's hash, in a graph) are the Python ones; no raw value is asked for.
    self.assertEqual(exact['category_counts'].shape, (16,))
    with self.assertRaisesRegex(ValueError, 'no worker proposes its category values'):
      statistics.computation(stored.train_path, data.schema, features.Request.CANDIDATES,
                             {'min_count': 1, 'noise_share': 2.0, 'release': 0})

  def test_prepare_serves_a_data_dir_or_linked_shards(self):
    root = self.create_tempdir().full_path
    data_dir, schema_file = helpers.write_federation(root)
    from_csv = worker_lib.prepare(data_dir, os.path.join(root, 'a'), schema_file=schema_file, log=lambda _: None)
    data = csv_dir.load(data_dir, schema_lib.Schema.from_json(schema_file))
    shard_dir = os.path.join(root, 'shards')
    shards.store_federation(data, shard_dir, key={'test': 1})
    from_shards = worker_lib.prepare(shard_dir, os.path.join(root, 'b'), log=lambda _: None)
    self.assertEqual(from_shards, from_csv)
    self.assertEqual([i['name'] for i in from_csv['institutions']], ['bank_a', 'bank_b', 'bank_c'])
    self.assertEqual(from_csv['institutions'][0]['units'], 60)  # No unit column: each row.
    self.assertTrue(os.path.islink(os.path.join(root, 'b', 'bank_a.train.csv')))
    with open(os.path.join(root, 'b', worker_lib.INFO)) as f:
      self.assertEqual(json.load(f), from_shards)
    with self.assertRaisesRegex(FileExistsError, 'not empty'):
      worker_lib.prepare(data_dir, os.path.join(root, 'a'), schema_file=schema_file)

  def test_a_unit_column_counts_its_distinct_values(self):
    root = self.create_tempdir().full_path
    data_dir, schema_file = helpers.write_federation(root)
    with open(schema_file, 'w') as f:
      json.dump(dict(helpers.SCHEMA, unit='account'), f)  # 'acct0'..'acct11' in every file.
    info = worker_lib.prepare(data_dir, os.path.join(root, 'a'), schema_file=schema_file, log=lambda _: None)
    self.assertEqual([i['units'] for i in info['institutions']], [12, 12, 12])

  def test_roster_refuses_mixed_schemas_and_an_institution_on_two_workers(self):
    root = self.create_tempdir().full_path
    data_dir, schema_file = helpers.write_federation(root)
    info = worker_lib.prepare(data_dir, os.path.join(root, 'a'), schema_file=schema_file, log=lambda _: None)
    with self.assertRaisesRegex(errors.RunFailed, "institution 'bank_a' is on workers h:1 and h:2"):
      cluster_runtime.roster([info, info], ['h:1', 'h:2'], None)
    other = dict(info, schema=dict(info['schema'], categorical=[]))
    with self.assertRaisesRegex(errors.RunFailed, 'worker h:2 holds data of another schema'):
      cluster_runtime.roster([info, other], ['h:1', 'h:2'], None)
    federation = cluster_runtime.roster([info], ['h:1'], None)
    self.assertEqual([i.name for i in federation.institutions], ['bank_a', 'bank_b', 'bank_c'])
    self.assertEqual(federation.holders, (0, 0, 0))


if __name__ == '__main__':
  absltest.main()

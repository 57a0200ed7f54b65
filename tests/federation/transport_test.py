"""A federation over Flower 1.12: TLS, node authentication, and the federation's runs.

flwr 1.12.0 asks for cryptography < 43; the project overrides it with its own
(>= 50). The test starts a real SuperLink, a scripts/node.py process per
institution and Flower's own SuperNodes on localhost, and checks the
admission path we rely on (listed nodes are admitted over TLS, an unlisted key
is refused, a plaintext client gets no session) and the federation's runs.
"""

import csv
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import tensorflow as tf

from tffaml import errors
from tffaml.federation import credentials

_BIN = os.path.dirname(sys.executable)
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ADMITTED = 'AuthenticateServerInterceptor: Created node_id='


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# A deadline, not a speed check: each Flower process imports TensorFlow (flwr's
# TensorBoard helper does) and takes about 17 s to start on an idle core, far
# longer beside the rest of the suite.
def _wait_for(path: str, text: str, timeout: float = 240.0) -> bool:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    with open(path, errors='replace') as f:
      if text in f.read():
        return True
    time.sleep(0.25)
  return False


class CredentialsTest(tf.test.TestCase):

  def test_private_files_are_private_and_nothing_is_overwritten(self):
    out = self.create_tempdir().full_path
    tls = credentials.write_tls(out, hosts=['127.0.0.1', 'localhost'])
    private, public = credentials.write_node_key(out, 'bank_a')
    for path in (tls.ca_key, tls.key, private):
      self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
    with open(public) as f:
      self.assertStartsWith(f.read(), 'ecdsa-sha2-nistp384 ')
    with self.assertRaisesRegex(FileExistsError, 'never overwritten'):
      credentials.write_node_key(out, 'bank_a')
    with self.assertRaisesRegex(FileExistsError, 'never overwritten'):
      credentials.write_tls(out, hosts=['localhost'])
    with self.assertRaisesRegex(errors.InputError, 'not an OpenSSH public key'):
      credentials.write_authorized_nodes(os.path.join(out, 'nodes.csv'), [private])
    self.assertFalse(os.path.exists(os.path.join(out, 'nodes.csv')))


class _Processes(tf.test.TestCase):
  """Starts processes in their own sessions and stops every one of them after the test."""

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.processes = []

  def tearDown(self):
    for process in self.processes:  # Flower's nodes wait on after a refusal: stop them all.
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    for process in self.processes:
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    super().tearDown()

  def _start(self, name: str, *args: str) -> str:
    log = os.path.join(self.dir, f'{name}.log')
    with open(log, 'w') as f:
      self.processes.append(subprocess.Popen(
          [os.path.join(_BIN, args[0]), *args[1:]], stdout=f, stderr=subprocess.STDOUT,
          cwd=self.dir, start_new_session=True))
    return log

  def _superlink(self, tls: credentials.TlsFiles, authorized: str) -> tuple[str, str, str]:
    """(log, Fleet API address, Driver API address) of a SuperLink with TLS and node authentication."""
    link_key, link_pub = credentials.write_node_key(self.dir, 'superlink')
    fleet, driver = f'127.0.0.1:{_free_port()}', f'127.0.0.1:{_free_port()}'
    link = self._start(
        'superlink', 'flower-superlink', '--ssl-ca-certfile', tls.ca_certificate,
        '--ssl-certfile', tls.certificate, '--ssl-keyfile', tls.key, '--auth-list-public-keys', authorized,
        '--auth-superlink-private-key', link_key, '--auth-superlink-public-key', link_pub,
        '--fleet-api-address', fleet, '--driver-api-address', driver,
        '--database', ':flwr-in-memory-state:')
    return link, fleet, driver


class FederationOverFlowerTest(_Processes):
  """A SuperLink and one scripts/node.py process per institution; the coordinator in this process."""

  def _federation(self, config, names):
    from tffaml.export import signing  # pylint: disable=g-import-not-at-top
    tls = credentials.write_tls(self.dir, hosts=['127.0.0.1'])
    keys = {n: credentials.write_node_key(os.path.join(self.dir, 'nodes'), n) for n in names}
    authorized = credentials.write_authorized_nodes(os.path.join(self.dir, 'nodes.csv'),
                                                    [pub for _, pub in keys.values()])
    private, public = signing.generate_keys(os.path.join(self.dir, 'coordinator'))
    link, fleet, driver = self._superlink(tls, authorized)
    self.nodes = {}
    for name in names:  # Each node: its own process, folder, key and noise seed file.
      self._start(name, 'python', os.path.join(_REPO, 'scripts', 'node.py'),
                  f'--config={os.path.join(_REPO, "configs", "csv.py")}:smoke',
                  '--config.federated.rounds=2', '--config.federated.batch_size=16',
                  '--config.privacy.noise_seed=0', '--config.federated.eval_every=0',
                  f'--config.data.schema_file={config.data.schema_file}',
                  f'--data_dir={os.path.join(config.data.dir, name)}',
                  f'--workdir={os.path.join(self.dir, "node_" + name)}', f'--superlink={fleet}',
                  f'--ca={tls.ca_certificate}', f'--key={keys[name][0]}', f'--coordinator_key={public}')
      self.nodes[name] = self.processes[-1]
    self.assertTrue(_wait_for(link, f'Node authentication enabled with {len(names)} known public keys'),
                    open(link).read())
    self.assertTrue(_wait_for(link, 'Starting Fleet API'), open(link).read())
    # Beside them: a node whose key is not listed, and a client without TLS.
    intruder = credentials.write_node_key(self.dir, 'intruder')
    self.refused = self._start(
        'intruder', 'flower-supernode', '--root-certificates', tls.ca_certificate, '--superlink', fleet,
        '--auth-supernode-private-key', intruder[0], '--auth-supernode-public-key', intruder[1],
        '--max-retries', '1')
    self.plaintext = self._start('plaintext', 'flower-supernode', '--insecure', '--superlink', fleet,
                                 '--max-retries', '1')
    self.link = link
    with open(tls.ca_certificate, 'rb') as f:
      ca = f.read()
    return ca, driver, private, {n: keys[n][1] for n in names}

  def test_only_listed_nodes_over_tls_the_simulations_model_a_resumed_coordinator_and_a_lost_node(self):
    from tests import helpers  # pylint: disable=g-import-not-at-top
    from tests.federation import coordinator_test  # pylint: disable=g-import-not-at-top
    from tffaml.federation import coordinator  # pylint: disable=g-import-not-at-top
    from tffaml.federation import flower  # pylint: disable=g-import-not-at-top
    from tffaml.federation import messages  # pylint: disable=g-import-not-at-top
    from tffaml.training import program  # pylint: disable=g-import-not-at-top
    config = helpers.smoke_config(self.dir, rounds=2)
    config.privacy.noise_seed = 0
    names = sorted(os.listdir(config.data.dir))
    ca, driver, private, public = self._federation(config, names)
    node_keys = {n: messages.load_public_key(p) for n, p in public.items()}

    def run(workdir, *, timeout=600.0, min_nodes=1, **kwargs):
      transport = flower.FlowerTransport(driver, root_certificates=ca, node_keys=node_keys, timeout=timeout,
                                         log=lambda _: None)
      try:
        transport.wait_for(names, timeout=240.0)
        federation = coordinator.Federation(transport, key=messages.load_private_key(private),
                                            node_keys=node_keys, min_nodes=min_nodes, log=lambda _: None)
        return program.run(coordinator_test.coordinator_config(config), os.path.join(self.dir, workdir),
                           runtime=federation, **kwargs)
      finally:
        transport.close()

    def kill_bank_c_after_round_1(line):
      if line.startswith('round 1/'):
        os.killpg(self.nodes['bank_c'].pid, signal.SIGKILL)

    config.federated.eval_every = 0  # Evaluated at the end only: fewer exchanges.
    # TFF's local runtime: conftest's, for the session.
    simulated = program.run(config, os.path.join(self.dir, 'sim'), log=lambda _: None)
    # A coordinator stopped after round 1 and restarted on its workdir
    # ends as an uninterrupted run, which is the simulation.
    self.assertIsNone(run('resumed', stop_after_round=1, log=lambda _: None).metrics)
    resumed = run('resumed', log=lambda _: None)
    lost = run('lost', timeout=10.0, min_nodes=2, log=kill_bank_c_after_round_1)
    for a, b in zip(simulated.model.get_weights(), resumed.model.get_weights()):
      self.assertAllClose(a, b, atol=1e-5)
    self.assertEqual(simulated.metrics['privacy']['epsilon'], resumed.metrics['privacy']['epsilon'])
    self.assertIn('Client-level DP trusts the coordinator', resumed.metrics['privacy']['text'])
    self.assertAllClose(simulated.metrics['federated']['pooled']['auc'],
                        resumed.metrics['federated']['pooled']['auc'], atol=1e-6)
    with open(lost.paths.metrics_csv) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([float(r['institutions_in_round']) for r in rows], [3.0, 2.0])  # The ledger's view.
    self.assertEqual(lost.metrics['federated']['not_evaluated'], ['bank_c'])
    self.assertGreater(float(rows[0]['federation/bytes_sent_per_node']), 1000)
    self.assertTrue(_wait_for(self.refused, 'Access denied'), open(self.refused).read())
    self.assertTrue(_wait_for(self.link, 'Handshake failed'), open(self.link).read())
    with open(self.link) as f:
      self.assertEqual(f.read().count(_ADMITTED), len(names))  # The registered nodes only.
    with open(self.plaintext) as f:
      self.assertNotIn('node_id', f.read())

if __name__ == '__main__':
  tf.test.main()

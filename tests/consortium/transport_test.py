"""A federation over Flower 1.12: TLS, node authentication, and the federation's runs.

flwr 1.12.0 asks for cryptography < 43; the project overrides it with its own
(>= 50). The test starts a real SuperLink, a scripts/node.py process per
institution and Flower's own SuperNodes on localhost, and checks the
admission path we rely on (listed nodes are admitted over TLS, an unlisted key
is refused, a plaintext client gets no session) and the federation's runs.
A node restarted mid-run: superlink_test (killed or stopped, over Flower,
echo nodes) and coordinator_test (a new Node serves the next round).
"""

import csv
import json
import os
import signal

import tensorflow as tf

from tffaml.security import credentials
from tffaml.consortium import local

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_ADMITTED = 'AuthenticateServerInterceptor: Created node_id='
# configs/csv.py with SecAgg+ summing the updates of local DP-SGD (each node's
# own full noise, seeded), so that a lost node only leaves the round;
# distributed DP-SGD, which needs every node's share, is coordinator_test's.
_OVERRIDES = {'federated.rounds': 2, 'privacy.noise_seed': 0, 'federated.eval_every': 0,
              'record_dp.mode': 'local', 'federated.batch_size': 16}


# A deadline, not a speed check: each node process imports TensorFlow and TFF
# and takes about 17 s to start on an idle core, far longer beside the rest of
# the suite.
_START_SECONDS = 240.0

# Flower's own processes import TensorFlow only for a TensorBoard helper
# unused here (flwr.server.utils.tensorboard: `except ModuleNotFoundError`):
# started without it, the SuperLink and each intruding SuperNode take about
# 1 CPU-s instead of 10. The nodes (scripts/node.py) need it and keep it.
_ENTRY_POINTS = {'flower-superlink': 'flwr.server.app:run_superlink',
                 'flower-supernode': 'flwr.client.supernode.app:run_supernode'}


def _without_tensorflow(argv: list[str]) -> list[str]:
  """Flower's console script `argv[0]`, run as `python -c` with TensorFlow unimportable."""
  module, function = _ENTRY_POINTS[argv[0]].split(':')
  code = (f"import sys; sys.modules['tensorflow'] = None; sys.argv[0] = {argv[0]!r}\n"
          f'from {module} import {function}\nsys.exit({function}())')
  return ['python', '-c', code, *argv[1:]]


def _wait_for(path: str, text: str) -> bool:
  return local.wait_for_text(path, text, timeout=_START_SECONDS) is None


class FederationOverFlowerTest(tf.test.TestCase):
  """A SuperLink and one scripts/node.py process per institution; the coordinator in this process."""

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    # Every process started is stopped after the test (Flower's nodes wait on after a refusal).
    self.processes = self.enter_context(local.Processes(os.path.join(self.dir, 'logs')))

  def _federation(self, config, names):
    files = credentials.write_federation(os.path.join(self.dir, 'pki'), hosts=['127.0.0.1'], institutions=names)
    fleet, driver = f'127.0.0.1:{local.free_port()}', f'127.0.0.1:{local.free_port()}'
    self.link = self.processes.start('superlink', local.superlink_argv(files, fleet=fleet, driver=driver))
    for name in names:  # Each node: its own process, folder, key and noise seed file.
      argv = local.node_argv(
          files, name=name, rows=[f'--data_dir={os.path.join(config.data.dir, name)}'],
          workdir=os.path.join(self.dir, 'node_' + name),
          fleet=fleet, config_args=[
              f'--config={os.path.join(_REPO, "configs", "csv.py")}',
              *[f'--config.{k}={v}' for k, v in _OVERRIDES.items()],
              f'--config.data.schema_file={config.data.schema_file}'])
      self.processes.start(name, argv)
    self.assertTrue(_wait_for(self.link, f'Node authentication enabled with {len(names)} known public keys'),
                    open(self.link).read())
    self.assertTrue(_wait_for(self.link, 'Starting Fleet API'), open(self.link).read())
    # Beside them: a node whose key is not listed, and a client without TLS.
    intruder = credentials.write_node_key(self.dir, 'intruder')
    self.refused = self.processes.start('intruder', _without_tensorflow([
        'flower-supernode', '--root-certificates', files.tls.ca_certificate, '--superlink', fleet,
        '--auth-supernode-private-key', intruder[0], '--auth-supernode-public-key', intruder[1],
        '--max-retries', '1']))
    self.plaintext = self.processes.start('plaintext', _without_tensorflow(
        ['flower-supernode', '--insecure', '--superlink', fleet, '--max-retries', '1']))
    with open(files.tls.ca_certificate, 'rb') as f:
      ca = f.read()
    return ca, driver, files.coordinator_key, {n: os.path.join(files.nodes, n + '.pub') for n in names}

  def test_only_listed_nodes_over_tls_the_simulations_model_securely_summed_a_resumed_coordinator_a_lost_node(self):
    from tests import helpers  # pylint: disable=g-import-not-at-top
    from tests.consortium import coordinator_test  # pylint: disable=g-import-not-at-top
    from tffaml.consortium import coordinator  # pylint: disable=g-import-not-at-top
    from tffaml.consortium import flower  # pylint: disable=g-import-not-at-top
    from tffaml.consortium import messages  # pylint: disable=g-import-not-at-top
    from tffaml.training import program  # pylint: disable=g-import-not-at-top
    from configs import csv as csv_config  # pylint: disable=g-import-not-at-top
    config = csv_config.get_config()
    config.data.dir, config.data.schema_file = helpers.write_federation(self.dir)
    for key, value in _OVERRIDES.items():
      section, name = key.split('.')
      config[section][name] = value
    self.assertTrue(config.federation.secure_aggregation)
    names = sorted(os.listdir(config.data.dir))
    ca, driver, private, public = self._federation(config, names)
    node_keys = {n: messages.load_public_key(p) for n, p in public.items()}

    lines = []  # The coordinator's own log.

    def run(workdir, *, timeout=600.0, min_nodes=1, deliver=False, **kwargs):
      transport = flower.FlowerTransport(driver, root_certificates=ca, node_keys=node_keys, timeout=timeout,
                                         log=lambda _: None)
      try:
        transport.wait_for(names, timeout=240.0)
        federation = coordinator.Federation(transport, key=messages.load_private_key(private),
                                            node_keys=node_keys, min_nodes=min_nodes, log=lines.append)
        result = program.run(coordinator_test.coordinator_config(config), os.path.join(self.dir, workdir),
                             runtime=federation, **kwargs)
        if deliver:  # Issue 35: signed, then sent to every node over Flower.
          self.assertEqual(sorted(coordinator.deliver(federation, result, key_file=private)), names)
        return result
      finally:
        transport.close()

    def kill_bank_c_after_round_1(line):
      if line.startswith('round 1/'):
        os.killpg(self.processes.pids['bank_c'], signal.SIGKILL)

    # TFF's local runtime: conftest's, for the session.
    simulated = program.run(config, os.path.join(self.dir, 'sim'), log=lambda _: None)
    # A coordinator stopped after round 1 and restarted on its workdir
    # ends as an uninterrupted run, which is the simulation.
    self.assertIsNone(run('resumed', stop_after_round=1, log=lambda _: None).metrics)
    resumed = run('resumed', log=lambda _: None, deliver=True)
    lost = run('lost', timeout=10.0, min_nodes=2, log=kill_bank_c_after_round_1)
    # The secure sum is of updates quantized to 2^22 levels over +-8 (4e-6 a step).
    for a, b in zip(simulated.model.get_weights(), resumed.model.get_weights()):
      self.assertAllClose(a, b, atol=1e-4)
    self.assertEqual(simulated.metrics['privacy']['epsilon'], resumed.metrics['privacy']['epsilon'])
    self.assertEqual(resumed.metrics['privacy']['aggregation'], 'secure')  # SecAgg+ summed the updates.
    self.assertAllClose(simulated.metrics['federated']['pooled']['auc'],
                        resumed.metrics['federated']['pooled']['auc'], atol=1e-3)
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
    from tffaml.security import signing  # pylint: disable=g-import-not-at-top
    public_key = os.path.join(os.path.dirname(private), signing.PUBLIC_KEY_FILE)
    for name in names:  # Each node process kept the verified model, and logged what it answered.
      signing.verify(os.path.join(self.dir, 'node_' + name, 'model', 'export'), public_key)
      with open(os.path.join(self.dir, 'node_' + name, 'answers.jsonl')) as f:
        kinds = [json.loads(line)['kind'] for line in f]
      self.assertIn('deliver', kinds)
      self.assertLess(kinds.index('prepare'), kinds.index('train'))  # Its build, before round 1.
    # Each run's nodes built their client work beside the coordinator's own build (a thread of its own).
    self.assertEqual(len([l for l in lines if l.startswith('prepare: 3 of 3 nodes built their client work')]), 3)


if __name__ == '__main__':
  tf.test.main()

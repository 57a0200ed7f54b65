"""Nodes and the coordinator's runtime in this process: refusals, checks and combined metrics.

The federation's model equals the simulation's: tested over separate processes in transport_test.
"""

import copy
import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import tensorflow as tf

from configs import csv as csv_config
from tests import helpers
from tffaml import errors
from tffaml import features
from tffaml.security import signing
from tffaml.consortium import coordinator
from tffaml.security import credentials
from tffaml.consortium import messages
from tffaml.consortium import node as node_lib
from tffaml.studies import canary_audit
from tffaml.config import builders as config_builders
from tffaml.training import program

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _keys(root: str, names) -> tuple:
  """(coordinator private key, its public key, {name: node private key}, {name: node public key})."""
  private, public = signing.generate_keys(os.path.join(root, 'coordinator'))
  node_private, node_public = {}, {}
  for name in names:
    key, pub = credentials.write_node_key(os.path.join(root, 'nodes'), name)
    node_private[name], node_public[name] = messages.load_private_key(key), messages.load_public_key(pub)
  return messages.load_private_key(private), messages.load_public_key(public), node_private, node_public


def coordinator_config(config):
  config = copy.deepcopy(config)
  coordinator.at_coordinator(config)
  return config


class _Faulty(node_lib.Node):
  """A node, honest until a test sets its faults (`_NodesTestCase._fault`): what it sends, and its own checks.

  `poison`: header values to claim, and 'nan': put a NaN in the update; `bypass`: its own non-finite check
  off; `change`: the training metrics it sends, from its own.
  """

  poison: dict = {}
  bypass = False
  change = None

  def _train(self, request):
    reply = super()._train(request)
    arrays = list(reply.arrays)
    if self.poison.get('nan'):  # Diverged: NaN everywhere (DP-SGD's clip by norm spreads one NaN to all).
      arrays = [np.full_like(a, np.nan) for a in arrays]
    header = {**reply.header, **{k: v for k, v in self.poison.items() if k != 'nan'}}
    if self.change is not None:
      header['metrics'] = self.change(header['metrics'])  # pylint: disable=not-callable
    return messages.Message(reply.kind, header, tuple(arrays))

  def _refuse_non_finite(self, request, reply):
    if not self.bypass:
      super()._refuse_non_finite(request, reply)


class _NodesTestCase(tf.test.TestCase):
  """The smoke federation's nodes and coordinator in this process (each test class's own tests).

  One federation (rows and keys) per class, and one set of nodes per config (`_nodes`): a node builds its
  client work (Keras models, DP-SGD, TFF) once per plan, about 5 CPU-s, so a class's runs of one config
  share it. A test that edits the rows writes its own (`_own_rows`).
  """

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.class_root = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.class_root, ignore_errors=True)
    cls.base_config = helpers.smoke_config(cls.class_root, rounds=2)
    cls.base_config.privacy.noise_seed = 0
    cls.base_config.federated.eval_every = 0  # The final evaluation only: a faster test.
    cls.names = sorted(os.listdir(cls.base_config.data.dir))
    cls.key, cls.public, cls.node_keys, cls.node_public = _keys(cls.class_root, cls.names)
    cls.built = {}  # The config's JSON: its nodes.

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.config = copy.deepcopy(self.base_config)

  def _own_rows(self):
    """Points self.config at this test's own copy of the rows (the same rows: write_federation is seeded)."""
    self.config.data.dir, self.config.data.schema_file = helpers.write_federation(self.root)

  def _nodes(self, config=None, *, shared=True):
    """The config's nodes: the class's (built once, honest unless `_fault`), or new ones."""
    config = copy.deepcopy(config or self.config)  # A node keeps its config: the test's later edits stay out.
    key = config.to_json_best_effort(sort_keys=True)
    if shared and key in self.built:
      return list(self.built[key])
    nodes = [_Faulty(config, folder=os.path.join(config.data.dir, n), key=self.node_keys[n],
                     coordinator_key=self.public, noise_seed=0, log=lambda _: None) for n in self.names]
    if shared:
      self.built[key] = nodes
    return list(nodes)

  def _fault(self, node, log=None, **faults):
    """Sets a shared node's `_Faulty` faults (and where its log goes) for this test, or until `_mend`."""
    for name, value in faults.items():
      setattr(node, name, value)
    if log is not None:
      node._log = log  # pylint: disable=protected-access
    self.addCleanup(self._mend, node)

  def _mend(self, node):
    for name in ('poison', 'bypass', 'change'):
      node.__dict__.pop(name, None)
    node._log = lambda _: None  # pylint: disable=protected-access

  def _federation(self, nodes, **kwargs):
    return coordinator.Federation(coordinator.InProcessTransport(nodes), key=self.key,
                                  node_keys=self.node_public, log=lambda _: None, **kwargs)


def _default_config(data_dir: str, schema_file: str):
  """configs/csv.py's default (distributed record-level DP-SGD, secure aggregation): 2 rounds, seeded noise."""
  config = csv_config.get_config()
  config.data.dir, config.data.schema_file = data_dir, schema_file
  config.federated.rounds, config.federated.eval_every, config.privacy.noise_seed = 2, 0, 0
  return config


def _alerting_config(data_dir: str, schema_file: str):
  """`_default_config`, its export alerting on 30% of the rows (a federated DP quantile of the nodes' scores)."""
  config = _default_config(data_dir, schema_file)
  # A large budget: 180 training rows against the threshold's noise at ε = 1 (0.05 flags none).
  config.model.alert_budget, config.evaluation.alert_budgets = 0.3, (0.1, 0.5)
  return config


class FederationTest(_NodesTestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # The simulation that both the federation in the clear and the securely summed one must give:
    # config.federation is the federation's alone, the simulation never reads it.
    config = _alerting_config(cls.base_config.data.dir, cls.base_config.data.schema_file)
    cls.simulated = program.run(config, os.path.join(cls.class_root, 'sim'), log=lambda _: None)

  def test_a_node_refuses_a_tampered_request_another_config_and_a_stale_round(self):
    node = self._nodes(shared=False)[0]
    hello = messages.Message(node_lib.HELLO, {'agreement': node.agreement})

    def reply(blob):
      return messages.unseal(node.handle(blob), self.node_public[node.name], sender=node.name,
                             kinds=(node_lib.reply_kind(node_lib.HELLO), node_lib.REFUSED))
    self.assertEqual(reply(messages.seal(hello, self.key)).kind, 'hello_reply')
    tampered = bytearray(messages.seal(hello, self.key))
    tampered[-5] ^= 1
    refused = reply(bytes(tampered))
    self.assertEqual(refused.kind, node_lib.REFUSED)
    self.assertIn('does not verify', refused.header['reason'])
    other = messages.Message(node_lib.HELLO, {'agreement': 'f' * 64})
    self.assertIn('another config', reply(messages.seal(other, self.key)).header['reason'])
    forged = messages.seal(hello, self.node_keys[self.names[1]])  # Not the coordinator's key.
    self.assertIn('does not verify', reply(forged).header['reason'])
    weights = np.full(3, 1.5, np.float32)
    train = messages.Message(node_lib.TRAIN, {'agreement': node.agreement, 'run': 'run', 'round': 1},
                             (weights,))
    model = bytearray(messages.seal(train, self.key))
    model[model.index(weights.tobytes())] ^= 1  # A bit of the global model's weights.
    refused = messages.unseal(node.handle(bytes(model)), self.node_public[node.name], sender=node.name,
                              kinds=(node_lib.REFUSED,))
    self.assertIn('does not verify', refused.header['reason'])
    node._last_round['run'] = 5  # pylint: disable=protected-access
    stale = messages.Message(node_lib.TRAIN, {'agreement': node.agreement, 'run': 'run', 'round': 4})
    self.assertIn('stale', reply(messages.seal(stale, self.key)).header['reason'])
    # A plan to prepare whose census entry is not this node's rows: refused before any build.
    prepare = messages.Message(node_lib.PREPARE, {
        'agreement': node.agreement, 'run': 'run', 'index': 0, 'space': {}, 'noise': {},
        'census': [{'institution': node.name, 'units': 1, 'train_rows': 1}]})
    self.assertIn("the plan's census entry", reply(messages.seal(prepare, self.key)).header['reason'])

  def test_the_coordinator_refuses_a_node_whose_plan_differs(self):
    changed = copy.deepcopy(self.config)
    changed.federated.client_learning_rate *= 2
    nodes = self._nodes()[:2] + self._nodes(changed)[2:]
    with self.assertRaisesRegex(errors.RunFailed, f'node {self.names[2]}: refused'):  # conftest's runtime.
      program.run(coordinator_config(self.config), os.path.join(self.root, 'fed'), log=lambda _: None,
                  runtime=self._federation(nodes))

  def _recode_labels(self, bank, splits, mapping):
    for split in splits:
      path = os.path.join(self.config.data.dir, bank, f'{split}.csv')
      with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
      with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([dict(r, default=mapping[r['default']]) for r in rows])

  def test_a_node_whose_files_hold_a_foreign_label_value_refuses_to_start(self):
    from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
    self._own_rows()
    self._recode_labels(self.names[1], ['test'], {'0': 'yes', '1': 'yes'})  # Loaded as all negatives.
    with self.assertRaisesRegex(schema_lib.DataError,
                                rf"{self.names[1]}/test.csv: line 2, label column 'default': 'yes' is neither"):
      self._nodes(shared=False)

  def test_the_coordinator_refuses_nodes_that_code_the_label_with_another_pair(self):
    from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
    # 1 = bad, 2 = good at one bank: consistent in its own files, inverted for the federation.
    self._own_rows()
    self._recode_labels(self.names[2], ['train', 'test'], {'0': '2', '1': '1'})
    federation, config = self._federation(self._nodes(shared=False)), coordinator_config(self.config)
    federation.check(config)
    with self.assertRaisesRegex(schema_lib.DataError, rf"node {self.names[2]}: label column 'default': '2' is"
                                r" neither the positive value '1' nor '0', the negative value 2 source"):
      federation.load(config, program.Paths(self.create_tempdir().full_path), log=lambda _: None)
    with open(self.config.data.schema_file) as f:
      named = dict(json.load(f), negative='0')
    with open(self.config.data.schema_file, 'w') as f:
      json.dump(named, f)
    with self.assertRaisesRegex(schema_lib.DataError, rf"{self.names[2]}/train.csv: line \d+, label column"
                                r" 'default': '2' is neither the positive value '1' nor the negative value '0'"):
      self._nodes(shared=False)

  def test_configs_that_need_rows_in_one_process_are_refused(self):
    config = coordinator_config(self.config)
    config.reference.centralized_epochs = 1
    with self.assertRaisesRegex(errors.ConfigError, 'config.reference.centralized_epochs'):
      coordinator.check(config)

  def test_alert_threshold_and_metrics_are_the_simulations(self):
    # Record-level DP: the threshold is DP, each node adding its noise share.
    config = _alerting_config(self.config.data.dir, self.config.data.schema_file)
    config.federation.secure_aggregation = False  # Updates in the clear: the same model to float rounding.
    simulated, nodes, asked = self.simulated, self._nodes(config), {}

    class Recording(coordinator.InProcessTransport):
      def exchange(self, requests):
        asked.update({n: b for n, b in requests.items() if messages.peek(b).kind == node_lib.SCORES})
        return super().exchange(requests)

    federated = program.run(coordinator_config(config), os.path.join(self.root, 'fed'), log=lambda _: None,
                            runtime=coordinator.Federation(Recording(nodes), key=self.key, node_keys=self.node_public,
                                                           log=lambda _: None))
    for a, b in zip(simulated.model.get_weights(), federated.model.get_weights()):
      self.assertAllClose(a, b, atol=1e-6)
    sim, fed = simulated.metrics['alerts'], federated.metrics['alerts']
    self.assertEqual(program.saved_model.read_metadata(simulated.paths.export)['threshold'],
                     program.saved_model.read_metadata(federated.paths.export)['threshold'])
    for name in self.names:  # Each node's own test rows: exact.
      for key, value in sim['institutions'][name].items():
        if value is None:  # Undefined (nothing alerted): undefined in both.
          self.assertIsNone(fed['institutions'][name][key], msg=f'{name} {key}')
        else:
          self.assertAllClose(fed['institutions'][name][key], value, atol=1e-6, msg=f'{name} {key}')
    self.assertAllClose(fed['pooled']['alert_rate'], sim['pooled']['alert_rate'], atol=1e-9)
    self.assertBetween(fed['pooled']['alert_rate'], 0.05, 0.95)  # A threshold inside the scores.
    for key in ('auprc', 'recall_at_10%', 'f1_at_50%'):  # Pooled from binned scores: to a bin.
      self.assertAllClose(fed['pooled'][key], sim['pooled'][key], atol=0.01)
    self.assertIn('log-score bins', fed['pooled_ranking'])
    # A node answers only the planned DP releases, with the planned noise: a coordinator's request for
    # less noise, another unit cap or an extra pass (fresh noise, unaccounted) is refused; so are
    # statistics without noise or outside their release numbers.
    node, scores = nodes[0], messages.peek(asked[nodes[0].name])

    def refusal(kind, header, arrays=()):
      reply = messages.peek(node.handle(messages.seal(messages.Message(kind, header, arrays), self.key)))
      self.assertEqual(reply.kind, node_lib.REFUSED, header)
      return reply.header['reason']
    for change in ({'stddev': 0.0}, {'cap': 0}, {'release': 5}):
      header = dict(scores.header, histogram={**scores.header['histogram'], **change})
      self.assertIn("is not the plan's", refusal(node_lib.SCORES, header, scores.arrays))
    for params in ({'noise_share': None, 'release': 1}, {'noise_share': 1.0, 'release': 7}):
      header = {'agreement': node.agreement, 'run': 'r', 'index': 0, 'request': 'histograms', 'params': params}
      self.assertIn('answers only the planned releases', refusal(node_lib.STATISTICS, header))
    # Its category values, raw, are never answered under DP statistics (issue 34): only hashed slots' noisy counts.
    header = {'agreement': node.agreement, 'run': 'r', 'index': 0, 'request': 'candidates',
              'params': {'min_count': 1, 'noise_share': 1.0, 'release': 0}}
    self.assertIn('answers only the planned releases', refusal(node_lib.STATISTICS, header))
    space = lambda run: program.saved_model.read_metadata(run.paths.export)['feature_space']
    self.assertEqual(space(federated), space(simulated))
    self.assertIn('hash_buckets', space(federated))

  def test_secure_aggregation_gives_the_simulations_model_a_node_restarted_mid_run_included_never_in_the_clear(self):
    # The default: distributed record-level DP, secure aggregation (and the simulation's alerts).
    config = _alerting_config(self.config.data.dir, self.config.data.schema_file)
    self.assertTrue(config.federation.secure_aggregation)
    simulated, nodes, sent = self.simulated, self._nodes(config), {}
    # A restarted scripts/node.py is a new Node on the same folder, key and noise seed, which has served no
    # request of this run: bank_c's, after round 1. Its rejoining over Flower, killed or stopped, is
    # superlink_test's (echo nodes).
    restarted = _Faulty(copy.deepcopy(config), folder=os.path.join(config.data.dir, 'bank_c'),
                        key=self.node_keys['bank_c'], coordinator_key=self.public, noise_seed=0, log=lambda _: None)
    asked_restarted = []  # Per round.

    class Recording(coordinator.InProcessTransport):
      def secure_exchange(self, requests, **kwargs):
        sent.update(requests)
        asked_restarted.append(self._nodes['bank_c'] is restarted and 'bank_c' in requests)
        return super().secure_exchange(requests, **kwargs)

    transport = Recording(nodes)

    def restart_bank_c_after_round_1(line):
      if line.startswith('round 1/'):
        transport._nodes['bank_c'] = restarted  # pylint: disable=protected-access

    secure = program.run(coordinator_config(config), os.path.join(self.root, 'fed'),
                         log=restart_bank_c_after_round_1, runtime=coordinator.Federation(
                             transport, key=self.key, node_keys=self.node_public, log=lambda _: None))
    self.assertEqual(asked_restarted, [False, True])
    with open(secure.paths.metrics_csv) as f:  # Distributed DP-SGD: a round without its share would stop.
      self.assertEqual([float(r['institutions_in_round']) for r in csv.DictReader(f)], [3.0, 3.0])
    self.assertNotIn('not_evaluated', secure.metrics['federated'])
    for a, b in zip(simulated.model.get_weights(), secure.model.get_weights()):
      self.assertAllClose(a, b, atol=1e-5)  # The restarted node's round 2, noise share included, too.
    self.assertEqual(simulated.metrics['privacy']['epsilon'], secure.metrics['privacy']['epsilon'])
    self.assertIn('which this federation ran (SecAgg+', secure.metrics['privacy']['text'])
    # A sum that would hold fewer noise shares than the plan's census is refused by every node.
    short = nodes[0].handle_secure(sent[nodes[0].name], summed_with=2)
    self.assertEqual(short.update, ())
    self.assertIn("would hold 2 institutions' noise shares, and the plan's noise counts on all 3",
                  messages.peek(short.reply).header['reason'])
    # A node whose config says secure aggregation never sends its update in the clear.
    train = messages.Message(node_lib.TRAIN, {'agreement': nodes[0].agreement, 'run': 'r', 'round': 1})
    reply = messages.unseal(nodes[0].handle(messages.seal(train, self.key)), self.node_public[nodes[0].name],
                            sender=nodes[0].name, kinds=(node_lib.REFUSED,))
    self.assertIn('for the update in the clear', reply.header['reason'])
    config.record_dp.enabled, config.privacy.target_epsilon, config.aggregator.type = False, None, 'median'
    with self.assertRaisesRegex(errors.ConfigError, "config.aggregator.type='median' needs each node"):
      coordinator.check(config)

  def test_client_level_dp_under_secure_aggregation_clips_at_the_nodes_and_equals_the_simulation(self):
    config = copy.deepcopy(self.config)
    config.aggregator.type, config.aggregator.clip = 'gaussian_fixed', 0.05  # Every update clipped.
    config.federation.secure_aggregation = True
    simulated = program.run(config, os.path.join(self.root, 'sim'), log=lambda _: None)
    # Issue 35: bank_b sends NaN (its own check bypassed), which Flower's quantizer turns into -clipping_range:
    # a secure sum beyond the clip is refused, nothing exported, and the same command resumes once it is mended.
    nodes, workdir = self._nodes(config), os.path.join(self.root, 'fed')
    self._fault(nodes[1], poison={'nan': True}, bypass=True)
    with self.assertRaisesRegex(errors.RunFailed, r'round 1: the securely summed updates of 3 nodes have L2 norm'
                                r' [\d.e+]+, beyond the 0.15\d* that config.aggregator.clip 0.05 an update allows:'
                                r' .* nothing is exported, .* \(round 0\): rerun the same command to resume.'):
      program.run(coordinator_config(config), workdir, log=lambda _: None, runtime=self._federation(nodes))
    self.assertFalse(os.path.exists(program.Paths(workdir).export))
    self._mend(nodes[1])  # The same nodes, restarted coordinator: a node may train a round again.
    secure = program.run(coordinator_config(config), workdir, log=lambda _: None, runtime=self._federation(nodes))
    self.assertTrue(os.path.exists(secure.paths.export))
    for a, b in zip(simulated.model.get_weights(), secure.model.get_weights()):
      self.assertAllClose(a, b, atol=1e-5)
    self.assertIn('trusts the coordinator to add the noise to the securely summed updates',
                  secure.metrics['privacy']['text'])

  def test_a_node_lost_after_round_1_leaves_the_ledger_the_evaluation_the_threshold_and_the_alerts(self):
    lost, lines = set(), []

    class Losing(coordinator.InProcessTransport):
      def exchange(self, requests):
        return super().exchange({n: b for n, b in requests.items() if n not in lost})

      def secure_exchange(self, requests, **kwargs):
        return super().secure_exchange({n: b for n, b in requests.items() if n not in lost}, **kwargs)

    def lose_bank_c_after_round_1(line):
      if line.startswith('round 1/'):
        lost.add('bank_c')

    # Issue 35: with an alert threshold too (a DP quantile pooled over the nodes that answer).
    config = copy.deepcopy(self.config)
    config.model.alert_budget, config.evaluation.alert_budgets = 0.3, (0.1, 0.5)
    federation = coordinator.Federation(Losing(self._nodes(config)), key=self.key, node_keys=self.node_public,
                                        log=lines.append, min_nodes=2)
    result = program.run(coordinator_config(config), os.path.join(self.root, 'lost'),
                         log=lose_bank_c_after_round_1, runtime=federation)
    with open(result.paths.metrics_csv) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual([float(r['institutions_in_round']) for r in rows], [3.0, 2.0])  # The ledger's view.
    self.assertEqual(result.metrics['federated']['not_evaluated'], ['bank_c'])
    alerts = result.metrics['alerts']
    self.assertEqual(alerts['not_evaluated'], ['bank_c'])
    self.assertEqual(sorted(alerts['institutions']), ['bank_a', 'bank_b'])
    self.assertBetween(alerts['pooled']['alert_rate'], 0.05, 0.95)
    self.assertTrue(os.path.exists(result.paths.export))
    self.assertIn('scores: node bank_c: no reply', lines)
    # Distributed DP-SGD (the default, securely summed) plans every node's noise share each round:
    # a round without bank_c is discarded, and the run stops where it can resume.
    lost.clear()
    # The default with an alert threshold: test_secure_aggregation's config, and its nodes.
    alerting = _alerting_config(self.config.data.dir, self.config.data.schema_file)
    # The other nodes refuse too: the secure sum would hold fewer noise shares than the census.
    with self.assertRaisesRegex(errors.RunFailed, r'round 2: no update from bank_a, bank_b, bank_c;'
                                r' distributed DP-SGD needs every institution\'s share .* at its last'
                                r' checkpoint \(round 1\)'):
      program.run(coordinator_config(alerting), os.path.join(self.root, 'distributed'),
                  log=lose_bank_c_after_round_1, runtime=coordinator.Federation(
                      Losing(self._nodes(alerting)), key=self.key, node_keys=self.node_public,
                      log=lambda _: None, min_nodes=2))
    with open(program.Paths(os.path.join(self.root, 'distributed')).metrics_csv) as f:
      self.assertEqual([float(r['institutions_in_round']) for r in csv.DictReader(f)], [3.0])
    # Planned for one lost node (each share σ/√2 of 3), the round goes on without bank_c's update.
    lost.clear()
    default = _default_config(self.config.data.dir, self.config.data.schema_file)
    default.record_dp.tolerated_dropouts = 1
    tolerant = program.run(coordinator_config(default), os.path.join(self.root, 'tolerant'),
                           log=lose_bank_c_after_round_1, runtime=coordinator.Federation(
                               Losing(self._nodes(default)), key=self.key, node_keys=self.node_public,
                               log=lambda _: None, min_nodes=2))
    with open(tolerant.paths.metrics_csv) as f:
      self.assertEqual([float(r['institutions_in_round']) for r in csv.DictReader(f)], [3.0, 2.0])
    self.assertIn('a round may lose 1 institution', tolerant.metrics['privacy']['text'])
    share, sigma = map(float, re.search(r'multiplier ([\d.]+)\); the sum carries noise multiplier ([\d.]+)',
                                        tolerant.metrics['privacy']['text']).groups())
    self.assertAllClose(share, sigma / np.sqrt(2), rtol=1e-3)  # Not σ/√3: any two shares carry σ.
    lost.update({'bank_b', 'bank_c'})  # A new run needs every registered node at the start.
    with self.assertRaisesRegex(errors.RunFailed, 'hello: node bank_b: no reply; node bank_c: no reply'):
      program.run(coordinator_config(config), os.path.join(self.root, 'too_few'), log=lambda _: None,
                  runtime=federation)

  def test_a_node_with_a_secret_seed_serves_one_run_and_never_reuses_its_noise(self):
    config = csv_config.get_config()  # Distributed DP-SGD: every node adds noise.
    config.data.dir, config.data.schema_file = self.config.data.dir, self.config.data.schema_file
    config.federated.rounds, config.federated.eval_every = 2, 0
    self.assertIsNone(config.privacy.noise_seed)  # Each node's own secret seed.
    ledgers = {n: os.path.join(self.root, f'{n}_ledger.json') for n in self.names}

    lines = []

    def nodes():
      return [node_lib.Node(config, folder=os.path.join(config.data.dir, n), key=self.node_keys[n],
                            coordinator_key=self.public, noise_seed=7, log=lines.append,
                            ledger=node_lib.Ledger(ledgers[n])) for n in self.names]
    first = program.run(coordinator_config(config), os.path.join(self.root, 'first'), log=lambda _: None,
                        runtime=self._federation(nodes()))
    self.assertBetween(first.metrics['privacy']['epsilon'], 0.99, 1.0)
    # Each node counts its own spending: the coordinator's ε, from the rounds it served.
    spent = [float(line.split('record-level ε = ')[1].split()[0])
             for line in lines if 'all 2 rounds served' in line]
    self.assertLen(spent, 3)
    for value in spent:
      self.assertAlmostEqual(value, first.metrics['privacy']['epsilon'], delta=1e-3)
    for restarted in (False, True):  # A second run would spend a second budget, restarted nodes too.
      with self.assertRaisesRegex(errors.RunFailed, 'already served coordinator run .* budget .* is spent'):
        program.run(coordinator_config(config), os.path.join(self.root, f'second_{restarted}'),
                    log=lambda _: None, runtime=self._federation(nodes()))
    node = nodes()[0]  # Were a ledger removed, a new run would draw fresh noise.
    self.assertNotEqual(node._run_seed('a'), node._run_seed('b'))  # pylint: disable=protected-access
    # Resuming the first run is free: its releases again for the same inputs.
    ledger = node_lib.Ledger(ledgers['bank_a'])
    agreement = nodes()[0].agreement
    run_id = open(os.path.join(self.root, 'first', 'federation_run_id')).read().strip()
    ledger.check(agreement, run_id, 'round 2', self._round_2_digest(ledgers['bank_a'], agreement))
    with self.assertRaisesRegex(messages.Refused, 'round 2 was already answered for another input'):
      ledger.check(agreement, run_id, 'round 2', 'f' * 64)

  def _round_2_digest(self, path, agreement):
    with open(path) as f:
      return json.load(f)[agreement]['released']['round 2']

  def test_training_metrics_add_counts_and_weight_means_by_examples(self):
    combined = coordinator._train_metrics(  # pylint: disable=protected-access
        [{'num_examples': 10.0, 'loss': 1.0}, {'num_examples': 30.0, 'loss': 3.0}])
    self.assertEqual(combined, {'train/num_examples': 40.0, 'train/loss': 2.5})
    self.assertAllClose(np.float32(2.5), combined['train/loss'])



class CanaryAuditTest(_NodesTestCase):
  """The record-level canary audit over the nodes (in this process): the nodes' own DP-SGD is what it audits."""

  def _audit_config(self):
    config = csv_config.get_config()  # Distributed record-level DP-SGD under secure aggregation.
    config.data.dir, config.data.schema_file = self.config.data.dir, self.config.data.schema_file
    # 5 rounds, not 10 (the cost is the build, not the rounds): the noiseless nodes' canaries still give
    # 38 of 40 guesses right, a bound of 1.74 against the claimed 0.92 (3 rounds: 1.30).
    config.federated.rounds, config.record_dp.sampling_rate, config.privacy.noise_seed = 5, 0.5, 0
    config.canary_audit.canaries, config.canary_audit.institution = 200, 'bank_b'
    return config

  def _audit(self, config, nodes, **kwargs):
    return canary_audit.audit_record_level(
        coordinator_config(config), canaries=200, seed=0, log=lambda _: None, runtime=self._federation(nodes),
        workdir=os.path.join(self.create_tempdir().full_path, 'audit'), **kwargs)

  def test_the_federations_audit_is_the_simulations(self):
    config = self._audit_config()
    federated = self._audit(config, self._nodes(config))
    simulated = canary_audit.audit_record_level(config, canaries=200, seed=0, log=lambda _: None)
    self.assertEqual(federated, simulated)
    self.assertFalse(federated.refutes_claim, federated)
    self.assertEqual((federated.unit, federated.canaries, federated.guesses), ('record', 200, 40))

  def test_nodes_without_noise_are_caught_and_a_coordinator_cannot_turn_their_noise_off(self):
    config = self._audit_config()
    honest = {n.name: n for n in self._nodes(config)}  # The class's: test_the_federations_audit's nodes.

    class Noiseless(node_lib.Node):
      """A DP-SGD bug planted for this test: the node adds no noise share."""

      def _build(self, header):
        # The honest node's build (once per class), its training rebuilt without the noise.
        work = honest[self.name]._work(header)  # pylint: disable=protected-access
        plan = dataclasses.replace(work.plan, record=canary_audit._unchecked(  # pylint: disable=protected-access
            work.plan.record, noise_multiplier=0.0))
        training = config_builders.build_training(self._config, self._choices, plan, features.FeatureSpace.from_dict(
            header['space'], self._schema), self._schema, side=config_builders.Side.NODE)
        return dataclasses.replace(work, plan=plan, parts=training.parts)

    nodes = [Noiseless(config, folder=os.path.join(config.data.dir, n), key=self.node_keys[n],
                       coordinator_key=self.public, noise_seed=0, log=lambda _: None) for n in self.names]
    broken = self._audit(config, nodes)
    self.assertTrue(broken.refutes_claim, broken)
    # The coordinator's own sabotage is a plan with less noise than the config promises: refused.
    with self.assertRaisesRegex(errors.RunFailed, 'noise'):
      self._audit(config, self._nodes(config), sabotage=canary_audit.Sabotage.NOISE_OFF)

  def test_client_level_canaries_at_the_coordinator_stand_under_a_correct_claim_and_catch_noise_off(self):
    config = copy.deepcopy(self.config)  # Client-level DP (smoke), without secure aggregation.
    config.aggregator.type, config.aggregator.clip, config.privacy.target_epsilon = 'gaussian_fixed', 1.0, 1.0
    # The simulation's client-level model, half its rounds (the cost is the build, not the rounds):
    # noise off, 40 of 40 guesses right (bound 2.5 against ε = 1); on, the bound is 0.13.
    config.model.hidden_units, config.federated.rounds = (64,), 5
    nodes = self._nodes(config)
    for sabotage, refuted in ((canary_audit.Sabotage.NONE, False), (canary_audit.Sabotage.NOISE_OFF, True)):
      result = canary_audit.audit_client_level(
          coordinator_config(config), canaries=200, seed=0, sabotage=sabotage, log=lambda _: None,
          runtime=self._federation(nodes), workdir=os.path.join(self.create_tempdir().full_path, 'audit'))
      self.assertEqual((result.unit, result.refutes_claim), ('institution', refuted), result)

  def test_the_holding_node_must_be_named(self):
    config = self._audit_config()
    config.canary_audit.institution = ''
    with self.assertRaisesRegex(errors.ConfigError, 'config.canary_audit.institution'):
      coordinator.check(config)


class ScriptTest(tf.test.TestCase):

  def test_a_bad_row_or_no_registered_node_is_one_message_before_any_connection(self):
    from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
    root = self.create_tempdir().full_path
    config = helpers.smoke_config(root)
    data_dir, schema_file = config.data.dir, config.data.schema_file
    with open(os.path.join(data_dir, 'bank_b', 'train.csv'), 'a') as f:
      f.write('1e200,10.0,A,0\n')
    os.makedirs(os.path.join(root, 'no_nodes'))
    tls = credentials.write_tls(os.path.join(root, 'pki'), hosts=['127.0.0.1'])
    node_key, _ = credentials.write_node_key(os.path.join(root, 'pki'), 'bank_b')
    private, public = signing.generate_keys(os.path.join(root, 'pki', 'coordinator'))
    # The bad row, in this process (scripts/node.py builds this Node before it connects; its refusals are
    # one line, as node_with_two_sources shows): each script's own CLI below costs a TensorFlow import.
    with self.assertRaisesRegex(schema_lib.DataError, r"bank_b/train.csv: line 62, column 'amount': '1e200' is beyond"):
      node_lib.Node(config, folder=os.path.join(data_dir, 'bank_b'), key=messages.load_private_key(node_key),
                    coordinator_key=messages.load_public_key(public), noise_seed=0, log=lambda _: None)
    common = ['--config=configs/csv.py:smoke', f'--config.data.schema_file={schema_file}',
              f'--ca={tls.ca_certificate}']
    runs = {
        'coordinator': ['scripts/coordinator.py', *common, f'--workdir={root}/run', f'--key={private}',
                        f'--nodes={root}/no_nodes'],
        'node_with_two_sources': ['scripts/node.py', *common, f'--data_dir={data_dir}/bank_b', f'--workdir={root}/n',
                                  '--transactions=t.csv', f'--key={node_key}', f'--coordinator_key={public}'],
    }
    expected = {'coordinator': r'no_nodes: no <institution>.pub keys',
                'node_with_two_sources': r'error: give the node its rows: --data_dir=.*, or --transactions='}
    for name, argv in runs.items():
      done = subprocess.run([sys.executable, *argv], cwd=_ROOT, capture_output=True, text=True, timeout=600)
      self.assertNotEqual(done.returncode, 0, name)
      self.assertRegex(done.stderr, expected[name])
      self.assertNotIn('Traceback', done.stderr)


  def test_an_unreachable_driver_api_is_one_message(self):
    # What scripts/coordinator.py prints after `error: ` (its line before, stamped, is kits_test's).
    from tffaml.consortium import flower  # pylint: disable=g-import-not-at-top
    from tffaml.consortium import local  # pylint: disable=g-import-not-at-top
    tls = credentials.write_tls(os.path.join(self.create_tempdir().full_path, 'pki'), hosts=['127.0.0.1'])
    with open(tls.ca_certificate, 'rb') as f:
      ca = f.read()
    closed = f'127.0.0.1:{local.free_port()}'  # Nothing listens there.
    with self.assertRaisesRegex(errors.RunFailed, f"cannot reach the SuperLink's Driver API at {closed}: .*;"
                                r' start flower-superlink'):
      flower.FlowerTransport(closed, root_certificates=ca, node_keys={}, log=lambda _: None)


class AmlNodesTest(tf.test.TestCase):
  """Banks' nodes reading an AMLworld file, each its own bank's transactions."""

  def test_bank_nodes_train_the_simulations_model_and_alert_threshold(self):
    from configs import aml  # pylint: disable=g-import-not-at-top
    from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
    from tffaml.data import transaction_generator  # pylint: disable=g-import-not-at-top
    root = self.create_tempdir().full_path
    path = os.path.join(root, 'transactions.csv')
    # Two banks, not four: each bank's node builds its own models (about 12 CPU-s), the rows cost little.
    transaction_generator.generate(path, num_banks=2, num_transactions=4000, seed=1, laundering_rate=0.01, days=10)
    config = aml.get_config('smoke')  # Client-level DP: the coordinator's noise, seeded.
    config.data.path, config.privacy.noise_seed, config.federated.eval_every = path, 0, 0
    config.reference.centralized_epochs = 0  # Pools the rows: the simulation's alone.
    config.federation.secure_aggregation = False  # Updates in the clear: the same model to float rounding.
    simulated = program.run(config, os.path.join(root, 'sim'), log=lambda _: None)
    names = [s['institution'] for s in simulated.metrics['institutions']]
    self.assertLen(names, 2)
    key, public, node_keys, node_public = _keys(root, names)
    nodes = [node_lib.Node(config, bank=n[len('bank_'):], key=node_keys[n], coordinator_key=public, noise_seed=0,
                           log=lambda _: None) for n in names]
    federated = program.run(coordinator_config(config), os.path.join(root, 'fed'), log=lambda _: None,
                            runtime=coordinator.Federation(coordinator.InProcessTransport(nodes), key=key,
                                                           node_keys=node_public, log=lambda _: None))
    for a, b in zip(simulated.model.get_weights(), federated.model.get_weights()):
      self.assertAllClose(a, b, atol=1e-6)
    self.assertEqual(federated.metrics['institutions'], simulated.metrics['institutions'])
    threshold = program.saved_model.read_metadata(simulated.paths.export)['threshold']
    self.assertEqual(program.saved_model.read_metadata(federated.paths.export)['threshold'], threshold)
    self.assertEqual(program.saved_model.read_metadata(federated.paths.export)['serving'],  # Raw AMLworld fields.
                     program.saved_model.read_metadata(simulated.paths.export)['serving'])
    self.assertAllClose(federated.metrics['alerts']['pooled']['alert_rate'],
                        simulated.metrics['alerts']['pooled']['alert_rate'], atol=1e-9)
    # Each bank picks its validation threshold on its own exact scores; the pooled F1 sums their counts.
    fed, sim = federated.metrics['alerts'], simulated.metrics['alerts']
    self.assertIsNotNone(fed['pooled']['f1_at_validation_threshold'])
    for scope, expected in [(fed['pooled'], sim['pooled']),
                            *((fed['institutions'][n], sim['institutions'][n]) for n in names)]:
      self.assertEqual(scope['f1_at_validation_threshold'] is None, expected['f1_at_validation_threshold'] is None)
      if expected['f1_at_validation_threshold'] is not None:
        self.assertAllClose(scope['f1_at_validation_threshold'], expected['f1_at_validation_threshold'], atol=1e-9)
    # A bank the file does not hold, and one without enough transactions, are refused before any work.
    with self.assertRaisesRegex(schema_lib.DataError, "no transaction of bank 'nope'"):
      node_lib.own_rows(config, None, bank='nope')
    config.data.min_rows = 100_000
    with self.assertRaisesRegex(schema_lib.DataError, r'the agreed config needs 100000 .*config.data.min_rows'):
      node_lib.own_rows(config, None, bank=names[0][len('bank_'):])


class HostileNodesTest(_NodesTestCase):
  """Issue 35: a node's claimed weight, its training metrics' keys, a non-finite update, a secure sum beyond the clip.

  A client-level secure sum beyond the clip, and its resumed run: FederationTest's client-level DP.
  """

  def _run(self, config, faults: dict, workdir: str, lines: list, node_lines=None):
    """A 2-round federation of the config's nodes, those named in `faults` with `faults[name]` (`_Faulty`'s)."""
    nodes = self._nodes(config)
    for node in nodes:
      self._fault(node, log=node_lines.append if node_lines is not None else None, **faults.get(node.name, {}))
    federation = coordinator.Federation(coordinator.InProcessTransport(nodes), key=self.key,
                                        node_keys=self.node_public, log=lines.append)
    try:
      return program.run(coordinator_config(config), os.path.join(self.root, workdir), log=lambda _: None,
                         runtime=federation)
    finally:
      for node in nodes:
        self._mend(node)

  def _in_round(self, result):
    with open(result.paths.metrics_csv) as f:
      return [float(r['institutions_in_round']) for r in csv.DictReader(f)]

  def test_a_weight_beyond_the_census_entry_or_lacking_metric_keys_is_refused_and_the_round_goes_on(self):
    config = copy.deepcopy(self.config)
    config.aggregator.type, config.federated.weighting, config.privacy.target_epsilon = 'mean', 'examples', None
    lines = []
    # One run, two faults: bank_b's weight, and bank_c's training metrics lacking keys.
    result = self._run(config, {'bank_b': {'poison': {'update_weight': 1e9}},
                                'bank_c': {'change': lambda m: {'loss': m['loss']}}}, 'weight', lines)
    refused = [l for l in lines if 'node bank_b: it claims update weight 1000000000.0, beyond its census entry' in l]
    self.assertLen(refused, 2, lines)  # One line a round, naming the node.
    self.assertIn('its update is refused and dropped from the round', refused[0])
    refused = [l for l in lines if l.startswith('round 1: node bank_c: its training metrics lack ')]
    self.assertLen(refused, 1, lines)
    self.assertIn("unlike the other nodes' (it runs other client code than the agreed): its update is refused"
                  ' and dropped from the round.', refused[0])
    self.assertEqual(self._in_round(result), [1.0, 1.0])

  def test_a_node_refuses_to_send_nan_and_the_coordinator_drops_one_that_does(self):
    lines, node_lines = [], []
    hostile = {'bank_a': {'poison': {'nan': True}},  # Diverged: it refuses to send.
               'bank_b': {'poison': {'nan': True}, 'bypass': True}}  # Modified: it sends NaN anyway.
    result = self._run(self.config, hostile, 'nan', lines, node_lines)
    self.assertIn('refused a request: bank_a: round 1: its update or training metrics hold non-finite values'
                  ' (NaN or Inf', '\n'.join(node_lines))
    self.assertIn('round 1: node bank_b: its update or metrics hold non-finite values (NaN or Inf): its update'
                  ' is refused and dropped from the round.', lines)
    self.assertTrue(any(l.startswith('train: node bank_a: refused: bank_a: round 1:') for l in lines), lines)
    self.assertEqual(self._in_round(result), [1.0, 1.0])
    for w in result.model.get_weights():
      self.assertTrue(np.all(np.isfinite(w)))

  def test_a_reply_with_extra_metric_keys_is_refused_in_one_line(self):
    # Issue 35: dropped from the round, not a KeyError. The first node (the earliest reply): its keys are
    # still outvoted. A node lacking keys: the weight test.
    lines = []
    result = self._run(self.config, {'bank_a': {'change': lambda m: {**m, 'bogus': 1.0}}}, 'bogus', lines)
    refused = [l for l in lines if l.startswith('round 1: node bank_a: its training metrics add bogus')]
    self.assertLen(refused, 1, lines)
    self.assertIn("unlike the other nodes' (it runs other client code than the agreed): its update is refused"
                  ' and dropped from the round.', refused[0])
    self.assertEqual(self._in_round(result), [2.0, 2.0])

  def test_a_nan_under_distributed_dp_sgd_and_secagg_is_refused(self):
    config = csv_config.get_config()  # The default: distributed record-level DP-SGD, secure aggregation.
    config.data.dir, config.data.schema_file = self.config.data.dir, self.config.data.schema_file
    config.federated.rounds, config.federated.eval_every, config.privacy.noise_seed = 2, 0, 0
    # A NaN reaches the sum as -clipping_range (Flower's quantizer): beyond the clip's and the noise's bound.
    with self.assertRaisesRegex(errors.RunFailed, r"round 1: the securely summed updates of 3 nodes have L2 norm"
                                r" [\d.]+, beyond the [\d.]+ that DP-SGD's clip 1 a unit, noise multiplier"):
      self._run(config, {'bank_b': {'poison': {'nan': True}, 'bypass': True}}, 'distributed', [])
    self.assertFalse(os.path.exists(program.Paths(os.path.join(self.root, 'distributed')).export))



class TimestampTest(tf.test.TestCase):
  """Issue 35: every line of the coordinator's and the nodes' logs starts with its UTC time.

  The scripts' own lines, stamped: kits_test's federation, whose parties are real processes.
  """

  def test_stamped_prefixes_each_line(self):
    from tffaml.consortium import logs  # pylint: disable=g-import-not-at-top
    import datetime  # pylint: disable=g-import-not-at-top
    when = datetime.datetime(2026, 12, 6, 21, 15, 42, 900, tzinfo=datetime.timezone.utc)
    self.assertEqual(logs.stamped('\nmodel: m\nmetrics: x', now=when),
                     '\n2026-12-06T21:15:42Z model: m\n2026-12-06T21:15:42Z metrics: x')


class LostNodeAlertsTest(_NodesTestCase):
  """Issue 35: a lost node and the DP alert threshold (a run losing one: FederationTest's lost node)."""

  def test_tolerated_dropouts_with_a_dp_alert_threshold_is_refused_before_any_work(self):
    config = coordinator_config(_alerting_config(self.config.data.dir, self.config.data.schema_file))
    coordinator.check(config)  # Every node's share, every round: accepted.
    config.record_dp.tolerated_dropouts = 1
    with self.assertRaisesRegex(errors.ConfigError, r'^config.record_dp.tolerated_dropouts=1 lets a round lose'
                                r' nodes, but the DP alert threshold of config.model.alert_budget=0.3 sums every'
                                r" node's noise share .*: set config.record_dp.tolerated_dropouts=0, or"):
      coordinator.check(config)


if __name__ == '__main__':
  tf.test.main()


class DeliveryTest(_NodesTestCase):
  """Issue 35: the signed model reaches every bank with its own metrics and the statement; status and answers logs."""

  def _kept_nodes(self, config, lines=None):
    """The config's nodes, each keeping deliveries and its answers log in its own workdir under self.root."""
    from tffaml.consortium import delivery  # pylint: disable=g-import-not-at-top
    from tffaml.consortium import status  # pylint: disable=g-import-not-at-top
    public_file = os.path.join(self.class_root, 'coordinator', signing.PUBLIC_KEY_FILE)
    log = (lambda _: None) if lines is None else lines.append
    return [_Faulty(copy.deepcopy(config), folder=os.path.join(config.data.dir, n), key=self.node_keys[n],
                    coordinator_key=self.public, noise_seed=0, log=log,
                    inbox=delivery.Inbox(os.path.join(self.root, 'node_' + n), public_file),
                    answers=status.AnswerLog(os.path.join(self.root, 'node_' + n, status.ANSWERS_FILE)))
            for n in self.names]

  def _answers(self, name):
    with open(os.path.join(self.root, 'node_' + name, 'answers.jsonl')) as f:
      return [json.loads(line) for line in f]

  def test_every_bank_keeps_the_verified_model_its_own_metrics_and_the_statement_and_logs_its_answers(self):
    from tffaml.consortium import status  # pylint: disable=g-import-not-at-top
    # The default: distributed record-level DP-SGD (each node noises its update), secure aggregation.
    config = _default_config(self.config.data.dir, self.config.data.schema_file)
    nodes, lines = self._kept_nodes(config), []
    federation = coordinator.Federation(coordinator.InProcessTransport(nodes), key=self.key,
                                        node_keys=self.node_public, log=lines.append)
    result = program.run(coordinator_config(config), os.path.join(self.root, 'fed'), log=lambda _: None,
                         runtime=federation)
    private = os.path.join(self.class_root, 'coordinator', signing.PRIVATE_KEY_FILE)
    public = os.path.join(self.class_root, 'coordinator', signing.PUBLIC_KEY_FILE)
    kept = coordinator.deliver(federation, result, key_file=private)
    self.assertEqual(sorted(kept), self.names)
    signing.verify(result.paths.export, public)  # The coordinator's own export is signed (scripts/verify.py's check).
    # Status: the last round's, in status.json and one line a round.
    with open(os.path.join(result.paths.root, 'status.json')) as f:
      state = json.load(f)
    self.assertEqual((state['round'], state['rounds'], state['state']), (2, 2, 'trained'))
    self.assertEqual(state['nodes'], {'joined': self.names, 'asked': self.names, 'answered': self.names,
                                      'dropped': []})
    self.assertAllClose(state['epsilon']['record'], result.metrics['privacy']['epsilon'], rtol=1e-6)
    self.assertEqual([l.split(':')[1] for l in lines if l.startswith('status: ')], [' round 1/2', ' round 2/2'])
    for node in nodes:
      home = os.path.join(self.root, 'node_' + node.name, 'model')
      signing.verify(os.path.join(home, 'export'), public)
      with open(os.path.join(home, 'metrics.json')) as f:
        own = json.load(f)
      self.assertEqual(own['federated'], result.metrics['federated']['institutions'][node.name])
      others = [n for n in self.names if n != node.name]
      self.assertFalse([n for n in others if n in json.dumps(own)], own)  # No other bank's figures.
      with open(os.path.join(home, 'privacy.txt')) as f, open(result.paths.privacy) as g:
        self.assertEqual(f.read(), g.read())
      # Its answers: every request, appended; its updates noised, ε growing by its own count.
      answers = self._answers(node.name)
      trains = [a for a in answers if a['kind'] == 'train']
      self.assertEqual([(a['round'], a['noised']) for a in trains], [(1, True), (2, True)])
      self.assertLess(trains[0]['epsilon'], trains[1]['epsilon'])
      self.assertAllClose(trains[1]['epsilon'], result.metrics['privacy']['epsilon'], rtol=1e-6)
      self.assertFalse([a for a in answers if a['kind'] == 'evaluate' and a['noised']])
      self.assertEqual({a['run'] for a in answers if a['kind'] != 'hello'}, {trains[0]['run']})  # One run.
      self.assertEqual(answers[-1]['kind'], 'deliver')
    # A bank scores with the delivered package as it would run it.
    bank = self.names[0]
    done = subprocess.run(
        [sys.executable, 'scripts/score.py', f'--model_dir={self.root}/node_{bank}/model/export',
         f'--public_key={public}', f'--input={self.config.data.dir}/{bank}/test.csv', f'--output={self.root}/s.csv'],
        cwd=_ROOT, capture_output=True, text=True, timeout=600)
    self.assertEqual(done.returncode, 0, done.stderr)
    self.assertRegex(done.stdout, r'scored \d+ rows')
    # Delivered again (a rerun): the first stays. Another run's model is refused, the kept one untouched.
    path = os.path.join(self.root, f'node_{bank}', 'model', 'delivery.json')
    with open(path) as f:
      receipt = f.read()
    self.assertIn('already kept in', coordinator.deliver(federation, result, key_file=private)[bank])
    with open(os.path.join(result.paths.export, 'metadata.json'), 'a') as f:  # Another run's model.
      f.write('\n')
    federation.run_id, lines[:] = 'f' * 32, []
    self.assertEqual(coordinator.deliver(federation, result, key_file=private), {})
    self.assertTrue(any(f'deliver: node {bank}: refused: {bank}: ' in l and 'already holds another model' in l
                        for l in lines), lines)
    with open(path) as f:
      self.assertEqual(f.read(), receipt)
    # The answers log survives a restart: read back, it counts the rounds trained; never rewritten.
    before = open(os.path.join(self.root, f'node_{bank}', 'answers.jsonl')).read()
    restarted = status.AnswerLog(os.path.join(self.root, f'node_{bank}', 'answers.jsonl'))
    self.assertEqual(restarted.rounds_trained('f' * 32), 0)  # The refused run trained nothing.
    self.assertEqual(restarted.rounds_trained(trains[0]['run']), 2)
    restarted.append({'kind': 'hello'})
    self.assertTrue(open(os.path.join(self.root, f'node_{bank}', 'answers.jsonl')).read().startswith(before))

  def test_a_package_that_does_not_verify_is_not_kept(self):
    from tffaml.consortium import delivery  # pylint: disable=g-import-not-at-top
    node = self._kept_nodes(self.config)[0]
    export = os.path.join(self.root, 'export')
    helpers.export_rate_model(export)
    with self.assertRaisesRegex(errors.InputError, r'export: not signed \(no tffaml-signature.json\); the'
                                ' coordinator signs its export before delivering it'):
      delivery.package(export)
    signing.sign(export, os.path.join(self.class_root, 'coordinator', signing.PRIVATE_KEY_FILE))
    header, arrays = delivery.package(export)
    small = mock.patch.object(delivery, 'MAX_PACKAGE_BYTES', sum(a.nbytes for a in arrays) - 1)
    with small, self.assertRaisesRegex(errors.InputError, r'bytes, beyond the [\d,]+ one Flower message carries'
                                       r' \(flwr.common.GRPC_MAX_MESSAGE_LENGTH\)'):
      delivery.package(export)
    index = header['files'].index('saved_model.pb')
    arrays = list(arrays)
    arrays[index] = arrays[index].copy()
    arrays[index][-1] ^= 1  # The coordinator's message is signed, yet the package is not what it signed.
    header = {**header, 'agreement': node.agreement, 'run': 'r', 'institution': node.name, 'metrics': {},
              'privacy': ''}
    reply = messages.peek(node.handle(messages.seal(messages.Message(node_lib.DELIVER, header, tuple(arrays)),
                                                    self.key)))
    self.assertEqual(reply.kind, node_lib.REFUSED)
    self.assertRegex(reply.header['reason'], r"the delivered model does not verify against the coordinator's key"
                                             r" .*file 'saved_model.pb' was modified.*nothing was kept")
    self.assertFalse(os.path.exists(os.path.join(self.root, f'node_{node.name}', 'model')))
    self.assertEqual([os.listdir(os.path.join(self.root, f'node_{node.name}'))], [['answers.jsonl']])
    other = dict(header, institution=self.names[1])  # Another bank's delivery (its metrics): not kept here.
    reply = messages.peek(node.handle(messages.seal(messages.Message(node_lib.DELIVER, other, tuple(arrays)),
                                                    self.key)))
    self.assertIn(f"the delivery is addressed to '{self.names[1]}'", reply.header['reason'])
    for bad in (['../escape'], ['/abs']):  # A path that would leave the package.
      header2 = dict(header, files=bad + header['files'][1:])
      reply = messages.peek(node.handle(messages.seal(messages.Message(node_lib.DELIVER, header2, tuple(arrays)),
                                                      self.key)))
      self.assertIn('the delivered package is malformed', reply.header['reason'])

  def test_status_names_the_node_dropped_from_a_round(self):
    lost, lines = set(), []

    class Losing(coordinator.InProcessTransport):
      def exchange(self, requests):
        return super().exchange({n: b for n, b in requests.items() if n not in lost})

    def lose_bank_c_after_round_1(line):
      if line.startswith('round 1/'):
        lost.add('bank_c')
    nodes = self._nodes()
    federation = coordinator.Federation(Losing(nodes), key=self.key, node_keys=self.node_public,
                                        log=lines.append, min_nodes=2)
    result = program.run(coordinator_config(self.config), os.path.join(self.root, 'lost'),
                         log=lose_bank_c_after_round_1, runtime=federation)
    with open(os.path.join(result.paths.root, 'status.json')) as f:
      state = json.load(f)
    self.assertEqual(state['nodes']['dropped'], ['bank_c'])
    self.assertEqual(state['nodes']['answered'], ['bank_a', 'bank_b'])
    self.assertIn('institution', state['epsilon'])  # The smoke config's client-level DP.
    self.assertRegex(state['eta'], r'^\d\d:\d\d:\d\d$')
    # Every node built its client work for the plan before round 1 (nodes in this process: in turn),
    # and traced its evaluation there for every batch size: the rounds traced nothing more.
    self.assertEqual(len([l for l in lines if l.startswith('prepare: 3 of 3 nodes built their client work')]), 1)
    for node in nodes:
      work, = node._works.values()  # pylint: disable=protected-access
      self.assertEqual(work.evaluate._forward.experimental_get_tracing_count(), 1)  # pylint: disable=protected-access
    status_lines = [l for l in lines if l.startswith('status: ')]
    self.assertRegex(status_lines[0], r'^status: round 1/2: 3 nodes joined, 3 of 3 answered, dropped: none \|'
                                      r' ε\(institution\)=[\d.]+ \| ETA ')
    self.assertIn('status: round 2/2: 3 nodes joined, 2 of 3 answered, dropped: bank_c', status_lines[1])

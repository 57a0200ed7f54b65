import json
import os
import subprocess
import sys
import tempfile

from absl.testing import parameterized
import tensorflow as tf

from configs import csv as csv_config
from tests import helpers
from tffaml import errors
from tffaml.privacy import one_run
from tffaml.studies import canary_audit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _FederationTest(parameterized.TestCase, tf.test.TestCase):
  """A small federation written once per class."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir, cls.schema_file = helpers.write_federation(tempfile.mkdtemp())


class ClientLevelAuditTest(_FederationTest):

  def test_200_canaries_cannot_refute_a_claim_of_4(self):
    # Every one of the 40 guesses right bounds ε at 2.55: the audits here
    # check a correct mechanism at ε = 1, the only claim they could refute.
    cap = one_run.epsilon_lower_bound(canaries=200, guesses=40, correct=40, delta=1e-5)
    self.assertBetween(cap, 1.0, 4.0)

  def _config(self, epsilon):
    config = csv_config.get_config('smoke')
    config.data.dir, config.data.schema_file = self.data_dir, self.schema_file
    config.aggregator.type, config.aggregator.clip = 'gaussian_fixed', 1.0
    config.privacy.target_epsilon = epsilon
    config.model.hidden_units = (64,)  # Room for 200 nearly orthogonal canary directions.
    config.federated.rounds = 10
    return config

  def _audit(self, epsilon, sabotage):
    return canary_audit.audit_client_level(self._config(epsilon), canaries=200, seed=0, sabotage=sabotage,
                                           log=lambda _: None)

  @parameterized.parameters(canary_audit.Sabotage.NOISE_OFF, canary_audit.Sabotage.CLIPPING_OFF)
  def test_a_broken_mechanism_is_caught(self, sabotage):
    result = self._audit(1.0, sabotage)
    self.assertAlmostEqual(result.claimed_epsilon, 1.0, places=2)
    self.assertTrue(result.refutes_claim, result)
    self.assertGreater(result.lower_bound, 2.0)

  def test_a_correct_mechanism_stays_under_its_claim(self):
    # At ε = 1 only: 200 canaries cannot refute a claim of 4 or more
    # (test_200_canaries_cannot_refute_a_claim_of_4), so runs there could not fail.
    result = self._audit(1.0, canary_audit.Sabotage.NONE)
    self.assertFalse(result.refutes_claim, result)
    self.assertEqual((result.canaries, result.guesses), (200, 40))

  def test_only_client_level_dp_with_a_fixed_clip_is_audited(self):
    config = self._config(1.0)
    config.aggregator.type = 'gaussian_adaptive'
    with self.assertRaisesRegex(errors.ConfigError, "config.aggregator.type='gaussian_fixed'"):
      canary_audit.audit_client_level(config, canaries=10, seed=0, log=lambda _: None)


class RecordLevelAuditTest(_FederationTest):

  def _config(self, epsilon):
    config = csv_config.get_config()  # Distributed record-level DP-SGD, the default.
    config.data.dir, config.data.schema_file = self.data_dir, self.schema_file
    config.privacy.target_epsilon = epsilon
    config.record_dp.sampling_rate = 0.5
    # A clip well below the unclipped canaries' gradient, so that turning
    # clipping off shows (at the default rule's clip, 2 here, the bound was 1.5).
    config.record_dp.clip = 1.0
    config.federated.rounds = 10
    return config

  def _audit(self, epsilon, sabotage):
    return canary_audit.audit(self._config(epsilon), canaries=200, seed=0, sabotage=sabotage, log=lambda _: None)

  @parameterized.parameters(canary_audit.Sabotage.NOISE_OFF, canary_audit.Sabotage.CLIPPING_OFF)
  def test_a_broken_mechanism_is_caught(self, sabotage):
    result = self._audit(1.0, sabotage)
    self.assertEqual(result.unit, 'record')
    # The claim is the canaries' institution's ε from training alone: under the
    # target, which also pays for the DP feature statistics.
    self.assertBetween(result.claimed_epsilon, 0.5, 1.0)
    self.assertTrue(result.refutes_claim, result)
    self.assertGreater(result.lower_bound, 2.0)

  def test_a_correct_mechanism_stays_under_its_claim(self):
    # At ε = 1 only: 200 canaries cannot refute a claim of 4 or more
    # (test_200_canaries_cannot_refute_a_claim_of_4), so runs there could not fail.
    result = self._audit(1.0, canary_audit.Sabotage.NONE)
    self.assertFalse(result.refutes_claim, result)
    self.assertEqual((result.canaries, result.guesses), (200, 40))

  @parameterized.parameters((canary_audit.Sabotage.NOISE_OFF, True), (canary_audit.Sabotage.NONE, False))
  def test_account_level(self, sabotage, refuted):
    schema_file = os.path.join(self.create_tempdir().full_path, 'schema_with_unit.json')
    with open(schema_file, 'w') as f:
      json.dump(dict(helpers.SCHEMA, unit='account'), f)  # 12 accounts of 5 rows in each institution.
    config = self._config(1.0)
    config.data.schema_file = schema_file
    result = canary_audit.audit(config, canaries=200, seed=0, sabotage=sabotage, log=lambda _: None)
    self.assertEqual(result.unit, 'account')
    self.assertEqual(result.refutes_claim, refuted, result)

  def test_only_distributed_dp_sgd_of_a_classifier_is_audited(self):
    config = self._config(1.0)
    config.record_dp.mode = 'local'
    with self.assertRaisesRegex(errors.ConfigError, "config.record_dp.mode='distributed'"):
      canary_audit.audit(config, canaries=10, seed=0, log=lambda _: None)
    config = self._config(1.0)
    config.model.name, config.model.loss, config.model.alert_budget = 'autoencoder', 'reconstruction', 0.01
    with self.assertRaisesRegex(errors.ConfigError, "config.model.name='autoencoder' is not one"):
      canary_audit.audit(config, canaries=10, seed=0, log=lambda _: None)
    config = self._config(1.0)
    config.canary_audit.institution = 'bank_z'
    with self.assertRaisesRegex(errors.ConfigError, "config.canary_audit.institution='bank_z' is none of"):
      canary_audit.audit(config, canaries=10, seed=0, log=lambda _: None)


class ScriptTest(tf.test.TestCase):

  def _run(self, *flags):
    root = self.create_tempdir().full_path
    data_dir, schema_file = helpers.write_federation(root)
    output = os.path.join(root, 'audit.json')
    done = subprocess.run(
        [sys.executable, 'scripts/canary_audit.py', '--config=configs/csv.py', f'--config.data.dir={data_dir}',
         f'--config.data.schema_file={schema_file}', '--config.record_dp.sampling_rate=0.5',
         '--config.federated.rounds=5', '--canaries=100', f'--output={output}', *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    return done, output

  def test_a_refuted_claim_exits_1_with_the_bound_and_writes_json(self):
    done, output = self._run('--sabotage=noise_off')
    self.assertEqual(done.returncode, 1, done.stderr[-3000:])
    self.assertIn('DP per record over 5 rounds', done.stdout)
    self.assertIn('the audit REFUTES the claim', done.stdout)
    with open(output) as f:
      report = json.load(f)
    self.assertGreater(report['lower_bound'], report['claimed_epsilon'])
    self.assertEqual((report['sabotage'], report['unit']), ('noise_off', 'record'))

  def test_a_mechanism_it_cannot_audit_is_refused_in_one_line(self):
    done, output = self._run('--config.record_dp.mode=local')
    self.assertEqual(done.returncode, 2, done.stderr[-3000:])
    self.assertIn("config.record_dp.mode='distributed'", done.stderr)
    self.assertNotIn('Traceback', done.stderr)
    self.assertFalse(os.path.exists(output))


if __name__ == '__main__':
  tf.test.main()

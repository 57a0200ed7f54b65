import json
import math
import os
import subprocess
import sys
import tempfile

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from configs import csv as csv_config
from tests import helpers
from tffaml import errors
from tffaml.privacy import one_run
from tffaml.training import canary_audit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class OneRunBoundTest(tf.test.TestCase):

  def test_p_value_by_hand(self):
    # 10 of 10 right at ε = 0: a fair coin ten times, 1/1024.
    self.assertAlmostEqual(one_run.p_value(canaries=20, guesses=10, correct=10, epsilon=0.0, delta=0.0),
                           1 / 1024)
    # r = 2, v = 2, ε = 0, δ = 0.01, m = 4: P[B >= 2] = 1/4; the δ term's max over
    # i = 1 (P[B = 1] / 1 = 1/2) and i = 2 (P[B <= 1] / 2 = 3/8) is 1/2: 1/4 + 2 * 4 * 0.01 / 2.
    self.assertAlmostEqual(one_run.p_value(canaries=4, guesses=2, correct=2, epsilon=0.0, delta=0.01), 0.29)

  def test_lower_bound_by_hand(self):
    # 10 of 10 right refutes every ε with q^10 < 0.05: q = 0.05^0.1, ε = log(q / (1 - q)).
    q = 0.05 ** 0.1
    bound = one_run.epsilon_lower_bound(canaries=100, guesses=10, correct=10, delta=0.0)
    self.assertAlmostEqual(bound, math.log(q / (1 - q)), places=5)
    self.assertEqual(one_run.epsilon_lower_bound(canaries=100, guesses=10, correct=5, delta=0.0), 0.0)
    with_delta = one_run.epsilon_lower_bound(canaries=100, guesses=10, correct=10, delta=1e-3)
    self.assertLess(with_delta, bound)  # δ can only weaken the refutation.

  def test_guesses_take_the_ends(self):
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.3, 0.7, 0.4, 0.6, 0.0])
    included = np.array([1, 0, 1, 0, 0, 1, 1, 0, 0, 1], bool)
    # k = 2: "in" for 0.9 (in) and 0.8 (out), "out" for 0.0 (in) and 0.1 (out): 2 of 4 right.
    self.assertEqual(one_run.guess(scores, included, fraction=0.2),
                     one_run.Guesses(canaries=10, guesses=4, correct=2))


class CanaryAuditTest(parameterized.TestCase, tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir, cls.schema_file = helpers.write_federation(tempfile.mkdtemp())

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

  @parameterized.parameters(1.0, 4.0, 8.0)
  def test_a_correct_mechanism_stays_under_its_claim(self, epsilon):
    result = self._audit(epsilon, canary_audit.Sabotage.NONE)
    self.assertFalse(result.refutes_claim, result)
    self.assertEqual((result.canaries, result.guesses), (200, 40))

  def test_only_client_level_dp_with_a_fixed_clip_is_audited(self):
    config = self._config(1.0)
    config.aggregator.type = 'gaussian_adaptive'
    with self.assertRaisesRegex(errors.ConfigError, "config.aggregator.type='gaussian_fixed'"):
      canary_audit.audit_client_level(config, canaries=10, seed=0, log=lambda _: None)


class ScriptTest(tf.test.TestCase):

  def test_a_refuted_claim_exits_1_with_the_bound_and_writes_json(self):
    root = self.create_tempdir().full_path
    data_dir, schema_file = helpers.write_federation(root)
    output = os.path.join(root, 'audit.json')
    done = subprocess.run(
        [sys.executable, 'scripts/canary_audit.py', '--config=configs/csv.py:smoke',
         f'--config.data.dir={data_dir}', f'--config.data.schema_file={schema_file}',
         '--config.aggregator.type=gaussian_fixed', '--config.privacy.target_epsilon=0.5',
         "--config.model.hidden_units=(64,)", '--config.federated.rounds=5', '--canaries=100',
         '--sabotage=noise_off', f'--output={output}'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    self.assertEqual(done.returncode, 1, done.stderr[-3000:])
    self.assertIn('the audit REFUTES the claim', done.stdout)
    with open(output) as f:
      report = json.load(f)
    self.assertGreater(report['lower_bound'], report['claimed_epsilon'])
    self.assertEqual(report['sabotage'], 'noise_off')


if __name__ == '__main__':
  tf.test.main()

import os
import tempfile

import numpy as np
import pandas as pd
import tensorflow as tf

from configs import csv as csv_config
from tests import helpers
from tffaml.training import compare

M = compare.Method


class CombineAndSummaryTest(tf.test.TestCase):

  def test_average_and_vote(self):
    per_model = [{'a': np.array([0.2, 0.7])}, {'a': np.array([0.6, 0.9])}]
    self.assertAllClose(compare._combine(per_model)['a'], [0.4, 0.8])
    # Model 1 votes at 0.5: [0, 1]; model 2 at 0.95: [0, 0].
    self.assertAllClose(compare._combine(per_model, [0.5, 0.95])['a'], [0.0, 0.5])

  def test_vote_threshold_flags_the_positive_rate(self):
    scores = np.linspace(0, 1, 101)
    labels = np.r_[np.zeros(91), np.ones(10)]
    threshold = compare._vote_threshold(scores, labels)
    self.assertEqual((scores >= threshold).sum(), 10)

  def test_summary_over_seeds(self):
    rows = []
    for seed, (a, b, pooled) in enumerate([(0.6, 0.8, 0.7), (0.7, 0.9, 0.8)]):
      rows += [{'method': 'fedavg', 'seed': seed, 'institution': 'x', 'train_rows': 10, 'auc': a},
               {'method': 'fedavg', 'seed': seed, 'institution': 'y', 'train_rows': 20, 'auc': b},
               {'method': 'fedavg', 'seed': seed, 'institution': 'all test rows',
                'train_rows': 30, 'auc': pooled}]
    summary = compare.summarize(pd.DataFrame(rows)).iloc[0]
    self.assertAlmostEqual(summary['pooled_auc_mean'], 0.75)
    self.assertAlmostEqual(summary['pooled_auc_std'], np.std([0.7, 0.8], ddof=1))
    self.assertAlmostEqual(summary['median_institution_auc_mean'], 0.75)  # (0.7 + 0.8) / 2
    self.assertAlmostEqual(summary['worst_institution_auc_mean'], 0.65)
    self.assertEqual(summary['seeds'], 2)


class CompareRunTest(tf.test.TestCase):

  def test_smoke_compare_every_method(self):
    root = tempfile.mkdtemp()
    base = helpers.smoke_config(root)
    base.reference.centralized_epochs = 1
    # As configs/loan_risk.py:compare: no DP in the base, a target ε for record-level DP.
    base.aggregator.type, base.aggregator.noise_multiplier = 'mean', 0.0
    base.privacy.target_epsilon = 5.0
    out = os.path.join(root, 'compare')
    summary, per_institution = compare.run(base, seeds=[0], methods=list(M), output_dir=out,
                                           log=lambda _: None)
    self.assertEqual(summary['method'].tolist(), [m.value for m in M])
    self.assertLen(per_institution, len(M) * 4)  # 3 banks + all test rows.
    self.assertTrue(per_institution['auc'].between(0, 1).all())
    for name in ('compare.csv', 'compare_institutions.csv', 'compare.md', 'compare.png'):
      self.assertTrue(os.path.isfile(os.path.join(out, name)), name)
    record = os.path.join(out, 'runs', 'seed0', 'fedavg_record_dp', 'privacy.txt')
    with open(record) as f:
      self.assertRegex(f.read(), r'\((5|4\.99\d*), 1e-05\)-differential privacy for each record')
    client = os.path.join(out, 'runs', 'seed0', 'fedavg_client_dp', 'privacy.txt')
    with open(client) as f:
      self.assertIn('Gaussian noise multiplier 0.5 on updates', f.read())

  def test_local_models_need_epochs(self):
    base = csv_config.get_config('smoke')
    with self.assertRaisesRegex(ValueError, 'config.reference.centralized_epochs must be >= 1'):
      compare.run(base, seeds=[0], methods=[M.LOCAL_ONLY], output_dir='/tmp/never')


if __name__ == '__main__':
  tf.test.main()

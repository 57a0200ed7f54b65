import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import tensorflow as tf

from configs import csv as csv_config
from tffaml.data import csv_dir
from tffaml.data import schema as schema_lib
from tffaml.studies import robustness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FederationTest(tf.test.TestCase):

  def test_every_case_reads_as_a_schema_and_a_binary_label(self):
    for case in robustness.CASES:
      frame, schema = robustness.table(case)
      self.assertFalse(frame.isna().any().any(), case.name)
      rate = (frame[case.label].astype(str) == case.positive).mean()
      self.assertBetween(rate, 0.01, 0.99, case.name)
      self.assertNotIn('rownames', schema.features)
      for column in case.drop:
        self.assertNotIn(column, schema.features)

  def test_written_federation_loads_as_a_user_would_load_it(self):
    case = robustness.case_named('AER/CreditCard')
    directory = self.create_tempdir().full_path
    shape = robustness.write_federation(case, directory, seed=0)
    data = csv_dir.load(directory, schema_lib.Schema.from_json(os.path.join(directory, 'schema.json')))
    self.assertLen(data.institutions, case.institutions)
    rows = sum(len(i.train) + len(i.test) for i in data.institutions)
    self.assertEqual(rows, shape['rows'])
    sizes = [len(i.train) + len(i.test) for i in data.institutions]
    self.assertGreaterEqual(min(sizes), robustness.MIN_SHARE / case.institutions * rows * 0.9)
    for institution in data.institutions:
      for split in (institution.train, institution.test):
        self.assertEqual(set(split[schema_lib.LABEL_COLUMN]), {0, 1})
    again = self.create_tempdir().full_path
    robustness.write_federation(case, again, seed=0)
    with open(os.path.join(directory, 'institution_01', 'test.csv')) as a, \
        open(os.path.join(again, 'institution_01', 'test.csv')) as b:
      self.assertEqual(a.read(), b.read())  # Deterministic given the seed.

  def test_unknown_case(self):
    with self.assertRaisesRegex(ValueError, "unknown case 'x/y'; cases:"):
      robustness.case_named('x/y')


class SummaryTest(tf.test.TestCase):

  def test_gap_over_seeds_by_hand(self):
    shape = dict(rows=100, numeric=2, categorical=1, institutions=3, positive_rate=0.2)
    rows = [dict(case='a/b', seed=s, variant=v, auc=auc, epsilon=e, unit=u, **shape)
            for s, v, auc, e, u in [(0, 'default', 0.70, 1.0, 'record'), (1, 'default', 0.74, 1.0, 'record'),
                                    (0, 'no_dp', 0.75, 'inf', ''), (1, 'no_dp', 0.77, 'inf', '')]]
    summary = robustness.summarize(pd.DataFrame(rows), default='default', reference='no_dp')
    row = summary.iloc[0]
    self.assertAlmostEqual(row['default_auc_mean'], 0.72)
    self.assertAlmostEqual(row['default_auc_sd'], np.std([0.70, 0.74], ddof=1))
    self.assertAlmostEqual(row['gap'], 0.76 - 0.72)
    text = robustness.markdown(summary, default='default', reference='no_dp')
    self.assertIn('| a/b | 100 | 2 + 1 | 3 | 20.0% | 0.7600 ± 0.0141 | 0.7200 ± 0.0283 | +0.0400 | 1 |'
                  ' record |', text)


class RunTest(tf.test.TestCase):

  def test_smoke_run_writes_per_run_and_summary(self):
    # In-process, on scripts/robustness.py's default configs (ScriptTest runs the script itself).
    out = os.path.join(self.create_tempdir().full_path, 'robustness')
    default, no_dp = csv_config.get_config(), csv_config.get_config('no_dp')
    default.federated.rounds, no_dp.federated.rounds = 2, 1
    robustness.run({'default': default, 'no_dp': no_dp}, cases=[robustness.case_named('AER/CreditCard')],
                   seeds=[0], output_dir=out, default='default', reference='no_dp', log=lambda _: None)
    runs = pd.read_csv(os.path.join(out, 'robustness.csv'))
    self.assertEqual(runs['variant'].tolist(), ['default', 'no_dp'])
    self.assertTrue(runs['auc'].between(0, 1).all())
    default = runs.set_index('variant').loc['default']
    self.assertAlmostEqual(float(default['epsilon']), 1.0, delta=0.002)  # configs/csv.py: ε = 1.
    self.assertIn('record', default['unit'])
    with open(os.path.join(out, 'robustness.md')) as f:
      self.assertIn('| AER/CreditCard | 1319 | 7 + 2 | 3 |', f.read())
    with open(os.path.join(out, 'CreditCard', 'seed0', 'default', 'metrics.json')) as f:
      self.assertEqual(json.load(f)['rounds'], 2)


class ScriptTest(tf.test.TestCase):

  def test_bad_seed_is_one_message(self):
    done = subprocess.run(
        [sys.executable, 'scripts/robustness.py', '--seeds=x', '--output_dir=/tmp/unused_robustness'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    self.assertNotEqual(done.returncode, 0)
    self.assertIn('--seeds must be integers', done.stderr)
    self.assertNotIn('Traceback', done.stderr)
    self.assertFalse(os.path.exists('/tmp/unused_robustness'))


if __name__ == '__main__':
  tf.test.main()

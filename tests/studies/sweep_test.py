import os
import subprocess
import sys
import tempfile

from absl.testing import parameterized
import numpy as np
import pandas as pd
import tensorflow as tf

from configs import loan_risk
from tests import helpers
from tffaml.studies import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
U = sweep.DpUnit


class GridTest(tf.test.TestCase, parameterized.TestCase):

  def test_grid_points_and_names(self):
    points = sweep.grid([U.NONE, U.RECORD], clips=[0.5, 1.0], target_epsilons=[3.0])
    self.assertEqual([p.name for p in points],
                     ['none', 'record_eps3_clip0.5', 'record_eps3_clip1'])

  def test_point_needs_exactly_one_noise_setting(self):
    with self.assertRaisesRegex(ValueError, 'give exactly one of target_epsilon and noise_multiplier'):
      sweep.Point(U.RECORD, target_epsilon=1.0, noise_multiplier=1.0)

  @parameterized.named_parameters(
      ('none', sweep.Point(U.NONE), 'mean', False),
      ('institution', sweep.Point(U.INSTITUTION, 0.5, target_epsilon=8.0), 'gaussian_fixed', False),
      ('record', sweep.Point(U.RECORD, 0.5, noise_multiplier=1.2), 'mean', True),
  )
  def test_configure_switches_on_only_the_point_mechanism(self, point, aggregator, record):
    config = sweep.configure(loan_risk.get_config('sweep'), point)
    self.assertEqual(config.aggregator.type, aggregator)
    self.assertEqual(config.record_dp.enabled, record)
    self.assertEqual(config.privacy.target_epsilon, point.target_epsilon)
    if record:
      self.assertEqual((config.record_dp.clip, config.record_dp.noise_multiplier), (0.5, 1.2))
    if aggregator == 'gaussian_fixed':
      self.assertEqual(config.aggregator.clip, 0.5)


class SweepRunTest(tf.test.TestCase):

  def test_smoke_sweep_writes_table_markdown_and_plot(self):
    root = tempfile.mkdtemp()
    base = helpers.smoke_config(root)
    base.record_dp.mode = 'distributed'  # Record-level points get their canary audit.
    base.federated.eval_every = 0  # Measured once, at the end: all the table reads.
    out = os.path.join(root, 'sweep')
    # (An institution-level point: the same code on the config that GridTest checks; its canary audit:
    # canary_audit_test.ClientLevelAuditTest.)
    table = sweep.run(base, [sweep.Point(U.NONE), sweep.Point(U.RECORD, target_epsilon=5.0)], out, canaries=50,
                      log=lambda _: None)
    self.assertEqual(table['point'].tolist(), ['none', 'record_eps5_clip1'])
    none, record = table.iloc[0], table.iloc[1]
    # A DP point gets the canary audit, whose bound stays under a correct claim.
    self.assertTrue(np.isnan(none['canary_epsilon_lower_bound']))
    self.assertBetween(record['canary_epsilon_lower_bound'], 0.0, record['epsilon'])
    self.assertTrue(os.path.isfile(os.path.join(out, 'runs', record['point'], 'canary_audit.json')))
    self.assertEqual(none['epsilon'], float('inf'))
    self.assertBetween(record['epsilon'], 4.9, 5.0)
    self.assertGreater(record['noise_multiplier'], 0.0)
    for row in (none, record):
      self.assertBetween(row['auc'], 0.0, 1.0)
      self.assertBetween(row['attack_auc'], 0.0, 1.0)
    self.assertEqual(len(pd.read_csv(os.path.join(out, 'sweep.csv'))), 2)
    with open(os.path.join(out, 'sweep.md')) as f:
      self.assertIn('| record | 1 | 5 |', f.read())
    with open(os.path.join(out, 'sweep.png'), 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
    self.assertTrue(os.path.isfile(os.path.join(out, 'runs', 'none', 'audit.json')))


class PrivacyScriptTest(tf.test.TestCase):

  def _run(self, *args):
    done = subprocess.run([sys.executable, 'scripts/privacy.py', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout.strip().splitlines(), done.stderr

  def test_bare_mechanism_epsilon_is_the_last_line(self):
    code, lines, _ = self._run('--sampling_rate=0.0025', '--noise_multiplier=1.3',
                               '--steps=6000', '--delta=1e-5')
    self.assertEqual(code, 0)
    self.assertEqual(lines[-1], 'epsilon=0.724223')

  def test_noise_for_target(self):
    code, lines, _ = self._run('--sampling_rate=0.0025', '--target_epsilon=0.724223',
                               '--steps=6000', '--delta=1e-5')
    self.assertEqual(code, 0)
    self.assertAlmostEqual(float(lines[-1].split('=')[1]), 1.3, delta=0.003)

  def test_bad_flags_are_named(self):
    code, _, stderr = self._run('--sampling_rate=2', '--noise_multiplier=1', '--steps=10')
    self.assertNotEqual(code, 0)
    self.assertIn('--sampling_rate must be in (0, 1], got 2.0', stderr)

  def test_noise_too_small_for_pld_is_refused_at_once(self):
    code, _, stderr = self._run('--sampling_rate=0.2', '--noise_multiplier=0.001', '--steps=60',
                                '--accountant=pld')
    self.assertNotEqual(code, 0)
    self.assertIn('--noise_multiplier: noise multiplier 0.001 is below 0.1, where the pld accountant needs'
                  ' gigabytes; use the rdp accountant.', stderr)
    self.assertNotIn('Traceback', stderr)

  def test_planned_config(self):
    root = tempfile.mkdtemp()
    data_dir, schema_file = helpers.write_federation(root)
    code, lines, stderr = self._run(
        '--config=configs/csv.py:smoke', f'--config.data.dir={data_dir}',
        f'--config.data.schema_file={schema_file}', '--config.record_dp.enabled=True',
        '--config.federated.batch_size=16', '--config.privacy.target_epsilon=2')
    self.assertEqual(code, 0, stderr[-2000:])
    self.assertNotIn('Traceback', stderr)  # TFF's worker manager at exit, before the fix.
    self.assertIn('record-level DP', lines[0])
    self.assertBetween(float(lines[-1].split('=')[1]), 1.98, 2.0)


if __name__ == '__main__':
  tf.test.main()

"""End-to-end runs of the training program on a tiny on-disk federation."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd
import psutil
import tensorflow as tf

from configs import csv as csv_config
from tests import helpers
from tffaml import errors
from tffaml.export import scoring
from tffaml.privacy import accounting
from tffaml.training import program
from tffaml.training import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(data_dir, schema_file, **federated):
  config = csv_config.get_config('smoke')
  config.data.dir, config.data.schema_file = data_dir, schema_file
  config.aggregator.type = 'gaussian_fixed'
  config.aggregator.noise_multiplier = 0.3
  config.privacy.noise_seed = 11
  config.federated.update(federated)
  return config


def _serve(model_dir, frame, schema):
  inputs = {c: frame[c].astype(float).tolist() for c in schema['numeric']}
  inputs.update({c: frame[c].astype(str).tolist() for c in schema['categorical']})
  return helpers.serve_in_fresh_process(model_dir, inputs)


class ProgramTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.data_dir, cls.schema_file = helpers.write_federation(cls.root)
    cls.config = _config(cls.data_dir, cls.schema_file, rounds=3)
    cls.result = program.run(cls.config, os.path.join(cls.root, 'full'), log=lambda _: None)
    # A run stopped after round 1 without encrypted checkpoints: only refused resumes use it (nothing written).
    cls.stopped = os.path.join(cls.root, 'stopped')
    program.run(cls.config, cls.stopped, stop_after_round=1, log=lambda _: None)

  def test_outputs_and_metrics(self):
    paths, metrics = self.result.paths, self.result.metrics
    for path in (paths.metrics, paths.privacy, paths.curves, paths.hyperparameters,
                 os.path.join(paths.export, 'saved_model.pb'),
                 os.path.join(paths.export, 'metadata.json')):
      self.assertTrue(os.path.isfile(path), path)
    self.assertEqual(sorted(metrics['federated']['institutions']), ['bank_a', 'bank_b', 'bank_c'])
    for values in [metrics['federated']['pooled'], *metrics['federated']['institutions'].values()]:
      self.assertBetween(values['auc'], 0.0, 1.0)
      self.assertBetween(values['brier'], 0.0, 1.0)
      self.assertBetween(values['ks'], 0.0, 1.0)
    pooled_examples = sum(v['num_examples'] for v in metrics['federated']['institutions'].values())
    self.assertEqual(metrics['federated']['pooled']['num_examples'], pooled_examples)
    rows = pd.read_csv(paths.metrics_csv)
    self.assertEqual(rows['round'].tolist(), [1, 2, 3])
    self.assertTrue((np.diff(rows['privacy/epsilon']) > 0).all())
    self.assertAlmostEqual(metrics['privacy']['epsilon'], rows['privacy/epsilon'].iloc[-1])
    with open(os.path.join(paths.export, 'metadata.json')) as f:
      metadata = json.load(f)
    self.assertEqual(metadata['privacy']['delta'], 1e-5)
    self.assertEqual(metadata['config']['privacy']['noise_seed'], 'redacted')

  def test_resumed_run_equals_uninterrupted_run(self):
    workdir = os.path.join(self.root, 'resumed')
    stopped = program.run(self.config, workdir, stop_after_round=2, log=lambda _: None)
    self.assertEqual(stopped.rounds_completed, 2)
    self.assertFalse(os.path.exists(stopped.paths.export))
    lines = []
    resumed = program.run(self.config, workdir, log=lines.append)
    self.assertTrue(any('resuming' in line and 'after round 2' in line for line in lines))
    for a, b in zip(self.result.model.get_weights(), resumed.model.get_weights()):
      self.assertAllEqual(a, b)
    self.assertEqual(self.result.metrics['privacy']['epsilon'], resumed.metrics['privacy']['epsilon'])
    self.assertEqual(pd.read_csv(resumed.paths.metrics_csv)['round'].tolist(), [1, 2, 3])

  def test_encrypted_checkpoints_resume_to_the_same_model_and_only_with_their_key(self):
    from tffaml.security import encryption  # pylint: disable=g-import-not-at-top
    key = encryption.load_key(key_file=encryption.generate_key(os.path.join(self.root, 'checkpoint.key')))
    workdir = os.path.join(self.root, 'sealed')
    stopped = program.run(self.config, workdir, stop_after_round=2, log=lambda _: None, checkpoint_key=key)
    checkpoint_dir = os.path.join(stopped.paths.root, 'checkpoints')
    self.assertEqual(sorted(os.listdir(checkpoint_dir)), ['state_1.sealed', 'state_2.sealed'])
    with open(os.path.join(checkpoint_dir, 'state_2.sealed'), 'rb') as f:
      self.assertNotIn(b'arr_0', f.read())  # No numpy archive in the clear.
    with self.assertRaisesRegex(errors.InputError, 'the checkpoints are encrypted; resume with the key'):
      program.run(self.config, workdir, log=lambda _: None)
    with self.assertRaisesRegex(encryption.DecryptionError, 'does not authenticate'):
      program.run(self.config, workdir, log=lambda _: None, checkpoint_key=bytes(32))
    resumed = program.run(self.config, workdir, log=lambda _: None, checkpoint_key=key)
    for a, b in zip(self.result.model.get_weights(), resumed.model.get_weights()):
      self.assertAllEqual(a, b)
    self.assertEqual(self.result.metrics['privacy']['epsilon'], resumed.metrics['privacy']['epsilon'])
    with self.assertRaisesRegex(errors.InputError, 'started without encrypted checkpoints'):
      program.run(self.config, self.stopped, log=lambda _: None, checkpoint_key=key)

  def test_resume_with_another_config_is_refused(self):
    changed = _config(self.data_dir, self.schema_file, rounds=3, client_learning_rate=0.5)
    with self.assertRaisesRegex(ValueError, 'holds a run with a different config'):
      program.run(changed, self.stopped, log=lambda _: None)

  def test_export_round_trip_without_tffaml_or_tff(self):
    test_rows = pd.read_csv(os.path.join(self.data_dir, 'bank_a', 'test.csv'))
    served = _serve(self.result.paths.export, test_rows, helpers.SCHEMA)
    inputs = {c: tf.constant(test_rows[c].to_numpy(np.float32)) for c in ('amount', 'rate')}
    inputs['grade'] = tf.constant(test_rows['grade'].to_numpy(str))
    keras = self.result.model(inputs).numpy()[:, 0]
    self.assertAllClose(served['probability'], keras, atol=1e-6)
    self.assertAllEqual(served['label'], (keras >= 0.5).astype(int))

  def test_saved_model_cli_runs_it(self):
    cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
    done = subprocess.run(
        [cli, 'run', '--dir', self.result.paths.export, '--tag_set', 'serve',
         '--signature_def', 'serving_default', '--input_exprs',
         'amount=[12000.0];rate=[14.5];grade=["B"]'],
        capture_output=True, text=True, timeout=300)
    self.assertEqual(done.returncode, 0, done.stderr[-2000:])
    self.assertIn("Result for output key probability", done.stdout)

  def test_score_csv(self):
    source = os.path.join(self.data_dir, 'bank_b', 'test.csv')
    output = os.path.join(self.root, 'scored.csv')
    result = scoring.score_csv(self.result.paths.export, source, output, public_key=None)
    scored = pd.read_csv(output, keep_default_na=False)
    self.assertEqual((result.scored, result.rejected), (len(pd.read_csv(source)), 0))
    self.assertTrue(scored['probability'].between(0, 1).all())
    self.assertTrue((scored['flags'] == '').all())

  def test_score_rejects_bad_rows_with_reasons_and_flags_odd_ones(self):
    bad = os.path.join(self.root, 'bad.csv')
    pd.DataFrame({
        'amount': [5000, 'x', 5000, 5000, 5000, 1e12],
        'rate': [10, 10, 'inf', 10, 10, 10],
        'grade': ['A', 'A', 'A', '', 'Z', 'B'],
    }).to_csv(bad, index=False)
    output = os.path.join(self.root, 'bad_scored.csv')
    result = scoring.score_csv(self.result.paths.export, bad, output, public_key=None)
    self.assertEqual((result.scored, result.rejected, result.flagged), (3, 3, 2))
    rejected = pd.read_csv(result.rejected_path)
    self.assertEqual(rejected['line'].tolist(), [3, 4, 5])
    self.assertEqual(rejected['reasons'].tolist(), [
        "amount: 'x' is not a number", "rate: 'inf' is not finite", 'grade: missing'])
    flags = pd.read_csv(output, keep_default_na=False)['flags'].tolist()
    self.assertEqual(flags, ['', "grade='Z' unknown (scored as out-of-vocabulary)",
                             'amount=1e+12 outside the training range'])

  def test_score_refuses_a_file_without_the_model_columns(self):
    bad = os.path.join(self.root, 'no_rate.csv')
    pd.DataFrame({'amount': [1.0], 'grade': ['A']}).to_csv(bad, index=False)
    output = os.path.join(self.root, 'never.csv')
    with self.assertRaisesRegex(ValueError, r"no_rate.csv: missing column\(s\) \['rate'\] the model needs"):
      scoring.score_csv(self.result.paths.export, bad, output, public_key=None)
    self.assertFalse(os.path.exists(output))


class RecordLevelDpProgramTest(tf.test.TestCase):
  """DP-SGD in each institution plus client-level DP, noise set by a target ε."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    data_dir, schema_file = helpers.write_federation(cls.root)
    cls.config = _config(data_dir, schema_file, rounds=2, batch_size=16)
    cls.config.record_dp.enabled = True
    cls.config.privacy.target_epsilon = 4.0
    cls.lines = []
    cls.result = program.run(cls.config, os.path.join(cls.root, 'full'), log=cls.lines.append)

  def test_epsilon_meets_target_and_statement_has_both_units(self):
    privacy = self.result.metrics['privacy']
    self.assertBetween(privacy['epsilon'], 3.95, 4.0)  # Every institution joined every round.
    self.assertEqual([g['level'] for g in privacy['guarantees']], ['record', 'institution'])
    self.assertTrue(any(line.startswith('noise multiplier') and 'ε = 4' in line for line in self.lines))
    progress = [line for line in self.lines if line.startswith('round ')]
    # ε to four significant digits: 4, or just under it.
    self.assertRegex(progress[-1], r'\| ε\(record\)=(4|3\.9\d*) \| ε\(institution\)=[\d.]+ \|')
    rows = pd.read_csv(self.result.paths.metrics_csv)
    self.assertTrue((np.diff(rows['privacy/epsilon']) > 0).all())
    self.assertTrue((rows['privacy/institution_epsilon'] > 0).all())
    self.assertEqual(rows['train/steps'].tolist(), [12] * 2)  # ceil(60 / 16) at 3 banks.
    with open(self.result.paths.privacy) as f:
      self.assertIn('record-level DP', f.read())

  def test_resumed_run_has_same_model_and_ledger(self):
    workdir = os.path.join(self.root, 'resumed')
    program.run(self.config, workdir, stop_after_round=1, log=lambda _: None)
    resumed = program.run(self.config, workdir, log=lambda _: None)
    for a, b in zip(self.result.model.get_weights(), resumed.model.get_weights()):
      self.assertAllEqual(a, b)
    self.assertEqual(resumed.metrics['privacy'], self.result.metrics['privacy'])


  def test_account_level_dp(self):
    schema_file = os.path.join(self.root, 'schema_with_unit.json')
    with open(schema_file, 'w') as f:
      json.dump(dict(helpers.SCHEMA, unit='account'), f)
    config = _config(self.config.data.dir, schema_file, rounds=2, batch_size=4)
    config.record_dp.enabled, config.record_dp.max_rows_per_unit = True, 2
    config.privacy.target_epsilon = 4.0
    config.model.alert_budget = 0.25  # A DP threshold, inside the same ε.
    lines = []
    result = program.run(config, os.path.join(self.root, 'account'), log=lines.append)
    record = result.metrics['privacy']['guarantees'][0]
    self.assertIn('; its alert threshold. Not covered:', result.metrics['privacy']['text'])  # Covered, as DP.
    self.assertIn('the alert threshold comes from 2 histograms', record['mechanism'])
    self.assertTrue(any(line.endswith('(federated quantile, DP)') for line in lines))
    threshold = program.saved_model.read_metadata(result.paths.export)['threshold']
    self.assertTrue(0 < threshold < np.inf)
    self.assertStartsWith(record['unit'], "account (all rows sharing one 'account' value,"
                          ' at most 2 rows a round')
    self.assertBetween(record['epsilon'], 3.95, 4.0)
    self.assertIn('(12 units, 2 rounds)', record['mechanism'])
    rows = pd.read_csv(result.paths.metrics_csv)
    self.assertEqual(rows['train/steps'].tolist(), [9, 9])  # ceil(12 / 4) at 3 banks.


class SampleCohortTest(tf.test.TestCase):

  def test_every_sampling_draws_a_sorted_cohort_of_the_right_size(self):
    for sampling in accounting.Sampling:
      cohorts = [program.sample_cohort(sampling, num_institutions=50, cohort=10, seed=0, round_num=r)
                 for r in range(1, 41)]
      for cohort in cohorts:
        self.assertEqual(cohort, sorted(set(cohort)), sampling)
        self.assertTrue(all(0 <= i < 50 for i in cohort), sampling)
      sizes = [len(c) for c in cohorts]
      expected = {accounting.Sampling.FULL: 50}.get(sampling, 10)
      self.assertAllClose(np.mean(sizes), expected, rtol=0.2, msg=str(sampling))


class IntegrityTest(tf.test.TestCase):
  """Faults and hostile inputs: nothing lost, no privacy claim wrong."""

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.data_dir, self.schema_file = helpers.write_federation(self.root)

  def _secret_config(self, **federated):
    config = _config(self.data_dir, self.schema_file, **federated)
    config.privacy.noise_seed = None  # Secret: drawn from the OS, kept in the workdir.
    return config

  def test_secret_noise_seed_never_in_checkpoints_and_fixed_noise_may_extend(self):
    # One participant's absurd (but float32) value, and a test split of one class.
    train = os.path.join(self.data_dir, 'bank_b', 'train.csv')
    pd.read_csv(train).assign(amount=lambda f: f['amount'].astype(float).mask(f.index == 7, 1e30)).to_csv(
        train, index=False)
    test = os.path.join(self.data_dir, 'bank_c', 'test.csv')
    pd.read_csv(test).assign(default=0).to_csv(test, index=False)
    workdir = os.path.join(self.root, 'run')
    program.run(self._secret_config(rounds=2), workdir, stop_after_round=1, log=lambda _: None)
    secret = os.path.join(workdir, 'secret', 'noise_seed')
    self.assertEqual(os.stat(secret).st_mode & 0o777, 0o600)
    with open(secret) as f:
      seed = int(f.read())
    for root, _, names in os.walk(os.path.join(workdir, 'checkpoints')):
      for name in names:
        with open(os.path.join(root, name), 'rb') as f:
          self.assertNotIn(seed.to_bytes(8, 'little', signed=True), f.read(), name)
    os.makedirs(os.path.join(workdir, '.export.tmp-killed'))  # What a killed export leaves.
    result = program.run(self._secret_config(rounds=3), workdir, log=lambda _: None)  # Fixed noise: may extend.
    self.assertFalse(os.path.exists(os.path.join(workdir, '.export.tmp-killed')))
    self.assertEqual(result.metrics['privacy']['rounds'], 3)
    epsilons = pd.read_csv(result.paths.metrics_csv)['privacy/epsilon']
    self.assertEqual(len(epsilons), 3)
    self.assertTrue((np.diff(epsilons) > 0).all())
    self.assertAlmostEqual(result.metrics['privacy']['epsilon'], epsilons.iloc[-1])
    bank_c = result.metrics['federated']['institutions']['bank_c']
    self.assertIsNone(bank_c['auc'])
    self.assertIn('both classes', bank_c['undefined'])
    with open(result.paths.metrics) as f:
      json.loads(f.read(), parse_constant=lambda c: self.fail(f'{c} in metrics.json'))
    with open(os.path.join(result.paths.export, 'metadata.json')) as f:
      space = json.load(f)['feature_space']
    self.assertLess(space['upper']['amount'], 1e6)  # 1e30 did not set the scale.
    self.assertLess(space['mean']['amount'], 1e5)
    with self.assertRaisesRegex(ValueError, r'config.federated.rounds=2 is fewer than the 3 rounds'):
      program.run(self._secret_config(rounds=2), workdir, log=lambda _: None)

  def test_recalibration_and_changed_data_are_refused_before_any_work(self):
    config = _config(self.data_dir, self.schema_file, rounds=2)
    config.privacy.target_epsilon = 5.0
    workdir = os.path.join(self.root, 'calibrated')
    program.run(config, workdir, stop_after_round=1, log=lambda _: None)
    longer = _config(self.data_dir, self.schema_file, rounds=6)
    longer.privacy.target_epsilon = 5.0
    with self.assertRaisesRegex(ValueError, r'config.federated.rounds=6: the noise .* calibrated for'
                                r' config.privacy.target_epsilon=5.0 over 2 rounds'):
      program.run(longer, workdir, log=lambda _: None)
    self.assertEqual(len(pd.read_csv(os.path.join(workdir, 'results', 'metrics.csv'))), 1)
    with open(os.path.join(workdir, 'hyperparameters.json')) as f:
      self.assertEqual(json.load(f)['federated']['rounds'], 2)
    shutil.copytree(os.path.join(self.data_dir, 'bank_a'), os.path.join(self.data_dir, 'bank_d'))
    with self.assertRaisesRegex(ValueError, r'the data changed .*\(bank_d added\)'):
      program.run(config, workdir, log=lambda _: None)

  def test_a_diverging_run_fails_naming_the_round_and_exports_nothing(self):
    config = _config(self.data_dir, self.schema_file, rounds=3, client_learning_rate=1e30)
    config.aggregator.type = 'mean'
    workdir = os.path.join(self.root, 'diverged')
    with self.assertRaisesRegex(errors.RunFailed, r'round 1: .*not finite; the run stopped and exported nothing'):
      program.run(config, workdir, log=lambda _: None)
    for output in ('export', 'metrics.json', 'privacy.txt', 'checkpoints/program_state_1'):
      self.assertFalse(os.path.exists(os.path.join(workdir, output)), output)

  def test_bad_config_values_are_refused_before_anything_is_written(self):
    for key, value, message in (
        ('model.threshold', 1.5, r'config.model.threshold must be in \[0, 1\], got 1.5'),
        ('aggregator.clip', -1.0, r'config.aggregator.clip must be > 0'),
        ('aggregator.trim_fraction', 0.7, r'config.aggregator.trim_fraction must be in \[0, 0.5\)'),
        ('federated.client_learning_rate', -0.1, r'config.federated.client_learning_rate must be > 0'),
        ('features.min_category_count', 0, r'config.features.min_category_count must be >= 1'),
        ('model.hidden_units', (8, 0), r'config.model.hidden_units must be positive integers'),
        ('personalize.trees', True, r'config.personalize.trees reads each institution\'s personalized copy')):
      config = _config(self.data_dir, self.schema_file, rounds=1)
      config.update_from_flattened_dict({key: value})
      workdir = os.path.join(self.root, f'bad_{key}')
      with self.assertRaisesRegex(errors.ConfigError, message):
        program.run(config, workdir, log=lambda _: None)
      self.assertFalse(os.path.exists(workdir), key)

  def test_busy_workdir_and_workdir_in_the_data_are_refused(self):
    config = _config(self.data_dir, self.schema_file, rounds=1)
    workdir = os.path.join(self.root, 'busy')
    with workdir_lib.lock(workdir):
      with self.assertRaisesRegex(ValueError, rf'in use by another run \(pid {os.getpid()}\)'):
        program.run(config, workdir, log=lambda _: None)
    with self.assertRaisesRegex(ValueError, 'inside config.data.dir'):
      program.run(config, os.path.join(self.data_dir, 'run'), log=lambda _: None)
    self.assertFalse(os.path.exists(os.path.join(self.data_dir, 'run')))


class ScriptHygieneTest(tf.test.TestCase):

  def _workers_marked(self, mark: str):
    """Live TFF workers whose environment carries `mark`: started by the command we ran.

    Precise under parallel tests, where other tests' workers come and go.
    """
    found = []
    for p in psutil.process_iter(['name']):
      try:
        if p.info['name'] == 'worker_binary' and p.environ().get('TFFAML_TEST_MARK') == mark:
          found.append(p)
      except psutil.Error:
        pass
    return found

  def test_piped_train_returns_and_leaves_no_worker(self):
    root = self.create_tempdir().full_path
    data_dir, schema_file = helpers.write_federation(root)
    mark = f'{os.getpid()}-{root}'
    done = subprocess.run(
        f'{sys.executable} scripts/train.py --config=configs/csv.py'  # The defaults: record-level DP.
        f' --config.data.dir={data_dir} --config.data.schema_file={schema_file}'
        f' --config.federated.rounds=1 --workdir={root}/run 2>&1 | cat',
        shell=True, cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, 'TFFAML_TEST_MARK': mark})
    # 0, or 3 when one round on 90 test rows leaves the model at chance (it says so).
    self.assertIn(done.returncode, (0, 3), done.stdout[-3000:])
    self.assertIn('privacy:', done.stdout)
    self.assertRegex(done.stdout, r'\((1|0\.99\d*), 1e-05\)-differential privacy for each record')
    self.assertRegex(done.stdout, r'pooled test AUC: [01]\.\d{4}\n')  # Beside the statement.
    if done.returncode == 3:
      self.assertIn('WARNING: the model is no better than chance', done.stdout)
    self.assertEqual(self._workers_marked(mark), [])

  def test_unknown_config_key_fails_before_work(self):
    done = subprocess.run(
        [sys.executable, 'scripts/train.py', '--config=configs/loan_risk.py:smoke',
         '--config.federated.roundz=3', '--workdir=/nonexistent/never'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    self.assertNotEqual(done.returncode, 0)
    self.assertIn("--config.federated.roundz: unknown config key 'roundz'; did you mean 'rounds'?",
                  done.stderr)
    self.assertNotIn('Traceback', done.stderr)
    self.assertFalse(os.path.exists('/nonexistent/never'))

  def test_refusals_are_one_message_without_traceback(self):
    root = self.create_tempdir().full_path
    data_dir, schema_file = helpers.write_federation(root)
    with open(os.path.join(data_dir, 'bank_b', 'train.csv'), 'a') as f:
      f.write('1e200,10.0,A,x,acct1,0\n')
    done = subprocess.run(
        [sys.executable, 'scripts/train.py', '--config=configs/csv.py:smoke',
         f'--config.data.dir={data_dir}', f'--config.data.schema_file={schema_file}',
         f'--workdir={root}/run'], cwd=ROOT, capture_output=True, text=True, timeout=600)
    self.assertEqual(done.returncode, 2, done.stderr[-3000:])
    self.assertRegex(done.stderr, r"error: .*bank_b/train.csv: line 62, column 'amount': '1e200' is"
                     r' beyond .*float32')
    self.assertNotIn('Traceback', done.stderr)
    self.assertNotIn('Exception ignored', done.stderr)
    self.assertFalse(os.path.exists(f'{root}/run'))


if __name__ == '__main__':
  tf.test.main()

import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from configs import csv as csv_config
from tests import helpers
from tffaml.data import federated_data
from tffaml.studies import lira_audit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class HalvesTest(tf.test.TestCase):

  def test_each_model_has_its_own_half_of_every_institution_repeatably(self):
    data = helpers.load_federation()
    inside = lira_audit.halves(data, models=6, seed=3)
    self.assertLen(inside, len(data.institutions))
    for institution, chosen in zip(data.institutions, inside):
      self.assertEqual(chosen.shape, (6, len(institution.train) + len(institution.test)))
      self.assertBetween(chosen.mean(), 0.35, 0.65)
      self.assertGreater(len({row.tobytes() for row in chosen}), 5)  # Models differ.
    for a, b in zip(inside, lira_audit.halves(data, models=6, seed=3)):
      self.assertAllEqual(a, b)
    self.assertFalse(all(np.array_equal(a, b) for a, b in zip(inside, lira_audit.halves(data, models=6, seed=4))))

  def test_a_model_trains_on_its_half_and_tests_on_the_rest(self):
    data = helpers.load_federation()
    inside = lira_audit.halves(data, models=3, seed=0)
    half = lira_audit._half(data, inside, 1)  # pylint: disable=protected-access
    for institution, split, chosen in zip(data.institutions, half.institutions, inside):
      rows = len(institution.train) + len(institution.test)
      self.assertEqual((len(split.train), len(split.test)), (chosen[1].sum(), rows - chosen[1].sum()))
      self.assertIsInstance(split, federated_data.Institution)


class ScriptTest(tf.test.TestCase):

  def test_attack_reports_writes_and_resumes_without_training_again(self):
    root = self.create_tempdir().full_path
    data_dir, schema_file = helpers.write_federation(root)
    workdir = os.path.join(root, 'lira')
    argv = [sys.executable, 'scripts/lira.py', '--config=configs/csv.py', f'--config.data.dir={data_dir}',
            f'--config.data.schema_file={schema_file}', '--config.federated.rounds=2',
            '--config.federated.eval_every=0', '--models=3',
            f'--workdir={workdir}']
    first = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    self.assertEqual(first.returncode, 0, first.stderr[-3000:])
    self.assertIn('model 3/3:', first.stdout)
    self.assertIn('LiRA over 3 models, 270 rows', first.stdout)
    self.assertRegex(first.stdout, r'TPR at 1\.0% FPR: [0-9.]+ \(record-level DP ceiling 0\.02[0-9]+\)')
    with open(os.path.join(workdir, 'lira.json')) as f:
      report = json.load(f)
    self.assertEqual((report['models'], report['rows']), (3, 270))
    self.assertBetween(report['claimed_epsilon'], 0.9, 1.0)  # The csv default: ε = 1 per record.
    self.assertBetween(report['pooled']['auc'], 0.0, 1.0)
    self.assertEqual(sorted(report['institutions']), ['bank_a', 'bank_b', 'bank_c'])
    with open(os.path.join(workdir, 'lira_roc.png'), 'rb') as f:
      self.assertEqual(f.read(8), b'\x89PNG\r\n\x1a\n')
    # The resume is the study's, not the script's: in-process, on the script's config.
    config = csv_config.get_config()
    config.data.dir, config.data.schema_file, config.federated.rounds = data_dir, schema_file, 2
    config.federated.eval_every = 0
    os.remove(os.path.join(workdir, 'lira.json'))
    lines = []
    lira_audit.attack(config, workdir, models=3, seed=0, log=lines.append)
    self.assertNotIn('model 1/3:', '\n'.join(lines))  # Finished models are reused, not trained again.
    with open(os.path.join(workdir, 'lira.json')) as f:
      self.assertEqual(json.load(f), report)

  def test_too_few_models_is_refused_before_any_work(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'lira')
    done = subprocess.run([sys.executable, 'scripts/lira.py', '--models=2', f'--workdir={workdir}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    self.assertEqual(done.returncode, 2, done.stderr[-3000:])
    self.assertIn('--models must be at least 3', done.stderr)
    self.assertNotIn('Traceback', done.stderr)
    self.assertFalse(os.path.exists(workdir))


if __name__ == '__main__':
  tf.test.main()

"""A public corpus: exact statistics, a pretrained start and the alert threshold, at no privacy cost."""

import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from configs import csv as csv_config
from tests import helpers
from tffaml import errors
from tffaml import features
from tffaml.config import builders as config_builders
from tffaml.config import checks as config_checks
from tffaml.config import data as config_data
from tffaml.config import values as config_values
from tffaml.models import tabular
from tffaml.training import program
from tffaml.training import public as public_lib


def _config(root: str, *, rounds: int = 2):
  """configs/csv.py's record-level default on a small federation, with another federation as the public corpus."""
  data_dir, schema_file = helpers.write_federation(root)
  public_dir, _ = helpers.write_federation(os.path.join(root, 'public'), institutions=('pub_x', 'pub_y'),
                                           rows=200, seed=100)
  config = csv_config.get_config('')
  config.data.dir, config.data.schema_file, config.data.min_rows = data_dir, schema_file, 10
  config.federated.rounds = rounds
  config.privacy.noise_seed = 3
  config.public.path = public_dir
  config.model.alert_budget = 0.1
  return config


class PublicRunTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.config = _config(cls.root, rounds=3)
    cls.lines = []
    cls.result = program.run(cls.config, os.path.join(cls.root, 'full'), log=cls.lines.append)

  def test_statistics_are_the_public_corpus_exact_ones(self):
    with open(os.path.join(self.result.paths.export, 'metadata.json')) as f:
      exported = json.load(f)['feature_space']
    public = config_data.load_public(self.config)
    exact = features.compute_feature_space(public, min_category_count=self.config.features.min_category_count)
    self.assertEqual(exported, json.loads(json.dumps(exact.to_dict())))
    own = features.compute_feature_space(config_data.load_data(self.config, log=lambda _: None),
                                         min_category_count=self.config.features.min_category_count)
    self.assertNotEqual(exported, json.loads(json.dumps(own.to_dict())))  # Not the institutions' rows.

  def test_the_whole_budget_trains_and_the_statement_says_what_is_public(self):
    plan = config_plan_for(self.config)
    self.assertIsNone(plan.statistics)  # No DP release of statistics: nothing of ε spent on them.
    self.assertFalse(plan.exact_alert_threshold)
    privacy = self.result.metrics['privacy']
    self.assertAlmostEqual(privacy['epsilon'], 1.0, delta=0.01)
    covered = ' '.join(privacy['covered'])
    self.assertIn(f"computed from the public corpus '{self.config.public.path}' alone", covered)
    self.assertIn("its alert threshold, a quantile of the released model's scores on that corpus", covered)
    self.assertNotIn('federated feature statistics', ' '.join(privacy['not_covered']))
    self.assertTrue(any('2 pretraining epochs' in line for line in self.lines), self.lines)

  def test_the_threshold_flags_the_budget_of_public_rows(self):
    public = config_data.load_public(self.config)
    scores = self.result.model.predict(
        dict(helpers_features(public.pooled('train'), public.schema)), verbose=0).ravel()
    flagged = np.mean(scores >= self.result.threshold)
    self.assertAlmostEqual(flagged, self.config.model.alert_budget, delta=0.01)

  def test_a_resumed_run_skips_pretraining_and_equals_the_whole_run(self):
    workdir = os.path.join(self.root, 'resumed')
    program.run(self.config, workdir, stop_after_round=1, log=lambda _: None)
    lines = []
    resumed = program.run(self.config, workdir, log=lines.append)
    self.assertTrue(any(line.startswith('public corpus') and 'pretraining' not in line for line in lines), lines)
    for a, b in zip(resumed.model.get_weights(), self.result.model.get_weights()):
      self.assertAllClose(a, b)


def config_plan_for(config):
  from tffaml.config import plan as config_plan  # pylint: disable=g-import-not-at-top
  data = config_data.load_data(config, log=lambda _: None)
  choices = config_checks.parse_choices(config)
  return config_plan.privacy_plan_for_census(config, choices, data.schema, config_plan.census(data),
                                             cohort=len(data.institutions))


def helpers_features(frame, schema):
  from tffaml.federated import client_data  # pylint: disable=g-import-not-at-top
  return client_data.feature_tensors(frame, schema)


class PrepareTest(tf.test.TestCase):

  def test_pretraining_moves_the_seeded_start_and_learns_the_public_rows(self):
    config = _config(tempfile.mkdtemp())
    config.public.epochs = 5
    choices = config_checks.parse_choices(config)
    public = public_lib.prepare(
        config_data.public_corpus(config), config_data.load_public(config), min_category_count=1,
        keras_model_fn=lambda space: config_builders.keras_model_fn(config, choices, space),
        loss=tabular.keras_loss(config_builders.loss_fn(config, choices)), seed=0, log=lambda _: None)
    seeded = config_builders.keras_model_fn(config, choices, public.space)
    start = public.initial_weights(seeded)
    self.assertNotAllClose(start.trainable[0], seeded().get_weights()[0])
    self.assertAllClose(start.trainable[0], public.model.trainable_weights[0].numpy())


class RefusalTest(tf.test.TestCase):
  """Refused before any work, in one line naming config.public.path."""

  def _refused(self, config, pattern, **kwargs):
    workdir = os.path.join(tempfile.mkdtemp(), 'w')
    with self.assertRaisesRegex(errors.ConfigError, pattern):
      program.run(config, workdir, log=lambda _: None, **kwargs)
    self.assertFalse(os.path.exists(workdir))

  def test_the_training_rows_themselves(self):
    config = _config(tempfile.mkdtemp())
    config.public.path = config.data.dir + '/'
    self._refused(config, r"^config.public.path='.*' is config.data.dir: the public corpus must differ")

  def test_a_missing_corpus(self):
    config = _config(tempfile.mkdtemp())
    config.public.path = '/nonexistent/public'
    self._refused(config, r"^config.public.path='/nonexistent/public' does not exist: give the public corpus's"
                          ' folder')

  def test_a_source_without_a_file(self):
    config = _config(tempfile.mkdtemp())
    config.data.source = 'lending_club'
    self._refused(config, r"^config.public.path is read as config.data.path \(amlworld\) or config.data.dir")

  def test_a_canary_audit(self):
    config = _config(tempfile.mkdtemp())
    config.canary_audit.canaries = 4
    with self.assertRaisesRegex(errors.ConfigError, '^config.public.path with a canary audit is not built'):
      config_values.check_public(config)

  def test_another_runtime(self):
    config = _config(tempfile.mkdtemp())
    self._refused(config, '^config.public.path=.*: a public start runs in the simulation only',
                  runtime=object())


if __name__ == '__main__':
  tf.test.main()

import json
import os

import numpy as np
import pandas as pd
import tensorflow as tf

from tests import helpers
from tffaml import features
from tffaml.data import csv_dir
from tffaml.data import interface
from tffaml.data import schema as schema_lib
from tffaml.export import saved_model
from tffaml.export import scoring
from tffaml.privacy import accounting


def _serve(model_dir, rate):
  serve = tf.saved_model.load(model_dir).signatures[saved_model.SIGNATURE]
  n = len(rate)
  return serve(amount=tf.fill([n], 1000.0), rate=tf.constant(rate, tf.float32),
               grade=tf.fill([n], 'A'))


class HardeningTest(tf.test.TestCase):

  def export(self, **hardening):
    model_dir = os.path.join(self.create_tempdir().full_path, 'export')
    helpers.export_rate_model(model_dir, hardening=saved_model.Hardening(**hardening))
    return model_dir

  def test_full_precision_by_default(self):
    out = _serve(self.export(), [14.3])
    self.assertAllClose(out['probability'], [1 / (1 + np.exp(0.7))], rtol=1e-6)

  def test_score_rounded_to_decimals(self):
    model_dir = self.export(score_decimals=1)
    out = _serve(model_dir, [14.3, 16.0])
    self.assertAllClose(out['probability'], [0.3, 0.7])  # sigmoid(-0.7) = 0.332, sigmoid(1) = 0.731.
    self.assertAllEqual(out['label'], [0, 1])
    self.assertEqual(saved_model.read_metadata(model_dir)['serving']['hardening']['score_decimals'], 1)

  def test_decision_only(self):
    model_dir = self.export(decision_only=True)
    out = _serve(model_dir, [14.3, 16.0])
    self.assertCountEqual(out, ['label'])
    self.assertNotIn('score', saved_model.read_metadata(model_dir)['serving'])

  def test_inputs_rounded_before_the_model(self):
    out = _serve(self.export(input_steps={'rate': 5.0}), [14.3, 16.0])
    self.assertAllClose(out['probability'], [0.5, 0.5])  # Both rates become 15.

  def test_bad_options_are_named(self):
    with self.assertRaisesRegex(ValueError, r"input rounding names \['grade'\], not numeric inputs"):
      self.export(input_steps={'grade': 1.0})
    with self.assertRaisesRegex(ValueError, 'score_decimals must be in'):
      saved_model.Hardening(score_decimals=-1)


class DpPackageTest(tf.test.TestCase):
  """Under DP the package holds no raw rare value and no figure of one institution (issue 34)."""

  RARE = 'Acme Widgets Ltd'

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.data_dir, _ = helpers.write_federation(self.root)
    for bank in os.listdir(self.data_dir):  # Cells as a bank's export pads them: the statistics strip them.
      path = os.path.join(self.data_dir, bank, 'train.csv')
      frame = pd.read_csv(path, dtype=str)
      frame['grade'] = [f'  {g} ' for g in frame['grade']]
      if bank == 'bank_b':
        frame.loc[4, 'grade'] = self.RARE  # One row of one institution.
      frame.to_csv(path, index=False)
    self.schema = schema_lib.Schema.from_dict(helpers.SCHEMA)
    self.data = csv_dir.load(self.data_dir, self.schema)
    noise = features.StatisticsNoise(stddev=0.5, vocabulary_threshold=5.0, seed=1)
    self.space = features.compute_feature_space(self.data, min_category_count=1, noise=noise)
    inputs = features.keras_inputs(self.schema)
    encoded = features.encode(inputs, self.space, embedding_dim=0)
    score = tf.keras.layers.Dense(1, activation='sigmoid', kernel_initializer=tf.keras.initializers.RandomNormal(
        stddev=3.0, seed=0))(encoded)
    self.model = tf.keras.Model(inputs, score)

  def _export(self, statement):
    metrics = {'federated': {'pooled': {'auc': 0.7, 'positives': 9.0},
                             'institutions': {'bank_a': {'auc': 0.6, 'positives': 3.0}}},
               'institutions': self.data.summary(), 'privacy': statement.to_dict()}
    model_dir = os.path.join(self.create_tempdir().full_path, 'export')
    saved_model.export(self.model, model_dir, schema=self.schema, interface=interface.table_interface(self.schema),
                       threshold=0.5, metadata={'feature_space': self.space.to_dict(), 'metrics': metrics,
                                                'privacy': statement.to_dict()})
    with open(os.path.join(model_dir, saved_model.METADATA_FILE)) as f:
      return model_dir, f.read(), metrics

  def _statement(self, private):
    record = accounting.DistributedRecordDp(noise_multiplier=4.0, clip=1.0, sampling_rate=0.25, units=(60, 60, 60))
    statistics = accounting.FeatureStatisticsDp(noise_multiplier=10.0, numeric=2, categorical=1, institutions=3)
    plan = accounting.PrivacyPlan(client=None, record=record if private else None, delta=1e-5,
                                  statistics=statistics if private else None)
    return plan.statement(rounds=3, participation=[3] * 3)

  def test_the_dp_package_holds_no_rare_value_and_no_institutions_counts(self):
    statement = self._statement(private=True)
    model_dir, text, metrics = self._export(statement)
    metadata = json.loads(text)
    self.assertNotIn(self.RARE, text)
    for name in ('train_rows', 'train_positives', 'test_rows', 'bank_a', 'bank_b'):
      self.assertNotIn(f'"{name}"', text)
    self.assertEqual(metadata['metrics']['federated'], {'pooled': {'auc': 0.7, 'positives': 9.0}})
    self.assertIn('institutions', metrics)  # The run's own metrics.json keeps them.
    # The statement lists what was written: per-institution figures out of the package, pooled test metrics in.
    listed = metadata['privacy']['not_covered']
    self.assertIn('left out of the exported package', listed[-1])
    self.assertIn('the exported package holds the pooled ones only', listed[-2])
    self.assertIn(f'Not covered: {"; ".join(listed)}.', metadata['privacy']['text'])
    self.assertIn('feature statistics and vocabularies in its metadata', metadata['privacy']['covered'][1])
    # Without DP nothing is claimed and the package is as before.
    _, plain, _ = self._export(self._statement(private=False))
    self.assertIn('"train_rows"', plain)
    self.assertIn('"bank_a"', plain)

  def test_a_frequent_value_scores_as_training_saw_it_and_the_rare_one_as_unknown(self):
    model_dir, _, _ = self._export(self._statement(private=True))
    self.assertLen(self.space.vocabulary['grade'], 3)  # A, B and C: a slot each; the rare value none.
    path = os.path.join(self.data_dir, 'bank_b', 'train.csv')
    output = os.path.join(self.root, 'scored.csv')
    result = scoring.score_csv(model_dir, path, output, public_key=None)
    scored = pd.read_csv(output)
    trained = self.data.institutions[1].train  # As the statistics and training read it: cells stripped.
    expected = self.model({c: tf.constant(trained[c].to_numpy(np.float32 if c in self.schema.numeric else str))
                           for c in self.schema.features}).numpy()[:, 0]
    self.assertAllClose(scored['probability'], expected, atol=1e-6)
    self.assertEqual(result.flagged, 1)
    self.assertIn(f"grade='{self.RARE}' unknown", scored['flags'][4])
    self.assertEqual(features.category_index(self.space.vocabulary['grade'], [self.RARE]).tolist(), [0])

"""Personalized copies of the release: each institution's fine-tune, exports, thresholds and statement."""

import os
import tempfile
from unittest import mock

import numpy as np
import pandas as pd
import tensorflow as tf

from tests import helpers
from tffaml import errors
from tffaml.config import data as config_data
from tffaml.export import saved_model
from tffaml.export import scoring
from tffaml.training import evaluation
from tffaml.training import personalize
from tffaml.training import program


class OutOfFoldTest(tf.test.TestCase):

  def test_no_row_is_scored_by_a_copy_that_trained_on_its_unit(self):
    from tffaml.data import federated_data  # pylint: disable=g-import-not-at-top
    from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
    train = pd.DataFrame({'x': np.arange(40.0), schema_lib.UNIT_COLUMN: [f'acct{i % 7}' for i in range(40)]})
    institution = federated_data.Institution('bank_a', train, train.iloc[:0])
    trained = []

    def fine_tune(release, rows, schema, *, loss, how):  # A "copy" is the units it trained on.
      del release, schema, loss, how
      trained.append(set(rows.train[schema_lib.UNIT_COLUMN]))
      return trained[-1]

    def predict(copy, frame, schema):  # 1 where the copy trained on the row's unit.
      del schema
      return frame[schema_lib.UNIT_COLUMN].isin(copy).to_numpy(float)

    how = personalize.FineTune(epochs=1, batch_size=8, learning_rate=0.1, seed=0)
    with mock.patch.object(personalize, 'fine_tune', side_effect=fine_tune), \
         mock.patch.object(personalize.client_data, 'predict', side_effect=predict):
      scores = personalize.out_of_fold_scores(None, institution, None, loss=None, how=how, folds=3)
    self.assertLen(trained, 3)
    self.assertAllEqual(scores, np.zeros(40))  # Every row: a copy that never saw its account.
    self.assertEqual(set().union(*trained), {f'acct{i}' for i in range(7)})  # Each account trains 2 of 3.
    self.assertTrue(all(len(t) < 7 for t in trained))


class PersonalizedRunTest(tf.test.TestCase):
  """One smoke run with personalized copies (shared by the tests: a run takes about 20 CPU-s)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.config = helpers.smoke_config(cls.root)
    cls.config.privacy.noise_seed = 0
    cls.config.federated.eval_every = 0
    cls.config.model.alert_budget = 0.1
    cls.config.personalize.epochs = 3
    cls.config.personalize.learning_rate = 0.05  # Large: 3 epochs of 60 rows must move the weights.
    cls.config.personalize.trees = True
    cls.result = program.run(cls.config, os.path.join(cls.root, 'run'), log=lambda _: None)
    cls.names = sorted(os.listdir(cls.config.data.dir))

  def test_each_institution_gets_its_own_export_threshold_and_statement(self):
    for name in self.names:
      root = os.path.join(self.result.paths.personalized, name)
      metadata = saved_model.read_metadata(os.path.join(root, 'export'))
      with open(os.path.join(root, 'privacy.txt')) as f:
        note = f.read()
      self.assertIn(f'Personalized for {name}', note)
      self.assertIn('post-processing of the release', note)
      self.assertIn(self.result.metrics['privacy']['text'], note)  # The release's own statement, whole.
      self.assertIn(f'For {name}\'s own customers it carries no guarantee', note)
      self.assertEqual(metadata['privacy']['text'], note.rstrip('\n'))
      self.assertNotEqual(metadata['threshold'], saved_model.read_metadata(
          self.result.paths.export)['threshold'])

  def test_the_copies_differ_from_the_release_and_from_each_other(self):
    rows = os.path.join(self.config.data.dir, self.names[0], 'test.csv')
    served = {name: self._scores(os.path.join(self.result.paths.personalized, name, 'export'), rows)
              for name in self.names}
    release = self._scores(self.result.paths.export, rows)
    for name in self.names:
      self.assertGreater(np.max(np.abs(served[name] - release)), 1e-3, name)
    self.assertGreater(np.max(np.abs(served[self.names[0]] - served[self.names[1]])), 1e-3)

  def test_fine_tune_trains_a_copy_and_leaves_the_release_as_it_was(self):
    data = config_data.load_data(self.config, log=lambda _: None)
    release = self.result.model
    before = [w.copy() for w in release.get_weights()]
    how = personalize.FineTune(epochs=2, batch_size=16, learning_rate=0.05, seed=0)
    tuned = personalize.fine_tune(release, data.institutions[0], data.schema,
                                  loss=tf.keras.losses.BinaryCrossentropy(), how=how)
    for a, b in zip(before, release.get_weights()):
      self.assertAllEqual(a, b)
    self.assertFalse(all(np.array_equal(a, b) for a, b in zip(before, tuned.get_weights())))

  def _scores(self, export: str, rows: str) -> np.ndarray:
    output = os.path.join(self.create_tempdir().full_path, 'scored.csv')
    scoring.score_csv(export, rows, output, public_key=None)
    return pd.read_csv(output)['probability'].to_numpy()

  def test_each_institutions_trees_serve_its_metrics_under_the_copys_statement(self):
    from tffaml.training import evaluation  # pylint: disable=g-import-not-at-top
    trees = self.result.metrics['personalized']['trees']
    self.assertCountEqual(trees['institutions'], self.names)
    for name in self.names:
      root = os.path.join(self.result.paths.personalized, name)
      export = os.path.join(root, 'trees', 'export')
      self.assertEqual(saved_model.read_metadata(export)['privacy'],
                       saved_model.read_metadata(os.path.join(root, 'export'))['privacy'])
      rows = os.path.join(self.config.data.dir, name, 'test.csv')
      served = self._scores(export, rows)
      self.assertGreater(np.max(np.abs(served - self._scores(os.path.join(root, 'export'), rows))), 1e-3)
      labels = pd.read_csv(rows)['default'].to_numpy()
      self.assertAlmostEqual(evaluation.auc(labels, served), trees['institutions'][name]['auc'], places=4)

  def test_metrics_pool_each_copy_on_its_own_test_rows(self):
    personalized = self.result.metrics['personalized']
    self.assertCountEqual(personalized['institutions'], self.names)
    rows = sum(personalized['institutions'][n]['rows'] for n in self.names)
    self.assertEqual(personalized['pooled']['rows'], rows)
    self.assertBetween(personalized['pooled']['auc'], 0.0, 1.0)
    # Each copy's alerts flag about the budget of its own training rows, pooled: their sum.
    alerted = sum(personalized['institutions'][n]['alert_rate'] * personalized['institutions'][n]['rows']
                  for n in self.names)
    self.assertAllClose(personalized['pooled']['alert_rate'], alerted / rows)


class OwnThresholdTest(tf.test.TestCase):

  def test_flags_the_budget_of_the_rows(self):
    scores = np.arange(1000, dtype=np.float64) / 1000
    self.assertAllClose(np.mean(scores >= evaluation.budget_threshold(scores, 0.01)), 0.01, atol=1e-3)


class RefusedTest(tf.test.TestCase):

  def test_a_runtime_without_the_rows_is_refused_in_one_line(self):
    root = self.create_tempdir().full_path
    config = helpers.smoke_config(root)
    config.personalize.epochs = 1
    with self.assertRaisesRegex(errors.ConfigError, r'^config.personalize.epochs=1: personalized copies are'
                                r' trained where the rows are'):
      program.run(config, os.path.join(root, 'run'), log=lambda _: None, runtime=object())


if __name__ == '__main__':
  tf.test.main()

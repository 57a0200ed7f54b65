"""LightGBM's trees as TensorFlow ops: LightGBM's own raw scores, missing values and categories included."""

import lightgbm
import numpy as np
import tensorflow as tf

from tffaml.data import schema as schema_lib
from tffaml.models import trees


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Three numeric columns (one with NaNs, one with zeros) and a categorical one (0-9), and labels."""
  rng = np.random.default_rng(seed)
  x = np.column_stack([rng.normal(size=n), rng.normal(size=n), rng.integers(0, 10, n).astype(float),
                       rng.exponential(size=n)])
  x[rng.random(n) < 0.2, 1] = np.nan
  x[rng.random(n) < 0.3, 3] = 0.0
  logit = x[:, 0] + np.nan_to_num(x[:, 1], nan=2.0) + np.isin(x[:, 2], (2, 5, 7)) * 2.0 - x[:, 3]
  return x, (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)


def _unseen(x: np.ndarray) -> np.ndarray:
  """Values training never showed: NaN, negative, fractional and unseen categories, NaN where none was, zeros."""
  x = x.copy()
  x[0::7, 2], x[1::7, 2], x[2::7, 2] = np.nan, -1.0, 12.0
  x[3::7, 0], x[4::7, 3], x[5::7, 1] = np.nan, 0.0, 0.0
  x[6::14, 2], x[13::14, 2] = -0.5, 2.7  # Read as categories 0 and 2.
  return x


def _dump(tree: dict, **kwargs) -> dict:
  return {'max_feature_idx': 1, 'num_tree_per_iteration': 1, 'tree_info': [{'tree_structure': tree}], **kwargs}


class ForestTest(tf.test.TestCase):

  def _assert_lightgbms(self, model, x):
    forest = trees.Forest.from_lightgbm(model)
    expected = model.booster_.predict(x, raw_score=True)
    self.assertAllClose(forest.raw_scores(x).numpy(), expected, rtol=0, atol=1e-9)

  def test_raw_scores_equal_lightgbms_with_categories_and_nans(self):
    x, y = _rows(2000, seed=0)
    model = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=15, min_child_samples=5, verbose=-1,
                                    random_state=0).fit(x, y, categorical_feature=[2])
    forest = trees.Forest.from_lightgbm(model)
    self.assertTrue(forest.categorical.any())  # The test reaches both kinds of split...
    self.assertIn(trees.Missing.NAN, forest.missing)  # ...and NaN's default direction.
    test, _ = _rows(700, seed=1)
    self._assert_lightgbms(model, _unseen(test))

  def test_zero_as_missing(self):
    x, y = _rows(2000, seed=2)
    model = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=7, zero_as_missing=True, verbose=-1,
                                    random_state=0).fit(x, y)
    self.assertIn(trees.Missing.ZERO, trees.Forest.from_lightgbm(model).missing)
    test, _ = _rows(700, seed=3)
    self._assert_lightgbms(model, _unseen(test))

  def test_a_hand_built_tree(self):
    # x0 <= 0.5 (NaN left) -> 1.0; else x1 in {0, 2} -> -2.0, else 3.0.
    forest = trees.Forest.from_dump(_dump({
        'split_feature': 0, 'threshold': 0.5, 'decision_type': '<=', 'default_left': True, 'missing_type': 'NaN',
        'left_child': {'leaf_value': 1.0},
        'right_child': {'split_feature': 1, 'threshold': '0||2', 'decision_type': '==', 'default_left': False,
                        'missing_type': 'None', 'left_child': {'leaf_value': -2.0},
                        'right_child': {'leaf_value': 3.0}}}))
    self.assertEqual(forest.depth, 2)
    x = [[0.5, 0.0], [np.nan, 1.0], [0.6, 0.0], [0.6, 2.9], [0.6, 1.0], [0.6, -1.0], [0.6, 3.0], [0.6, np.nan]]
    self.assertAllEqual(forest.raw_scores(np.array(x)).numpy(), [1.0, 1.0, -2.0, -2.0, 3.0, 3.0, 3.0, 3.0])

  def test_a_tree_of_one_leaf_and_a_sum_over_trees(self):
    dump = _dump({'leaf_value': 0.25})
    dump['tree_info'].append({'tree_structure': {'leaf_value': -1.0}})
    forest = trees.Forest.from_dump(dump)
    self.assertEqual(forest.depth, 0)
    self.assertAllEqual(forest.raw_scores(np.zeros((3, 2))).numpy(), [-0.75] * 3)

  def test_models_it_cannot_convert_are_refused(self):
    with self.assertRaisesRegex(ValueError, 'multiclass'):
      trees.Forest.from_dump(_dump({'leaf_value': 0.0}, num_tree_per_iteration=3))
    with self.assertRaisesRegex(ValueError, "decision_type '>'"):
      trees.Forest.from_dump(_dump({'split_feature': 0, 'threshold': 0.5, 'decision_type': '>', 'default_left': True,
                                    'missing_type': 'None', 'left_child': {'leaf_value': 1.0},
                                    'right_child': {'leaf_value': 2.0}}))
    with self.assertRaisesRegex(ValueError, "missing_type 'Inf'"):
      trees.Missing.parse('Inf')

  def test_every_missing_type_parses(self):
    for member in trees.Missing:
      self.assertEqual(trees.Missing.parse({trees.Missing.NONE: 'None', trees.Missing.ZERO: 'Zero',
                                            trees.Missing.NAN: 'NaN'}[member]), member)

  def test_serves_from_a_saved_model_as_plain_tensorflow(self):
    x, y = _rows(1000, seed=4)
    model = lightgbm.LGBMClassifier(n_estimators=10, num_leaves=7, verbose=-1, random_state=0).fit(
        x, y, categorical_feature=[2])
    forest = trees.Forest.from_lightgbm(model)
    module = tf.Module()
    module.serve = tf.function(forest.raw_scores, input_signature=[tf.TensorSpec([None, 4], tf.float64)])
    path = self.create_tempdir().full_path
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    test = _unseen(_rows(100, seed=5)[0])
    self.assertAllClose(loaded.serve(test).numpy(), model.booster_.predict(test, raw_score=True), rtol=0, atol=1e-9)


class ForestOnScoresTest(tf.test.TestCase):

  def test_log_odds_stay_finite(self):
    self.assertAllClose(trees.log_odds(np.array([0.5, 0.0, 1.0, 0.9])),
                        [0.0, np.log(1e-7 / (1 - 1e-7)), np.log((1 - 1e-7) / 1e-7), np.log(9.0)])

  def test_compares_trees_on_release_served_by_plain_tensorflow(self):
    # compare's trees_on_release for one bank: LightGBM on its columns and two models' log-odds,
    # exported as a SavedModel and served in a process that imports TensorFlow alone.
    from tests import helpers  # pylint: disable=g-import-not-at-top
    from tffaml.data import interface  # pylint: disable=g-import-not-at-top
    from tffaml.export import saved_model  # pylint: disable=g-import-not-at-top
    from tffaml.federated import client_data  # pylint: disable=g-import-not-at-top
    from tffaml.models import tabular  # pylint: disable=g-import-not-at-top
    _, data, space = helpers.loaded_smoke_federation(rows=300)
    release, copy = (tabular.build_model(model_type=tabular.ModelType.MLP, feature_space=space, seed=s)
                     for s in (0, 1))  # Untrained: their scores still differ by row.
    bank = data.institutions[0]

    def columns(frame):
      odds = [trees.log_odds(client_data.predict(m, frame, data.schema)).numpy() for m in (release, copy)]
      return np.column_stack([trees.forest_inputs(frame, space), *odds])
    lightgbm_model = trees.fit_lightgbm(columns(bank.train), bank.train[schema_lib.LABEL_COLUMN].to_numpy(), space,
                                        seed=0)
    stacked = trees.ForestOnScores(trees.Forest.from_lightgbm(lightgbm_model), space, [release, copy])
    expected = lightgbm_model.predict_proba(columns(bank.test))[:, 1]
    self.assertAllClose(client_data.predict(stacked, bank.test, data.schema), expected, rtol=0, atol=1e-6)
    model_dir = self.create_tempdir().full_path + '/export'
    saved_model.export(stacked, model_dir, schema=data.schema, interface=interface.table_interface(data.schema),
                       threshold=0.5, metadata={})
    inputs = {c: bank.test[c].astype(float).tolist() for c in data.schema.numeric}
    inputs.update({c: bank.test[c].astype(str).tolist() for c in data.schema.categorical})
    served = helpers.serve_in_fresh_process(model_dir, inputs)
    self.assertAllClose(served['probability'], expected, rtol=0, atol=1e-6)

  def test_a_forest_of_other_columns_is_refused(self):
    from tests import helpers  # pylint: disable=g-import-not-at-top
    space = helpers.payment_space()
    forest = trees.Forest.from_dump(_dump({'leaf_value': 0.0}))  # Two columns.
    with self.assertRaisesRegex(ValueError, 'the trees read 2 columns; .* make'):
      trees.ForestOnScores(forest, space, [])


if __name__ == '__main__':
  tf.test.main()

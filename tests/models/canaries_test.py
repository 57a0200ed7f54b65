"""Canary records and the audited model of the one-run audit, on hand-built rows."""

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml.data import schema as schema_lib
from tffaml.models import canaries

_SCHEMA = schema_lib.Schema(label='default', positive='1', numeric=('amount', 'rate'), categorical=('grade',))


def _train(unit: bool = False) -> pd.DataFrame:
  frame = pd.DataFrame({'amount': [1000.0, 2500.0, 400.0], 'rate': [5.5, 12.0, 20.25],
                        'grade': ['A', 'B', 'C'], schema_lib.LABEL_COLUMN: np.array([0, 1, 0], np.int64)})
  if unit:
    frame[schema_lib.UNIT_COLUMN] = ['acct1', 'acct2', 'acct1']
  return frame


def _base():
  inputs = {'x': tf.keras.Input(shape=(2,), name='x')}
  return tf.keras.Model(inputs, tf.keras.layers.Dense(1, activation='sigmoid', kernel_initializer='ones',
                                                      bias_initializer='zeros')(inputs['x']))


class CanaryRowsTest(tf.test.TestCase):

  def test_coins_are_fair_and_seeded(self):
    self.assertAllEqual(canaries.coins(3, 1000), canaries.coins(3, 1000))
    self.assertNotAllEqual(canaries.coins(3, 1000), canaries.coins(4, 1000))
    # Fixed seed, so fixed count: Binomial(1000, 1/2) is within 500 +- 50 but for odds of 1e-10.
    self.assertBetween(int(canaries.coins(3, 1000).sum()), 450, 550)
    self.assertEqual(canaries.coins(3, 1000).dtype, bool)

  def test_the_training_schema_has_the_canary_column(self):
    schema = canaries.training_schema(_SCHEMA)
    self.assertEqual(schema.numeric, ('amount', 'rate', canaries.CANARY_COLUMN))
    self.assertEqual(schema.categorical, _SCHEMA.categorical)
    self.assertEqual(_SCHEMA.numeric, ('amount', 'rate'))  # Not changed in place.

  def test_every_canary_has_a_row_whatever_its_coin(self):
    included = np.array([True, False, True, False])
    rows = canaries.with_canaries(_train(), _SCHEMA, included)
    # The sizes (and so the privacy plan) do not depend on the coins.
    self.assertLen(rows, 3 + 4)
    self.assertEqual(list(rows.columns), [*_train().columns, canaries.CANARY_COLUMN])
    real, canary = rows.iloc[:3], rows.iloc[3:]
    pd.testing.assert_frame_equal(real.drop(columns=canaries.CANARY_COLUMN), _train())
    self.assertAllEqual(real[canaries.CANARY_COLUMN], [canaries.REAL] * 3)
    self.assertAllEqual(canary[canaries.CANARY_COLUMN], [0, canaries.EXCLUDED, 2, canaries.EXCLUDED])
    self.assertAllEqual(canary[schema_lib.LABEL_COLUMN], [1, 1, 1, 1])  # Positive: included steps raise w_j.
    self.assertAllEqual(canary[['amount', 'rate']].to_numpy(), np.zeros((4, 2)))
    self.assertAllEqual(canary['grade'], [canaries.CANARY_CATEGORY] * 4)
    self.assertEqual(rows[schema_lib.LABEL_COLUMN].dtype, np.int64)
    pd.testing.assert_frame_equal(canaries.real_rows(rows), real)
    pd.testing.assert_frame_equal(canaries.real_rows(_train()), _train())  # No canaries: as it is.

  def test_each_canary_is_its_own_privacy_unit(self):
    rows = canaries.with_canaries(_train(unit=True), _SCHEMA, np.array([True, False]))
    self.assertAllEqual(rows[schema_lib.UNIT_COLUMN],
                        ['acct1', 'acct2', 'acct1', f'{canaries.CANARY_CATEGORY}0', f'{canaries.CANARY_CATEGORY}1'])


class CanaryModelTest(tf.test.TestCase):

  def test_the_canary_model_is_the_base_model_on_real_rows_and_a_dirac_gradient_on_canaries(self):
    model = canaries.canary_model(_base, canaries=3)()
    model.get_layer(canaries.CANARY_WEIGHTS).set_weights([np.array([[0.0], [0.5], [-1.0]], np.float32)])
    x = np.array([[0.3, -1.0], [2.0, 0.5], [0.0, 0.0]], np.float32)
    inputs = {'x': x, canaries.CANARY_COLUMN: np.array([-1.0, 1.0, 2.0], np.float32)}
    with tf.GradientTape(persistent=True) as tape:
      p = model(inputs)
      losses = tf.keras.losses.binary_crossentropy(np.ones((3, 1), np.float32), p)
    gradient = tape.jacobian(losses, model.get_layer(canaries.CANARY_WEIGHTS).kernel).numpy()[:, :, 0]
    base_gradient = tape.jacobian(losses, [w for w in model.trainable_weights
                                           if not w.name.startswith(canaries.CANARY_WEIGHTS)])
    self.assertLen(base_gradient, 2)  # The base's kernel and bias.
    # Logits: the base model's (0.3 - 1.0) on the real row, CANARY_LOGIT on the canaries, whatever w is.
    p_expected = 1 / (1 + np.exp(-np.array([-0.7, canaries.CANARY_LOGIT, canaries.CANARY_LOGIT])))
    self.assertAllClose(p.numpy().ravel(), p_expected, atol=1e-6)
    # d loss / d w: nothing from the real row; -(1 - p) * CANARY_INPUT on the canary's own weight only.
    expected = np.zeros((3, 3))
    expected[1, 1], expected[2, 2] = -(1 - p_expected[1:]) * canaries.CANARY_INPUT
    self.assertAllClose(gradient, expected, rtol=1e-3)  # Keras adds 1e-7 to p inside the log.
    # And nothing of a canary's gradient reaches the base model's weights (the real row's does).
    for g in base_gradient:
      g = g.numpy().reshape(3, -1)
      self.assertAllEqual(g[1:], np.zeros_like(g[1:]))
      self.assertGreater(np.abs(g[0]).max(), 0.0)

  def test_an_excluded_canarys_row_leaves_no_trace(self):
    model = canaries.canary_model(_base, canaries=2)()
    inputs = {'x': np.array([[2.0, 0.5]], np.float32),
              canaries.CANARY_COLUMN: np.array([canaries.EXCLUDED], np.float32)}
    with tf.GradientTape() as tape:
      p = model(inputs)
      loss = tf.keras.losses.binary_crossentropy(np.ones((1, 1), np.float32), p)
    self.assertAllClose(p.numpy().ravel(), [1 / (1 + np.exp(-canaries.CANARY_LOGIT))], atol=1e-6)
    for weight, gradient in zip(model.trainable_weights, tape.gradient(loss, model.trainable_weights)):
      self.assertAllEqual(gradient, np.zeros(weight.shape), weight.name)

  def test_weights_index_finds_the_canary_weights(self):
    build = canaries.canary_model(_base, canaries=2)
    index = canaries.weights_index(build)
    self.assertStartsWith(build().trainable_weights[index].name, f'{canaries.CANARY_WEIGHTS}/')
    self.assertEqual(build().trainable_weights[index].shape, (2, 1))


if __name__ == '__main__':
  tf.test.main()

import math

import numpy as np
import tensorflow as tf

from tests import helpers
from tffaml import features
from tffaml.federated import client_data
from tffaml.models import rarity
from tffaml.models import tabular


def model():
  return tabular.build_model(model_type=tabular.ModelType.RARITY, feature_space=helpers.payment_space())


def columns(frame):
  return client_data.feature_tensors(frame, helpers.payment_space().schema)


class RarityModelTest(tf.test.TestCase):

  def test_score_is_minus_log_softmax_of_the_cells_logit(self):
    m = model()
    grid = rarity.grid_for(helpers.payment_space().vocabulary)
    self.assertEqual(m.get_layer('negative_log_share').logits.shape, [grid.size])
    frame = helpers.payment_frame([('ACH', 'incoming', 4.0, 9), ('Wire', 'outgoing', 9.0, 3)])
    # Uniform at the start: every cell scores log(cells).
    self.assertAllClose(m(columns(frame))[:, 0], [math.log(grid.size)] * 2)
    cells = grid.cells(frame)
    logits = np.zeros(grid.size, np.float32)
    logits[cells] = [math.log(3.0), math.log(2.0)]  # exp: 3 and 2, against grid.size - 2 cells of 1.
    m.get_layer('negative_log_share').logits.assign(logits)
    total = 3 + 2 + grid.size - 2
    self.assertAllClose(m(columns(frame))[:, 0], [-math.log(3 / total), -math.log(2 / total)], rtol=1e-5)

  def test_a_rows_gradient_is_softmax_minus_one_hot(self):
    m = model()
    frame = helpers.payment_frame([('ACH', 'incoming', 4.0, 9)])
    with tf.GradientTape() as tape:
      loss = m(columns(frame))[0, 0]
    gradient = tape.gradient(loss, m.get_layer('negative_log_share').logits).numpy()
    n = gradient.size
    # Uniform softmax 1/n: -(1 - 1/n) at the row's cell, 1/n elsewhere; norm below sqrt(2).
    cell = rarity.grid_for(helpers.payment_space().vocabulary).cells(frame)[0]
    self.assertAllClose(gradient[cell], -(1 - 1 / n))
    self.assertAllClose(np.delete(gradient, cell), np.full(n - 1, 1 / n))
    self.assertLess(np.linalg.norm(gradient), math.sqrt(2))

  def test_training_fits_the_shares_the_counts_give(self):
    # 70 / 20 / 10 rows in three cells: maximum likelihood gives those shares.
    frame = helpers.payment_frame([('ACH', 'incoming', 4.0, 9)] * 70 + [('Wire', 'outgoing', 9.0, 3)] * 20
                              + [('Cash', 'incoming', 12.0, 22)] * 10)
    m = model()
    inputs = columns(frame)
    m.compile(optimizer=tf.keras.optimizers.Adam(0.5),
              loss=tabular.keras_loss(tabular.per_example_loss(tabular.LossType.RECONSTRUCTION)))
    m.fit(inputs, np.zeros(len(frame)), batch_size=len(frame), epochs=300, verbose=0)
    scores = m.predict(inputs, verbose=0)[:, 0]
    self.assertAllClose(scores[[0, 70, 90]], -np.log([0.7, 0.2, 0.1]), atol=0.05)

  def test_unknown_and_unlisted_values_share_the_extra_slot(self):
    frame = helpers.payment_frame([('Bitcoin', 'internal', 4.0, 9), ('Cash', 'sideways', 4.0, 9)])
    grid = rarity.Grid(formats=('ACH',), directions=('incoming',))
    cells = grid.cells(frame)
    self.assertEqual(cells[0], cells[1])
    self.assertEqual(cells[0], ((1 * 2 + 1) * 16 + 3) * 24 + 9)  # Slots 1 and 1, amount bin 3 (4 / 1.25), hour 9.
    no_vocabulary = rarity.Grid(formats=(), directions=())
    self.assertEqual(no_vocabulary.size, 16 * 24)
    self.assertEqual(no_vocabulary.cells(frame).tolist(), [3 * 24 + 9] * 2)

  def test_under_dp_statistics_the_grid_looks_values_up_by_their_hashed_slot(self):
    # Issue 34: a DP vocabulary is the slots of the values (no value left its bank); same cells as by value.
    frame = helpers.payment_frame([('Wire', 'outgoing', 4.0, 9), ('ACH', 'incoming', 4.0, 9), ('Cash', 'x', 4.0, 9)])
    slots = lambda *values: features.HashedSlots(features.hashed(values, 64).tolist(), 64)
    in_slot_order = lambda *values: tuple(sorted(values, key=lambda v: features.hashed([v], 64)[0]))
    by_value = rarity.Grid(formats=in_slot_order('ACH', 'Wire'),
                           directions=in_slot_order('incoming', 'outgoing')).cells(frame)
    by_slot = rarity.Grid(formats=slots('ACH', 'Wire'), directions=slots('incoming', 'outgoing')).cells(frame)
    self.assertEqual(by_slot.tolist(), by_value.tolist())
    self.assertEqual(len(set(by_slot.tolist())), 3)  # 'Cash' and 'x' in the extra slots, apart from the others.
    self.assertEqual(rarity.grid_for({'payment_format': slots('ACH'), 'direction': slots('x')}).formats.buckets, 64)


if __name__ == '__main__':
  tf.test.main()

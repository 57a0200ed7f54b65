import numpy as np
import tensorflow as tf

from tests import helpers
from tffaml.federated import rarity
from tffaml.models import rarity as rarity_model


frame = helpers.payment_frame


GRID = rarity_model.Grid(formats=('ACH', 'Wire'), directions=('incoming', 'outgoing'))


class RarityTest(tf.test.TestCase):

  def test_cells_hand_computed(self):
    cells = GRID.cells(frame([('ACH', 'incoming', 0.1, 0), ('Wire', 'outgoing', 19.9, 23),
                              ('Cash', 'internal', 25.0, 12), ('ACH', 'incoming', 1.3, 1)]))
    # (format slot * 3 + direction slot) * 16 amount bins * 24 hours + amount bin * 24 + hour;
    # 1.25 nats per amount bin; unknown values share the last slot; amounts above the range the top bin.
    self.assertEqual(cells.tolist(), [0, ((1 * 3 + 1) * 16 + 15) * 24 + 23, ((2 * 3 + 2) * 16 + 15) * 24 + 12,
                                      1 * 24 + 1])
    self.assertEqual(GRID.size, 3 * 3 * 16 * 24)

  def test_federated_counts_are_the_banks_sum(self):
    a = frame([('ACH', 'incoming', 4.0, 9)] * 3)
    b = frame([('ACH', 'incoming', 4.0, 9), ('Wire', 'outgoing', 9.0, 3)])
    summed = rarity.federated_counts([a, b], GRID)  # The session's TFF runtime (tests/conftest.py).
    self.assertAllEqual(summed, rarity.counts(a, GRID) + rarity.counts(b, GRID))
    self.assertEqual(summed.sum(), 5)
    self.assertEqual(summed.max(), 4)

  def test_rarer_combinations_score_higher(self):
    common = frame([('ACH', 'incoming', 4.0, 9)] * 98 + [('Wire', 'outgoing', 9.0, 3)] * 2)
    summed = rarity.counts(common, GRID)
    test = frame([('ACH', 'incoming', 4.0, 9), ('Wire', 'outgoing', 9.0, 3), ('Wire', 'outgoing', 9.0, 14)])
    score = rarity.scores(test, GRID, summed)
    total = 100 + rarity.SMOOTHING * GRID.size
    self.assertAllClose(score, -np.log(np.array([98.5, 2.5, 0.5]) / total))


if __name__ == '__main__':
  tf.test.main()

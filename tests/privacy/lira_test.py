import math

import numpy as np
import tensorflow as tf

from tffaml.privacy import lira


class ConfidenceTest(tf.test.TestCase):

  def test_logit_of_the_own_label(self):
    phi = lira.confidence(np.array([0.8, 0.8, 0.5]), np.array([1, 0, 0]))
    self.assertAllClose(phi, [math.log(0.8 / 0.2), math.log(0.2 / 0.8), 0.0])

  def test_certainty_is_clipped_not_infinite(self):
    self.assertTrue(np.isfinite(lira.confidence(np.array([1.0, 0.0]), np.array([1, 1]))).all())


class OnlineScoresTest(tf.test.TestCase):

  def test_by_hand(self):
    # Three models, two rows; model 0 is the target. Row 0: in model 1 (φ 2), out of model 2 (φ 0);
    # row 1: in model 2 (φ 1), out of model 1 (φ 3). Every residual is 0, so both spreads are the
    # floor; with one shadow a side the means are those φ.
    phi = np.array([[1.5, 2.0], [2.0, 3.0], [0.0, 1.0]])
    inside = np.array([[1, 0], [1, 0], [0, 1]], bool)
    scores, scored = lira.online_scores(phi, inside, target=0)
    self.assertAllEqual(scored, [True, True])
    sd = 1e-6
    expected = [(-(1.5 - 2.0) ** 2 + (1.5 - 0.0) ** 2) / (2 * sd ** 2),
                (-(2.0 - 1.0) ** 2 + (2.0 - 3.0) ** 2) / (2 * sd ** 2)]
    self.assertAllClose(scores, expected, rtol=1e-9)

  def test_a_row_without_shadows_on_one_side_is_not_scored(self):
    phi = np.zeros((3, 2))
    inside = np.array([[1, 1], [1, 0], [1, 1]], bool)  # Row 0: every shadow trained on it.
    scores, scored = lira.online_scores(phi, inside, target=0)
    self.assertAllEqual(scored, [False, True])
    self.assertTrue(np.isnan(scores[0]))

  def test_finds_members_where_training_moves_confidence_and_not_where_it_does_not(self):
    rng = np.random.default_rng(0)
    models, rows = 8, 4000
    difficulty = rng.normal(0, 3, rows)  # Rows differ far more than membership moves them.
    inside = rng.random((models, rows)) < 0.5
    noise = rng.normal(0, 0.5, (models, rows))
    for effect, low, high in ((1.0, 0.85, 1.0), (0.0, 0.45, 0.55)):
      phi = difficulty + effect * inside + noise
      scores, scored = lira.online_scores(phi, inside, target=0)
      summary, _, _ = lira.roc(scores[scored], inside[0][scored])
      self.assertBetween(summary.auc, low, high)
      # The per-row means are what LiRA adds: a global threshold on φ is near chance here.
      if effect:
        self.assertLess(lira.roc(phi[0], inside[0])[0].auc, 0.65)
        self.assertGreater(summary.tpr_at_fpr[0.01], 0.1)


class RocTest(tf.test.TestCase):

  def test_by_hand(self):
    summary, fpr, tpr = lira.roc(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0], bool))
    # Thresholds 0.9 (TPR 1/2, FPR 0), 0.8 (1/2, 1/2), 0.7 (1, 1/2), 0.1 (1, 1).
    self.assertEqual(summary.auc, 0.75)
    self.assertEqual(summary.tpr_at_fpr, {0.001: 0.5, 0.01: 0.5})
    self.assertEqual((summary.members, summary.non_members), (2, 2))

  def test_needs_both_classes(self):
    with self.assertRaisesRegex(ValueError, 'both members and non-members'):
      lira.roc(np.array([0.1, 0.2]), np.array([True, True]))


if __name__ == '__main__':
  tf.test.main()

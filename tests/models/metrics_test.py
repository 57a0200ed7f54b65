import tensorflow as tf

from tffaml.models import metrics


class MetricsTest(tf.test.TestCase):

  def test_ks_hand_computed(self):
    # Scores 0.1, 0.4 (negatives) and 0.35, 0.8 (positives): above 0.4 the
    # positive rate is 1/2 and the negative rate 0; at 0.35 they are 1 and 1/2.
    ks = metrics.KolmogorovSmirnov()
    ks.update_state([[0.0], [0.0], [1.0], [1.0]], [[0.1], [0.4], [0.35], [0.8]])
    self.assertAllClose(ks.result(), 0.5, atol=1e-6)

  def test_ks_of_a_perfect_ranking_is_one(self):
    ks = metrics.KolmogorovSmirnov()
    ks.update_state([[0.0], [1.0]], [[0.2], [0.9]])
    self.assertAllClose(ks.result(), 1.0)

  def test_brier_and_accuracy(self):
    by_name = {m.name: m for m in metrics.evaluation_metrics(threshold=0.5)}
    brier, accuracy = by_name['brier'], by_name['accuracy']
    y, p = [[0.0], [1.0]], [[0.2], [0.4]]
    brier.update_state(y, p)
    accuracy.update_state(y, p)
    self.assertAllClose(brier.result(), (0.04 + 0.36) / 2)
    self.assertAllClose(accuracy.result(), 0.5)


if __name__ == '__main__':
  tf.test.main()

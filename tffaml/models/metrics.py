"""Keras metrics for credit scoring, all aggregatable across institutions.

Every metric's state is a set of sums (confusion counts at fixed thresholds,
totals), so TFF's `sum_then_finalize` gives the exact pooled value from
per-institution states, and the same metric objects serve centralized
evaluation.
"""

import tensorflow as tf

NUM_THRESHOLDS = 1000


class KolmogorovSmirnov(tf.keras.metrics.AUC):
  """KS statistic: max over thresholds of TPR - FPR.

  The largest gap between the score distributions of the two classes, the
  separation measure of credit scorecards. Shares `AUC`'s confusion counts.
  """

  def __init__(self, num_thresholds: int = NUM_THRESHOLDS, name: str = 'ks', **kwargs):
    super().__init__(num_thresholds=num_thresholds, name=name, **kwargs)

  def update_state(self, *args, **kwargs):
    # AUC returns an Operation, which TFF's dataset.reduce rejects.
    super().update_state(*args, **kwargs)

  def result(self):
    tpr = tf.math.divide_no_nan(
        self.true_positives, self.true_positives + self.false_negatives)
    fpr = tf.math.divide_no_nan(
        self.false_positives, self.false_positives + self.true_negatives)
    return tf.reduce_max(tpr - fpr)


class Positives(tf.keras.metrics.Sum):
  """Rows of the positive class: with `num_examples`, tells when ranking metrics are undefined."""

  def __init__(self, name: str = 'positives', **kwargs):
    super().__init__(name=name, **kwargs)

  def update_state(self, y_true, y_pred, sample_weight=None):
    del y_pred
    super().update_state(tf.cast(tf.reshape(y_true, [-1]), self.dtype), sample_weight)


def evaluation_metrics(threshold: float) -> list[tf.keras.metrics.Metric]:
  """AUC, AUPRC, accuracy at `threshold`, Brier score (MSE of probabilities), KS, positives."""
  return [
      Positives(),
      tf.keras.metrics.AUC(num_thresholds=NUM_THRESHOLDS, name='auc'),
      tf.keras.metrics.AUC(num_thresholds=NUM_THRESHOLDS, curve='PR', name='auprc'),
      tf.keras.metrics.BinaryAccuracy(threshold=threshold, name='accuracy'),
      tf.keras.metrics.MeanSquaredError(name='brier'),
      KolmogorovSmirnov(),
  ]

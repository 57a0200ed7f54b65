import numpy as np
import tensorflow as tf

from tffaml.training import evaluation


class RankingMetricsTest(tf.test.TestCase):

  def test_hand_computed(self):
    # Ten rows, two positives ranked 1st and 4th.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    m = evaluation.ranking_metrics(labels, scores, budgets=(0.1, 0.3), threshold=0.55)
    self.assertAllClose(m['auprc'], (1 / 1 + 2 / 4) / 2)  # Precision at each positive, averaged.
    self.assertEqual(m['recall_at_10%'], 0.5)  # The top row.
    self.assertAllClose(m['precision_at_30%'], 1 / 3)
    self.assertAllClose(m['f1_at_30%'], 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))  # Recall 1/2 at 30%.
    self.assertAllClose(m['f1_at_10%'], 2 * 1.0 * 0.5 / 1.5)  # The top row: precision 1, recall 1/2.
    self.assertEqual(m['alert_rate'], 0.4)  # Scores >= 0.55: four rows, both positives.
    self.assertEqual(m['alert_recall'], 1.0)
    self.assertEqual(m['alert_precision'], 0.5)
    self.assertAllClose(m['alert_f1'], 2 / 3)

  def test_no_threshold_no_alert_metrics_and_no_positives_is_undefined(self):
    m = evaluation.ranking_metrics(np.zeros(4), np.arange(4.0), budgets=(0.5,))
    self.assertIsNone(m['auprc'])  # Undefined: JSON null, never NaN.
    self.assertIsNone(m['recall_at_50%'])
    self.assertIsNone(m['f1_at_50%'])
    self.assertNotIn('alert_rate', m)

  def test_chance_level_by_hand(self):
    # 100 positives, 300 negatives: two null standard errors of the AUC are
    # 2 * sqrt(401 / (12 * 100 * 300)) = 0.06675.
    pooled = {'auc': 0.56, 'ks': 0.1, 'positives': 100.0, 'num_examples': 400.0}
    self.assertRegex(evaluation.chance_level(pooled), r'AUC 0.560 is within 0.067 .* of chance')
    self.assertIsNone(evaluation.chance_level(dict(pooled, auc=0.57)))
    self.assertIsNone(evaluation.chance_level(dict(pooled, auc=0.90)))
    self.assertRegex(evaluation.chance_level(dict(pooled, auc=0.44)), 'within')  # Below 0.5 too.
    self.assertIn('same score', evaluation.chance_level(dict(pooled, auc=0.9, ks=0.0)))
    self.assertIsNone(evaluation.chance_level(dict(pooled, auc=None)))  # One class: undefined.
    self.assertIsNone(evaluation.chance_level({'loss': 0.1, 'num_examples': 4.0}))  # An autoencoder.

  def test_pooled_and_per_institution(self):
    result = evaluation.alert_metrics(
        {'a': (np.array([1, 0]), np.array([0.9, 0.1])), 'b': (np.array([0, 1]), np.array([0.8, 0.2]))},
        budgets=(0.25,), threshold=0.5)
    self.assertEqual(result['institutions']['a']['auprc'], 1.0)
    self.assertEqual(result['pooled']['rows'], 4)
    self.assertEqual(result['pooled']['recall_at_25%'], 0.5)  # Top row of four: a's positive.


class RankedTest(tf.test.TestCase):

  def _rows(self, seed=0, n=3000):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.05
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + 2 * labels)))
    return labels, scores

  def test_exact_auprc_is_scikit_learns_also_with_ties(self):
    from sklearn import metrics as sk_metrics  # pylint: disable=g-import-not-at-top
    labels, scores = self._rows()
    for s in (scores, np.round(scores, 2)):  # Distinct scores, then many ties.
      m = evaluation.ranking_metrics(labels, s, budgets=())
      self.assertAllClose(m['auprc'], sk_metrics.average_precision_score(labels, s))

  def test_a_tie_at_the_cut_counts_its_share_of_positives(self):
    # Four rows tied at the top, one of them positive; a 50% budget of 4 rows flags 2 of them.
    m = evaluation.ranking_metrics(np.array([1, 0, 0, 0]), np.full(4, 0.7), budgets=(0.5,))
    self.assertAllClose(m['recall_at_50%'], 0.5)
    self.assertAllClose(m['precision_at_50%'], 0.25)

  def test_binned_and_summed_over_institutions_is_the_pooled_ranking_to_a_bin(self):
    labels, scores = self._rows(1, 20000)
    parts = np.array_split(np.arange(len(labels)), 3)
    pooled = evaluation.ranking_metrics(labels, scores, budgets=(0.01, 0.1), threshold=0.6)
    summed = evaluation.ranked_metrics(evaluation.combined(
        [evaluation.binned(labels[p], scores[p], 0.6) for p in parts]), budgets=(0.01, 0.1))
    self.assertEqual(summed['rows'], pooled['rows'])
    for key in ('alert_rate', 'alert_precision', 'alert_recall', 'alert_f1'):  # Counts at the threshold: exact.
      self.assertAllClose(summed[key], pooled[key], atol=1e-12)
    for key in ('auprc', 'recall_at_1%', 'precision_at_10%'):  # Ties within 0.15% of a score.
      self.assertAllClose(summed[key], pooled[key], atol=2e-3)
    self.assertNotAllClose(summed['auprc'], evaluation.ranked_metrics(evaluation.combined(
        [evaluation.binned(labels[p][::-1], scores[p], 0.6) for p in parts]), budgets=())['auprc'])

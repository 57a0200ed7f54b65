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


class ValidationThresholdTest(tf.test.TestCase):
  """The minority F1 at the threshold each institution picks on its validation period."""

  def test_best_f1_threshold_hand_computed(self):
    labels = np.array([0, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    # Flag >= 0.9: F1 0; >= 0.8: 2/(1+2) = 0.67; >= 0.7: 2/(2+2) = 0.5; >= 0.6: 4/(4+2) = 0.67 at
    # recall 1 (the first best, in scikit-learn's order of rising threshold).
    self.assertEqual(evaluation.best_f1_threshold(labels, scores), 0.6)
    self.assertEqual(evaluation.best_f1_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3])), float('inf'))

  def test_flagged_f1(self):
    labels = np.array([1, 1, 0, 0])
    self.assertAlmostEqual(evaluation.flagged_f1(labels, np.array([True, False, True, False])), 0.5)
    self.assertEqual(evaluation.flagged_f1(labels, np.zeros(4, bool)), 0.0)

  def test_counted_f1_hand_computed(self):
    # 10 flagged catch 3 of 5 positives: precision 0.3, recall 0.6, F1 2*0.18/0.9 = 0.4 = 6/15.
    self.assertAlmostEqual(evaluation.counted_f1(10, 3, 5), 0.4)
    self.assertEqual(evaluation.counted_f1(10, 0, 5), 0.0)
    self.assertEqual(evaluation.counted_f1(0, 0, 0), 0.0)

  def test_validated_counts_hand_computed(self):
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.7, 0.65, 0.1, 0.2, 0.3, 0.4])
    # Validation (first 4 rows) picks >= 0.6; the 6 later rows flag 0.7 (a 1) and 0.65 (a 0) of 2 positives.
    self.assertEqual(evaluation.validated(labels, scores, 0.4), (2.0, 1.0, 2.0))
    self.assertIsNone(evaluation.validated(labels, scores, 0.0))
    m = evaluation.ranking_metrics(labels, scores, budgets=(), validation_fraction=0.4)
    self.assertAlmostEqual(m['f1_at_validation_threshold'], 2 * 1 / (2 + 2))
    self.assertAlmostEqual(m['precision_at_validation_threshold'], 0.5)
    self.assertAlmostEqual(m['recall_at_validation_threshold'], 0.5)
    self.assertEqual(m['positives'], 4)  # Every other metric is on all the test rows.
    self.assertNotIn('f1_at_validation_threshold', evaluation.ranking_metrics(labels, scores, budgets=()))

  def test_pooled_sums_each_institutions_flags(self):
    a = (np.array([1, 0, 1, 0]), np.array([0.8, 0.1, 0.9, 0.7]))  # Picks >= 0.8; later flags 0.9 (a 1).
    b = (np.array([0, 1, 0, 1]), np.array([0.2, 0.3, 0.25, 0.1]))  # Picks >= 0.3; later flags nothing.
    result = evaluation.alert_metrics({'a': a, 'b': b}, budgets=(), threshold=0.5, validation_fraction=0.5)
    self.assertAlmostEqual(result['institutions']['a']['f1_at_validation_threshold'], 2 / (1 + 1))
    self.assertEqual(result['institutions']['b']['f1_at_validation_threshold'], 0.0)
    # Flagged 1 + 0, caught 1 + 0, later positives 1 + 1: 2 / (1 + 2). One global threshold
    # over the pooled rows would be another number: each bank keeps its own.
    self.assertAlmostEqual(result['pooled']['f1_at_validation_threshold'], 2 / 3)
    binned = evaluation.combined([evaluation.binned(*a, 0.5, 0.5), evaluation.binned(*b, 0.5, 0.5)])
    self.assertEqual(binned.validated, (1.0, 1.0, 2.0))  # A federation's nodes send the same counts.

  def test_summary_line(self):
    m = evaluation.ranking_metrics(np.array([0, 1, 0, 1, 1, 0, 0, 0, 1, 0]),
                                   np.array([0.9, 0.8, 0.7, 0.6, 0.7, 0.65, 0.1, 0.2, 0.3, 0.4]),
                                   budgets=(0.1,), threshold=0.5, validation_fraction=0.4)
    # AUPRC: recall steps of 1/4 at precisions 1/2, 2/4, 3/6, 4/8. At 10%: the top row, a 0. At 0.5:
    # six rows flagged, three of four positives. Validation: as in test_validated_counts_hand_computed.
    self.assertEqual(evaluation.alert_summary(m, (0.1,)),
                     'AUPRC 0.500 | at 10%: recall 0.000, F1 0.000 | at the alert threshold: F1 0.600'
                     " | at each one's validation threshold: F1 0.500 (later test rows)")

  def test_no_later_positive_is_undefined(self):
    m = evaluation.ranking_metrics(np.array([1, 0, 0, 0]), np.array([0.9, 0.1, 0.95, 0.2]), budgets=(),
                                   validation_fraction=0.5)
    self.assertIsNone(m['f1_at_validation_threshold'])
    self.assertEqual(m['precision_at_validation_threshold'], 0.0)  # Flags 0.95, a 0.


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


class LocalEvaluatorTest(tf.test.TestCase):
  """The eager evaluation is TFF's federated evaluation (`build_fed_eval`), pooled and per institution."""

  def _model_fn(self):
    from tffaml.federated import processes  # pylint: disable=g-import-not-at-top

    def keras_model():
      return tf.keras.Sequential([tf.keras.Input(shape=(2,)), tf.keras.layers.Dense(1, activation='sigmoid')])

    spec = (tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None, 1], tf.float32))
    return processes.build_model_fn(keras_model_fn=keras_model, element_spec=spec, threshold=0.5)

  def _test_sets(self):
    rng = np.random.default_rng(3)
    sets = {}
    for name, rows in (('bank_a', 37), ('bank_b', 20)):  # Uneven batches: 37 = 3 * 10 + 7.
      x = rng.normal(size=(rows, 2)).astype(np.float32)
      y = (x[:, :1] + rng.normal(scale=0.5, size=(rows, 1)) > 0).astype(np.float32)
      sets[name] = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    return sets

  def test_the_same_metrics_as_tffs_federated_evaluation(self):
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
    from tffaml.federated import processes  # pylint: disable=g-import-not-at-top
    model_fn, test_sets = self._model_fn(), self._test_sets()
    keras = tf.keras.Sequential([tf.keras.Input(shape=(2,)), tf.keras.layers.Dense(1, activation='sigmoid')])
    keras.set_weights([np.array([[1.5], [-0.4]], np.float32), np.array([0.2], np.float32)])
    weights = tff.learning.models.ModelWeights.from_model(keras)
    expected = evaluation.evaluate(processes.build_eval_process(model_fn), weights, test_sets)
    evaluator = evaluation.LocalEvaluator(model_fn)
    got = evaluator.evaluate(weights, test_sets)
    self.assertEqual(got['pooled']['num_examples'], 57)
    for ours, theirs in [(got['pooled'], expected['pooled']),
                         *((got['institutions'][n], expected['institutions'][n]) for n in test_sets)]:
      self.assertEqual(sorted(ours), sorted(theirs))
      for key in ours:
        self.assertAllClose(ours[key], theirs[key], rtol=1e-6, atol=1e-7, msg=key)
    # Evaluating other weights after these starts from fresh metrics (nothing carried over).
    keras.set_weights([np.zeros((2, 1), np.float32), np.zeros(1, np.float32)])
    constant = evaluator.evaluate(tff.learning.models.ModelWeights.from_model(keras), test_sets)
    self.assertEqual(constant['pooled']['num_examples'], 57)
    self.assertAllClose(constant['pooled']['auc'], 0.5)  # Every row scored 0.5: no ranking.
    self.assertAllClose(constant['pooled']['loss'], np.log(2.0), rtol=1e-5)

  def test_traced_ahead_it_evaluates_every_batch_size_without_tracing_again(self):
    import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
    evaluator, test_sets = evaluation.LocalEvaluator(self._model_fn()), self._test_sets()
    evaluator.trace(test_sets['bank_a'].element_spec)
    forward = evaluator._forward  # pylint: disable=protected-access
    self.assertEqual(forward.experimental_get_tracing_count(), 1)
    before = evaluator.evaluate(evaluator.layout, test_sets)  # Batches of 10 and 7 rows.
    self.assertEqual(forward.experimental_get_tracing_count(), 1)
    fresh = evaluation.LocalEvaluator(self._model_fn())
    weights = tff.learning.models.ModelWeights.from_model(evaluator._model)  # pylint: disable=protected-access
    self.assertAllClose(before, fresh.evaluate(weights, test_sets))  # Tracing ahead changes no metric.

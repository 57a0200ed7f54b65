"""Federated evaluation on each institution's test split, and pooled.

Pooled metrics come from summing the institutions' metric states (confusion
counts, totals), not from pooling rows: the same numbers a federation can
compute without moving data.
"""

import collections
import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from sklearn import metrics as sk_metrics

from tffaml.federated import quantiles

METRICS = ('auc', 'auprc', 'accuracy', 'brier', 'ks', 'loss', 'num_examples', 'positives')
RANKING = ('auc', 'auprc', 'ks')  # Undefined (None) on rows of one class.


def _metrics(output) -> dict:
  """The model's metrics (classifiers have all of `METRICS`, an autoencoder its loss)."""
  return _named(output.metrics['client_work']['eval']['current_round_metrics'])


def _named(values: Mapping) -> dict:
  out = {k: float(values[k]) for k in METRICS if k in values}
  if 'positives' in out and out['positives'] in (0, out['num_examples']):
    out.update({k: None for k in RANKING})
    out['undefined'] = ('AUC, AUPRC and KS need test rows of both classes; these hold only'
                        f' {"negatives" if out["positives"] == 0 else "positives"}.')
  return out


def evaluate(
    eval_process: tff.learning.templates.LearningProcess,
    model_weights: tff.learning.models.ModelWeights,
    test_sets: Mapping[str, tf.data.Dataset],
    *,
    per_institution: bool = True,
    run_next: Optional[Callable[[Any, list[str]], Any]] = None,
) -> dict:
  """{'pooled': metrics, 'institutions': {name: metrics}} of `model_weights`.

  `run_next(state, names)`: `eval_process.next` on the named institutions'
  test sets, where they are (by default here, on `test_sets`' datasets;
  with `run_next`, `test_sets` only names the institutions).
  """
  if run_next is None:
    run_next = lambda state, names: eval_process.next(state, [test_sets[n] for n in names])
  state = eval_process.set_model_weights(eval_process.initialize(), model_weights)
  result = {'pooled': _metrics(run_next(state, list(test_sets)))}
  if per_institution:
    result['institutions'] = {name: _metrics(run_next(state, [name])) for name in test_sets}
  return result


class LocalEvaluator:
  """TFF's federated evaluation, computed here eagerly: each institution's metric state, and their sum finalized.

  The same model, forward pass and metrics as `tff.learning.algorithms.build_fed_eval`
  (its client step: `forward_pass(batch, training=False)` over the test batches,
  then `report_local_unfinalized_metrics`; then `sum_then_finalize`), without
  building TFF computations: those took about 3 CPU-s per run in the simulation
  and 4.4 of a node's 7.7 CPU-s in its first round. States are what a node
  sends: confusion counts, sums and totals, never rows.
  """

  def __init__(self, model_fn: Callable[[], tff.learning.models.VariableModel]):
    self._model = model_fn()
    self.layout = tff.learning.models.ModelWeights.from_model(self._model)  # What weights arrive as.
    self._variables = tf.nest.flatten(self.layout)
    self._forward = tf.function(lambda batch: self._model.forward_pass(batch, training=False),
                                reduce_retracing=True)  # The last, smaller batch: one trace more at most.

  def trace(self, element_spec) -> None:
    """Traces the forward pass for batches of `element_spec`, of any size, before the first evaluation."""
    self._forward.get_concrete_function(tf.nest.map_structure(
        lambda s: tf.TensorSpec([None, *s.shape[1:]], s.dtype), element_spec))

  def state(self, weights: tff.learning.models.ModelWeights, dataset: tf.data.Dataset) -> dict:
    """{metric: [arrays]}: the unfinalized metrics of `weights` on `dataset` (one institution's test rows)."""
    for variable, value in zip(self._variables, tf.nest.flatten(weights), strict=True):
      variable.assign(value)
    self._model.reset_metrics()
    for batch in dataset:
      self._forward(batch)
    return collections.OrderedDict((name, [np.asarray(v) for v in values])
                                   for name, values in self._model.report_local_unfinalized_metrics().items())

  def finalize(self, states: Sequence[Mapping[str, Sequence[np.ndarray]]]) -> dict:
    """The metrics of the rows behind `states` together: their sum, finalized (`sum_then_finalize`)."""
    finalized = {}
    for metric in self._model.get_metrics():  # As TFF's Keras finalizers: the variables set, then result().
      for i, variable in enumerate(metric.variables):
        variable.assign(np.sum([s[metric.name][i] for s in states], axis=0))
      finalized[metric.name] = np.asarray(metric.result())
    return _named(finalized)

  def pool(self, states: Mapping[str, Mapping[str, Sequence[np.ndarray]]], *, per_institution: bool) -> dict:
    """`evaluate`'s {'pooled': metrics, 'institutions': {name: metrics}} from each institution's state."""
    result = {'pooled': self.finalize(list(states.values()))}
    if per_institution:
      result['institutions'] = {name: self.finalize([state]) for name, state in states.items()}
    return result

  def evaluate(self, weights, test_sets: Mapping[str, tf.data.Dataset], *, per_institution: bool = True) -> dict:
    """`pool` of the states computed here, on each institution's test set."""
    return self.pool({name: self.state(weights, dataset) for name, dataset in test_sets.items()},
                     per_institution=per_institution)


def budget_threshold(scores: np.ndarray, budget: float) -> float:
  """The exact score flagging `budget` of `scores` (rows someone may see: its own, or public ones)."""
  return float(np.quantile(scores, 1.0 - budget))


def chance_level(pooled: Mapping[str, Optional[float]]) -> Optional[str]:
  """Why a classifier's pooled test metrics are no better than chance, or None.

  Chance: a constant score (KS 0: no threshold separates the classes), or an
  AUC within two standard errors of 0.5 under the null (Hanley and McNeil
  1982: Var = (n+ + n- + 1) / (12 n+ n-)).
  """
  if 'auc' not in pooled or pooled.get('auc') is None:
    return None  # An autoencoder, or test rows of one class: nothing to judge.
  positives, rows = pooled['positives'], pooled['num_examples']
  negatives = rows - positives
  if pooled['ks'] == 0:
    return 'it gives every test row the same score'
  margin = 2 * math.sqrt((rows + 1) / (12 * positives * negatives))
  if abs(pooled['auc'] - 0.5) <= margin:
    return (f'its pooled test AUC {pooled["auc"]:.3f} is within {margin:.3f} (two standard errors'
            f' for {int(positives)} positives and {int(negatives)} negatives) of chance, 0.5')
  return None


def _ratio(numerator: float, denominator: float) -> Optional[float]:
  """numerator / denominator; None (undefined, JSON null) when the denominator is 0."""
  return float(numerator / denominator) if denominator else None


def budget_name(budget: float) -> str:
  return f'{100 * budget:g}%'


@dataclasses.dataclass(frozen=True)
class Ranked:
  """Rows grouped by score, highest group first; what ranking metrics need of them.

  Exact (`ranked`): a group per distinct score. Binned (`binned`): a group per
  bin of log-scores, the same bins at every institution, so that summed
  (`combined`) they rank the federation's rows without any score leaving
  its institution; rows in one bin count as tied.
  """

  positives: np.ndarray  # Positive rows per group.
  rows: np.ndarray  # Rows per group.
  alerted: Optional[tuple[float, float]] = None  # At the model's threshold: (rows alerted, positives among them).
  # At the threshold best on the institution's validation rows, over its later
  # rows: (rows flagged, positives among them, positives); `validated`.
  validated: Optional[tuple[float, float, float]] = None


def _alerted(labels: np.ndarray, scores: np.ndarray, threshold: Optional[float]):
  if threshold is None:
    return None
  alerts = np.asarray(scores) >= threshold
  return float(alerts.sum()), float((alerts & labels).sum())


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
  """The score at and above which flagging gives the best minority F1 on these rows.

  Without a positive there is no such score: nothing is flagged (inf).
  """
  if not np.sum(labels):
    return float('inf')
  precision, recall, thresholds = sk_metrics.precision_recall_curve(labels, scores)
  f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
  return float(thresholds[int(np.argmax(f1[:-1]))])


def counted_f1(flagged: float, caught: float, positives: float) -> float:
  """The minority F1 of flagging `flagged` rows that catch `caught` of `positives`: 2 caught / (flagged + positives).

  0 when nothing flagged is positive (also with no positive at all).
  """
  return 2 * caught / (flagged + positives) if caught else 0.0


def flagged_f1(labels: np.ndarray, flagged: np.ndarray) -> float:
  """The minority F1 of flagging the rows where `flagged` is true."""
  return counted_f1(float(flagged.sum()), float(np.sum(flagged & (labels == 1))), float(labels.sum()))


def validation_rows(test_rows: int, fraction: float) -> int:
  """How many of an institution's earliest test rows are its validation period."""
  return int(round(fraction * test_rows))


def validated(labels: np.ndarray, scores: np.ndarray, fraction: float) -> Optional[tuple[float, float, float]]:
  """(rows flagged, positives among them, positives) over the rows after the
  earliest `fraction`, flagged at the threshold best on those earliest rows
  (as an AML team picks its alert threshold on a validation period); None
  when `fraction` is 0."""
  if not fraction:
    return None
  labels, scores = np.asarray(labels).astype(bool), np.asarray(scores)
  split = validation_rows(len(labels), fraction)
  flagged = scores[split:] >= best_f1_threshold(labels[:split], scores[:split])
  return float(flagged.sum()), float((flagged & labels[split:]).sum()), float(labels[split:].sum())


def ranked(labels: np.ndarray, scores: np.ndarray, threshold: Optional[float] = None,
           validation_fraction: float = 0.0) -> Ranked:
  """One group per distinct score (exact ranking)."""
  labels = np.asarray(labels).astype(bool)
  _, group = np.unique(-np.asarray(scores, np.float64), return_inverse=True)
  return Ranked(positives=np.bincount(group, weights=labels).astype(np.float64),
                rows=np.bincount(group).astype(np.float64), alerted=_alerted(labels, scores, threshold),
                validated=validated(labels, scores, validation_fraction))


# A federation's pooled alert metrics rank binned scores: 16,384 bins of
# log(score) over quantiles.LOG_SCORE_RANGE, 0.0015 nat (0.15%) wide.
RANKING_BINS = 16384


def binned(labels: np.ndarray, scores: np.ndarray, threshold: Optional[float] = None,
           validation_fraction: float = 0.0) -> Ranked:
  """`RANKING_BINS` groups of log-score (and one below, one above the range), highest first.

  The validation threshold is chosen on the exact scores: it never leaves the institution.
  """
  labels = np.asarray(labels).astype(bool)
  group = quantiles.log_bin(scores, *quantiles.LOG_SCORE_RANGE, RANKING_BINS)
  count = lambda weights: np.bincount(group, weights=weights, minlength=RANKING_BINS + 2)[::-1].astype(np.float64)
  return Ranked(positives=count(labels), rows=count(None), alerted=_alerted(labels, scores, threshold),
                validated=validated(labels, scores, validation_fraction))


def _summed(counts: Sequence[Optional[tuple[float, ...]]]) -> Optional[tuple[float, ...]]:
  """The institutions' counts added up; None unless every one has them."""
  return None if None in counts else tuple(map(float, np.sum(counts, axis=0)))


def combined(parts: Sequence[Ranked]) -> Ranked:
  """The federation's binned ranking: the institutions' `binned` summed."""
  return Ranked(positives=np.sum([p.positives for p in parts], axis=0),
                rows=np.sum([p.rows for p in parts], axis=0),
                alerted=_summed([p.alerted for p in parts]), validated=_summed([p.validated for p in parts]))


def ranking_metrics(labels: np.ndarray, scores: np.ndarray, *, budgets: Sequence[float],
                    threshold: Optional[float] = None, validation_fraction: float = 0.0) -> dict[str, float]:
  """`ranked_metrics` of rows, exactly."""
  return ranked_metrics(ranked(labels, scores, threshold, validation_fraction), budgets=budgets)


def ranked_metrics(r: Ranked, *, budgets: Sequence[float]) -> dict[str, float]:
  """How AML teams judge alerts on one set of rows.

  `auprc` (average precision: precision at each score where recall grows,
  weighted by the growth, as scikit-learn computes it); for each budget b,
  recall, precision and F1 of the positive (minority) class when the
  round(b * rows) highest scores are flagged (`recall_at_1%`, `f1_at_1%`;
  rows tied at the cut count with their group's share of positives); and,
  given the model's threshold, the fraction of rows alerted, precision,
  recall and F1 of the positive (minority) class; given `validated`
  counts, the minority F1, precision and recall at each institution's
  validation threshold (`f1_at_validation_threshold`: over the rows after
  the validation period only, unlike every other metric here).
  """
  positives, rows = float(r.positives.sum()), float(r.rows.sum())
  hits, seen = np.cumsum(r.positives), np.cumsum(r.rows)
  found = r.positives > 0
  out = {'rows': int(round(rows)), 'positives': int(round(positives)),
         'auprc': float(np.sum(r.positives[found] / positives * hits[found] / seen[found])) if positives else None}
  for budget in budgets:
    flagged = max(1, int(round(budget * rows)))
    g = int(np.searchsorted(seen, flagged, 'left'))  # The group the cut falls in.
    if g < len(seen):
      before = seen[g - 1] if g else 0.0
      caught = (hits[g - 1] if g else 0.0) + r.positives[g] * (flagged - before) / r.rows[g]
    else:
      caught = positives
    recall, precision = _ratio(caught, positives), _ratio(caught, flagged)
    out[f'recall_at_{budget_name(budget)}'] = recall
    out[f'precision_at_{budget_name(budget)}'] = precision
    out[f'f1_at_{budget_name(budget)}'] = _f1(precision, recall) if positives else None
  if r.validated is not None:
    flagged, caught, later_positives = r.validated
    out.update(f1_at_validation_threshold=counted_f1(flagged, caught, later_positives) if later_positives else None,
               precision_at_validation_threshold=_ratio(caught, flagged),
               recall_at_validation_threshold=_ratio(caught, later_positives))
  if r.alerted is None:
    return out
  alerts, caught = r.alerted
  precision, recall = _ratio(caught, alerts), _ratio(caught, positives)
  out.update(alert_rate=_ratio(alerts, rows), alert_precision=precision, alert_recall=recall,
             alert_f1=_f1(precision, recall) if caught else 0.0)
  return out


def _f1(precision: Optional[float], recall: Optional[float]) -> float:
  """The harmonic mean; 0 when nothing flagged is positive."""
  return _ratio(2 * precision * recall, precision + recall) if precision and recall else 0.0


def auc(labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
  """ROC AUC of the rows; None with a single class."""
  return float(sk_metrics.roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else None


def alert_summary(metrics: Mapping[str, Any], budgets: Sequence[float]) -> str:
  """`ranked_metrics`' headline figures in one line (minority F1 is the positive class's)."""
  figure = lambda value: 'undefined' if value is None else f'{value:.3f}'
  parts = [f'AUPRC {figure(metrics["auprc"])}']
  for budget in budgets:
    name = budget_name(budget)
    parts.append(f'at {name}: recall {figure(metrics[f"recall_at_{name}"])}, F1 {figure(metrics[f"f1_at_{name}"])}')
  if 'alert_f1' in metrics:
    parts.append(f'at the alert threshold: F1 {figure(metrics["alert_f1"])}')
  if 'f1_at_validation_threshold' in metrics:
    parts.append(f'at each one\'s validation threshold: F1 {figure(metrics["f1_at_validation_threshold"])}'
                 ' (later test rows)')
  return ' | '.join(parts)


def alert_metrics(by_institution: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                  budgets: Sequence[float], threshold: Union[Optional[float], Mapping[str, float]],
                  validation_fraction: float = 0.0) -> dict:
  """`ranking_metrics` per institution and over all institutions' test rows.

  Args:
    by_institution: Institution -> (0/1 labels, scores) of its test rows.
    budgets: Fractions of rows flagged.
    threshold: The exported model's alert threshold, or each institution's
      own (personalized models): the pooled alerts are their alerts summed.
    validation_fraction: > 0: each institution's earliest such fraction of
      test rows (in order) picks its own best-F1 threshold, and
      `f1_at_validation_threshold` is measured on its later rows (pooled:
      their flags and positives summed).

  Returns:
    {'pooled': metrics, 'institutions': {name: metrics}}. Pooled rows are
    every institution's rows: a payment between two member banks counts at
    each (each bank alerts on its own side).
  """
  thresholds = threshold if isinstance(threshold, Mapping) else dict.fromkeys(by_institution, threshold)
  parts = {name: ranked(l, s, thresholds[name], validation_fraction) for name, (l, s) in by_institution.items()}
  labels = np.concatenate([l for l, _ in by_institution.values()])
  scores = np.concatenate([s for _, s in by_institution.values()])
  pooled = ranked_metrics(dataclasses.replace(
      ranked(labels, scores), alerted=_summed([r.alerted for r in parts.values()]),
      validated=_summed([r.validated for r in parts.values()])), budgets=budgets)
  return {'pooled': pooled,
          'institutions': {name: ranked_metrics(r, budgets=budgets) for name, r in parts.items()}}

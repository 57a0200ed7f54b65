"""Federated evaluation on each institution's test split, and pooled.

Pooled metrics come from summing the institutions' metric states (confusion
counts, totals), not from pooling rows: the same numbers a federation can
compute without moving data.
"""

from typing import Mapping

import tensorflow as tf
import tensorflow_federated as tff

METRICS = ('auc', 'accuracy', 'brier', 'ks', 'loss', 'num_examples')


def _metrics(output) -> dict[str, float]:
  values = output.metrics['client_work']['eval']['current_round_metrics']
  return {k: float(values[k]) for k in METRICS}


def evaluate(
    eval_process: tff.learning.templates.LearningProcess,
    model_weights: tff.learning.models.ModelWeights,
    test_sets: Mapping[str, tf.data.Dataset],
    *,
    per_institution: bool = True,
) -> dict:
  """{'pooled': metrics, 'institutions': {name: metrics}} of `model_weights`."""
  state = eval_process.set_model_weights(eval_process.initialize(), model_weights)
  result = {'pooled': _metrics(eval_process.next(state, list(test_sets.values())))}
  if per_institution:
    result['institutions'] = {
        name: _metrics(eval_process.next(state, [dataset]))
        for name, dataset in test_sets.items()
    }
  return result

"""Byzantine-robust aggregation: coordinate-wise median and trimmed mean.

Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates" (arXiv:1803.01498): per coordinate, the median of the
institutions' updates, or their mean after dropping the `trim_fraction`
largest and smallest values. Either bounds what a minority of poisoned
updates can move the aggregate.

Both need every update at the coordinator: the updates are collected with
`tff.aggregators.federated_sample` (reservoir sampling that keeps all of
them while there are at most `max_institutions`), which suits cross-silo
federations of tens of banks, not cross-device populations. Collecting
individual updates also rules out secure aggregation and client-level DP
on the same updates.
"""

from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff


def _coordinate_wise(stacked: tf.Tensor, trim_fraction: Optional[float]) -> tf.Tensor:
  """Median (trim_fraction None) or trimmed mean over axis 0."""
  ordered = tf.sort(stacked, axis=0)
  n = tf.shape(ordered)[0]
  if trim_fraction is None:
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
  k = tf.cast(tf.floor(trim_fraction * tf.cast(n, tf.float32)), tf.int32)
  return tf.reduce_mean(ordered[k:n - k], axis=0)


class CoordinateWiseFactory(tff.aggregators.UnweightedAggregationFactory):
  """Coordinate-wise median or trimmed mean of client values.

  Type signature of `create(value_type).next`:
  `(<()@SERVER, {value_type}@CLIENTS> -> <()@SERVER, value_type@SERVER, ()@SERVER>)`.
  """

  def __init__(self, *, trim_fraction: Optional[float] = None, max_institutions: int = 100):
    """Args:
      trim_fraction: Fraction trimmed at each end, in [0, 0.5); None: median.
      max_institutions: Most updates kept (see module docstring).
    """
    if trim_fraction is not None and not 0.0 <= trim_fraction < 0.5:
      raise ValueError(f'trim_fraction must be in [0, 0.5), got {trim_fraction}.')
    if max_institutions < 1:
      raise ValueError(f'max_institutions must be >= 1, got {max_institutions}.')
    self._trim_fraction = trim_fraction
    self._max = max_institutions

  def create(self, value_type) -> tff.templates.AggregationProcess:
    @tff.federated_computation()
    def init_fn():
      return tff.federated_value((), tff.SERVER)

    @tff.federated_computation(init_fn.type_signature.result, tff.FederatedType(value_type, tff.CLIENTS))
    def next_fn(state, value):
      samples = tff.aggregators.federated_sample(value, max_num_samples=self._max)

      @tff.tensorflow.computation(samples.type_signature.member)
      def reduce(stacked):
        return tf.nest.map_structure(lambda t: _coordinate_wise(t, self._trim_fraction), stacked)

      return tff.templates.MeasuredProcessOutput(
          state=state, result=tff.federated_map(reduce, samples),
          measurements=tff.federated_value((), tff.SERVER))

    return tff.templates.AggregationProcess(init_fn, next_fn)


def median() -> CoordinateWiseFactory:
  return CoordinateWiseFactory()


def trimmed_mean(trim_fraction: float) -> CoordinateWiseFactory:
  return CoordinateWiseFactory(trim_fraction=trim_fraction)


def fixed_clipping_and_zeroing(
    *, clip: float, zeroing_norm: float, weighted: bool
) -> tff.aggregators.AggregationFactory:
  """Updates with L2 norm above `zeroing_norm` are dropped (zeroed), the rest clipped to `clip`.

  The fixed-threshold counterpart of TFF's `robust_aggregator` (whose norms
  adapt to a quantile of the updates): a boosted update cannot weigh more
  than `clip` (Sun et al. 2019, "Can You Really Backdoor Federated
  Learning?", arXiv:1911.07963).
  """
  if not 0 < clip <= zeroing_norm:
    raise ValueError(f'need 0 < clip <= zeroing_norm, got clip={clip}, zeroing_norm={zeroing_norm}.')
  mean = tff.aggregators.MeanFactory() if weighted else tff.aggregators.UnweightedMeanFactory()
  return tff.aggregators.zeroing_factory(
      zeroing_norm, tff.aggregators.clipping_factory(clip, mean))


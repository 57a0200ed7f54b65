"""Gaussian DP queries whose noise is reproducible and resumable.

tensorflow-privacy's `GaussianSumQuery` draws noise from an unseeded
`tf.random_normal_initializer`, so two runs with the same seed differ and a
run resumed from a checkpoint cannot match an uninterrupted one. The queries
here draw the same Gaussian noise from a stateless generator keyed by
(`noise_seed`, stream, round, tensor index). The round counter lives in the
query's global state, which is part of the aggregator state and therefore of
every checkpoint.

Noise that can be regenerated from its seed protects nothing against whoever
knows the seed: in a deployment the seed must be secret to the aggregator
(the training program draws it from the OS when none is configured).

The mechanisms are those of McMahan et al. 2018, "Learning Differentially
Private Recurrent Language Models" (fixed clipping), and Andrew et al. 2021,
"Differentially Private Learning with Adaptive Clipping" (adaptive clipping),
unchanged apart from where the noise comes from.
"""

import collections

import dp_accounting
import tensorflow as tf
import tensorflow_privacy as tfp
from tensorflow_privacy.privacy.dp_query import quantile_estimator_query

VALUE_STREAM = 0  # Noise on the clipped model updates.
COUNT_STREAM = 1  # Noise on the clipped count of adaptive clipping.


class SeededGaussianSumQuery(tfp.GaussianSumQuery):
  """`GaussianSumQuery` with noise from a stateless, seeded generator."""

  _GlobalState = collections.namedtuple(
      '_GlobalState', ['l2_norm_clip', 'stddev', 'noise_key', 'noise_round']
  )

  def __init__(self, l2_norm_clip: float, stddev: float, *, noise_seed: int, stream: int):
    super().__init__(l2_norm_clip, stddev)
    self._noise_key = (int(noise_seed), int(stream))

  def make_global_state(self, l2_norm_clip, stddev, noise_round=0):
    return self._GlobalState(
        tf.cast(l2_norm_clip, tf.float32),
        tf.cast(stddev, tf.float32),
        tf.constant(self._noise_key, tf.int64),
        tf.cast(noise_round, tf.int64),
    )

  def get_noised_result(self, sample_state, global_state):
    round_key = tf.random.experimental.stateless_fold_in(
        global_state.noise_key, global_state.noise_round
    )
    leaves = tf.nest.flatten(sample_state)
    noised = [
        v + tf.cast(
            tf.random.stateless_normal(
                tf.shape(v),
                seed=tf.random.experimental.stateless_fold_in(round_key, i),
                stddev=global_state.stddev,
            ),
            v.dtype,
        )
        for i, v in enumerate(leaves)
    ]
    new_state = global_state._replace(noise_round=global_state.noise_round + 1)
    event = dp_accounting.GaussianDpEvent(
        global_state.stddev / global_state.l2_norm_clip
    )
    return tf.nest.pack_sequence_as(sample_state, noised), new_state, event


class _SeededQuantileEstimatorQuery(quantile_estimator_query.QuantileEstimatorQuery):
  """Private quantile estimation with seeded noise on the below-count."""

  def __init__(self, *args, noise_seed: int, **kwargs):
    self._noise_seed = noise_seed  # Read by the base constructor's hook below.
    super().__init__(*args, **kwargs)

  def _construct_below_estimate_query(self, below_estimate_stddev, expected_num_records):
    # As the base class: indicators shifted by -0.5 have sensitivity 0.5.
    return tfp.NormalizedQuery(
        SeededGaussianSumQuery(
            l2_norm_clip=0.5,
            stddev=below_estimate_stddev,
            noise_seed=self._noise_seed,
            stream=COUNT_STREAM,
        ),
        denominator=expected_num_records,
    )


class SeededQuantileAdaptiveClipSumQuery(tfp.QuantileAdaptiveClipSumQuery):
  """`QuantileAdaptiveClipSumQuery` whose two noises are seeded."""

  def __init__(
      self,
      *,
      initial_l2_norm_clip: float,
      noise_multiplier: float,
      target_unclipped_quantile: float,
      learning_rate: float,
      clipped_count_stddev: float,
      expected_num_records: float,
      noise_seed: int,
  ):
    super().__init__(
        initial_l2_norm_clip, noise_multiplier, target_unclipped_quantile,
        learning_rate, clipped_count_stddev, expected_num_records,
        geometric_update=True,
    )
    self._sum_query = SeededGaussianSumQuery(
        initial_l2_norm_clip,
        noise_multiplier * initial_l2_norm_clip,
        noise_seed=noise_seed,
        stream=VALUE_STREAM,
    )
    self._quantile_estimator_query = _SeededQuantileEstimatorQuery(
        initial_l2_norm_clip, target_unclipped_quantile, learning_rate,
        clipped_count_stddev, expected_num_records, True,
        noise_seed=noise_seed,
    )

  def get_noised_result(self, sample_state, global_state):
    result, new_state, event = super().get_noised_result(sample_state, global_state)
    # The base class rebuilds the sum state for the new clip; keep counting.
    new_sum_state = new_state.sum_state._replace(
        noise_round=global_state.sum_state.noise_round + 1
    )
    return result, new_state._replace(sum_state=new_sum_state), event

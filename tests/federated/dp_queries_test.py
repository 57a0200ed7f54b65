"""The seeded DP queries, called directly on small tensors (no TFF process)."""

import math

import numpy as np
import tensorflow as tf

from tffaml.federated import dp_queries


def _sum_query(clip=1.0, stddev=1.0, seed=0, stream=dp_queries.VALUE_STREAM):
  return dp_queries.SeededGaussianSumQuery(clip, stddev, noise_seed=seed, stream=stream)


def _summed(query, global_state, records):
  """The query's clipped sum of `records`, before noise."""
  params = query.derive_sample_params(global_state)
  state = query.initial_sample_state(records[0])
  for record in records:
    state = query.accumulate_record(params, state, record)
  return state


def _noise(query, global_state, template):
  """The noise the query adds to a zero sum shaped like `template`, and the next global state."""
  zeros = tf.nest.map_structure(tf.zeros_like, template)
  result, new_state, _ = query.get_noised_result(zeros, global_state)
  return tf.nest.map_structure(lambda t: t.numpy(), result), new_state


class ClippingTest(tf.test.TestCase):

  def test_a_record_is_clipped_to_the_l2_norm(self):
    query = _sum_query(clip=1.0)
    state = query.initial_global_state()
    self.assertAllClose(_summed(query, state, [tf.constant([3.0, 4.0])]), [0.6, 0.8])  # Norm 5 -> 1.
    self.assertAllClose(_summed(query, state, [tf.constant([0.3, 0.4])]), [0.3, 0.4])  # Norm 0.5: as is.

  def test_the_norm_is_that_of_the_whole_record(self):
    # One record of two tensors, [3] and [4]: global norm 5, clipped to 2 -> [1.2], [1.6].
    query = _sum_query(clip=2.0)
    summed = _summed(query, query.initial_global_state(), [[tf.constant([3.0]), tf.constant([4.0])]])
    self.assertAllClose(summed, [[1.2], [1.6]])

  def test_each_record_is_clipped_before_summing(self):
    query = _sum_query(clip=1.0)
    records = [tf.constant([3.0, 4.0]), tf.constant([0.0, -10.0])]  # [.6, .8] + [0, -1].
    self.assertAllClose(_summed(query, query.initial_global_state(), records), [0.6, -0.2])


class SeededNoiseTest(tf.test.TestCase):

  TEMPLATE = [tf.zeros([3]), tf.zeros([3])]

  def test_same_seed_and_round_give_the_same_noise(self):
    a, _ = _noise(_sum_query(seed=7), _sum_query(seed=7).initial_global_state(), self.TEMPLATE)
    b, _ = _noise(_sum_query(seed=7), _sum_query(seed=7).initial_global_state(), self.TEMPLATE)
    self.assertAllEqual(a, b)
    self.assertGreater(np.abs(a[0]).min(), 0.0)  # It is noise, not zeros.

  def test_another_seed_or_stream_gives_other_noise(self):
    base, _ = _noise(_sum_query(seed=7), _sum_query(seed=7).initial_global_state(), self.TEMPLATE)
    for other in (_sum_query(seed=8), _sum_query(seed=7, stream=dp_queries.COUNT_STREAM)):
      noise, _ = _noise(other, other.initial_global_state(), self.TEMPLATE)
      self.assertNotAllClose(base[0], noise[0])

  def test_each_tensor_gets_its_own_noise(self):
    query = _sum_query(seed=7)
    (first, second), _ = _noise(query, query.initial_global_state(), self.TEMPLATE)
    self.assertNotAllClose(first, second)

  def test_the_round_advances_and_a_resumed_query_draws_what_an_uninterrupted_one_does(self):
    query = _sum_query(seed=7)
    round_0, state = _noise(query, query.initial_global_state(), self.TEMPLATE)
    self.assertEqual(int(state.noise_round), 1)
    round_1, state = _noise(query, state, self.TEMPLATE)
    self.assertEqual(int(state.noise_round), 2)
    self.assertNotAllClose(round_0[0], round_1[0])  # Fresh noise every round.
    # A new process (same seed) restored from a checkpoint taken after round 0.
    restored = _sum_query(seed=7)
    resumed, _ = _noise(restored, restored.make_global_state(1.0, 1.0, noise_round=1), self.TEMPLATE)
    self.assertAllEqual(resumed, round_1)

  def test_the_noise_has_the_declared_standard_deviation(self):
    size = 40000
    query = _sum_query(clip=0.5, stddev=2.0, seed=1)
    (noise,), _ = _noise(query, query.initial_global_state(), [tf.zeros([size])])
    # Fixed seed: the same draw every run. The sample stddev's error is ~stddev / sqrt(2n).
    self.assertAllClose(np.std(noise), 2.0, atol=4 * 2.0 / np.sqrt(2 * size))
    self.assertAllClose(np.mean(noise), 0.0, atol=4 * 2.0 / np.sqrt(size))

  def test_the_privacy_event_carries_the_noise_multiplier(self):
    query = _sum_query(clip=0.5, stddev=2.0)
    _, _, event = query.get_noised_result(tf.zeros([2]), query.initial_global_state())
    self.assertAllClose(event.noise_multiplier, 4.0)  # stddev / clip: what the accountant is told.


def _adaptive(*, clip=1.0, noise_multiplier=0.0, target=0.5, learning_rate=0.2, count_stddev=0.0,
              records=2, seed=0):
  return dp_queries.SeededQuantileAdaptiveClipSumQuery(
      initial_l2_norm_clip=clip, noise_multiplier=noise_multiplier, target_unclipped_quantile=target,
      learning_rate=learning_rate, clipped_count_stddev=count_stddev, expected_num_records=records,
      noise_seed=seed)


def _adaptive_round(query, global_state, records):
  params = query.derive_sample_params(global_state)
  state = query.initial_sample_state(records[0])
  for record in records:
    state = query.accumulate_record(params, state, record)
  return query.get_noised_result(state, global_state)


class AdaptiveClipTest(tf.test.TestCase):

  def test_the_clip_grows_when_too_many_records_are_clipped(self):
    query = _adaptive(clip=1.0, target=0.5, learning_rate=0.2)
    records = [tf.constant([3.0, 4.0]), tf.constant([0.0, 2.0])]  # Both above the clip.
    result, state, _ = _adaptive_round(query, query.initial_global_state(), records)
    self.assertAllClose(result, [0.6, 1.8])  # Clipped at 1 before the update.
    # None unclipped against a target of half: clip * exp(-0.2 * (0 - 0.5)).
    self.assertAllClose(state.sum_state.l2_norm_clip, math.exp(0.1))

  def test_the_clip_shrinks_when_too_few_records_are_clipped(self):
    query = _adaptive(clip=1.0, target=0.5, learning_rate=0.2)
    records = [tf.constant([0.3, 0.4]), tf.constant([0.0, 0.1])]  # Both below the clip.
    _, state, _ = _adaptive_round(query, query.initial_global_state(), records)
    self.assertAllClose(state.sum_state.l2_norm_clip, math.exp(-0.1))

  def test_the_value_noise_follows_the_new_clip(self):
    query = _adaptive(clip=1.0, noise_multiplier=2.0)
    _, state, _ = _adaptive_round(query, query.initial_global_state(), [tf.constant([3.0, 4.0])] * 2)
    self.assertAllClose(state.sum_state.stddev, 2.0 * state.sum_state.l2_norm_clip)

  def test_both_noises_are_seeded_and_their_rounds_keep_counting(self):
    records = [tf.constant([3.0, 4.0]), tf.constant([0.3, 0.4])]
    runs = []
    for _ in range(2):
      query = _adaptive(noise_multiplier=1.0, count_stddev=0.5, seed=5)
      state, results = query.initial_global_state(), []
      for _ in range(2):
        result, state, _ = _adaptive_round(query, state, records)
        results.append((result.numpy(), state.sum_state.l2_norm_clip.numpy()))
      runs.append(results)
      below_state = state.quantile_estimator_state.below_estimate_state.numerator_state
      # Without this the rebuilt sum state would restart at round 0: the same noise every round.
      self.assertEqual(int(state.sum_state.noise_round), 2)
      self.assertEqual(int(below_state.noise_round), 2)
      self.assertEqual(below_state.noise_key.numpy().tolist(), [5, dp_queries.COUNT_STREAM])
    for (result_a, clip_a), (result_b, clip_b) in zip(*runs):  # Same seed: the same rounds.
      self.assertAllEqual(result_a, result_b)
      self.assertEqual(clip_a, clip_b)

from unittest import mock

from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml.federated import aggregators

VECTOR = tff.TensorType(np.float32, [2])


def _fixed(noise=0.0, clip=1.0, clients=1, seed=0):
  return aggregators.gaussian_fixed(
      noise_multiplier=noise, clients_per_round=clients, clip=clip, noise_seed=seed)


class TypeSignatureTest(tf.test.TestCase):

  def test_gaussian_fixed_next_signature(self):
    process = _fixed().create(VECTOR)
    signature = process.next.type_signature
    self.assertEqual(str(signature.parameter[1]), '{float32[2]}@CLIENTS')
    self.assertEqual(str(signature.result.result), 'float32[2]@SERVER')

  def test_dp_with_weighting_is_refused(self):
    with self.assertRaisesRegex(ValueError, "'gaussian_fixed' gives client-level DP only with uniform"):
      aggregators.configure_aggregator(
          aggregator_type=aggregators.AggregatorType.GAUSSIAN_FIXED, weighted=True,
          clients_per_round=3, noise_multiplier=1.0)

  def test_every_aggregator_is_built_or_refused_for_each_weighting(self):
    for aggregator_type in aggregators.AggregatorType:
      for weighted in (False, True):
        build = lambda: aggregators.configure_aggregator(
            aggregator_type=aggregator_type, weighted=weighted, clients_per_round=3,
            noise_multiplier=1.0)
        if weighted and not aggregator_type.weighs_institutions:
          with self.assertRaisesRegex(ValueError, 'weighted=False'):
            build()
          continue
        factory = build()
        expected = (tff.aggregators.WeightedAggregationFactory if weighted
                    else tff.aggregators.UnweightedAggregationFactory)
        self.assertIsInstance(factory, expected, (aggregator_type, weighted))
    # Only the noiseless mean-like aggregators have a weighted form.
    self.assertCountEqual(
        [t.value for t in aggregators.AggregatorType if t.weighs_institutions],
        ['mean', 'robust', 'secure', 'clipping'])

  def test_which_aggregators_need_each_update(self):
    # Secure aggregation shows the coordinator only the sum: these are the
    # types a federation with secure aggregation refuses.
    self.assertCountEqual(
        [t.value for t in aggregators.AggregatorType if t.needs_each_update],
        ['gaussian_adaptive', 'robust', 'secure', 'clipping', 'median', 'trimmed_mean'])

  def test_bad_clip_is_named(self):
    with self.assertRaisesRegex(ValueError, 'clip must be > 0, got -1'):
      _fixed(clip=-1.0)


class ExecutionTest(tf.test.TestCase, parameterized.TestCase):

  def test_clip_to_unit_norm(self):
    process = _fixed().create(VECTOR)
    output = process.next(process.initialize(), [np.array([3.0, 4.0], np.float32)])
    self.assertAllClose(output.result, [0.6, 0.8])

  def test_clip_then_average_two_institutions(self):
    process = _fixed(clients=2).create(VECTOR)
    output = process.next(process.initialize(), [
        np.array([3.0, 4.0], np.float32), np.array([0.3, 0.4], np.float32)])
    self.assertAllClose(output.result, [0.45, 0.6])  # ([.6, .8] + [.3, .4]) / 2

  def test_noise_is_seeded_and_fresh_every_round(self):
    zeros = [np.zeros(2, np.float32)]
    first, second = _fixed(noise=1.0, seed=7).create(VECTOR), _fixed(noise=1.0, seed=7).create(VECTOR)
    a1 = first.next(first.initialize(), zeros)
    b1 = second.next(second.initialize(), zeros)
    self.assertAllEqual(a1.result, b1.result)
    a2 = first.next(a1.state, zeros)
    self.assertNotAllClose(a1.result, a2.result)
    other = _fixed(noise=1.0, seed=8).create(VECTOR)
    self.assertNotAllClose(a1.result, other.next(other.initialize(), zeros).result)

  def test_noise_standard_deviation(self):
    size = 40000
    process = _fixed(noise=2.0, clip=0.5, seed=1).create(tff.TensorType(np.float32, [size]))
    noise = process.next(process.initialize(), [np.zeros(size, np.float32)]).result
    # stddev = noise_multiplier * clip = 1; the sample stddev's error is ~1/sqrt(2n).
    self.assertAllClose(np.std(noise), 1.0, atol=4 / np.sqrt(2 * size))
    self.assertAllClose(np.mean(noise), 0.0, atol=4 / np.sqrt(size))

  def test_adaptive_works_with_few_institutions(self):
    with self.assertRaises(ValueError):  # What TFF's default does.
      tff.learning.dp_aggregator(noise_multiplier=1.0, clients_per_round=5)
    factory = aggregators.gaussian_adaptive(
        noise_multiplier=1.0, clients_per_round=5, initial_clip=1.0,
        target_unclipped_quantile=0.5, clip_learning_rate=0.2, noise_seed=3)
    process = factory.create(VECTOR)
    state = process.initialize()
    values = [np.array([3.0, 4.0], np.float32)] * 5
    first = process.next(state, values)
    again = factory.create(VECTOR).next(factory.create(VECTOR).initialize(), values)
    self.assertAllEqual(first.result, again.result)
    self.assertTrue(np.all(np.isfinite(first.result)))

  @parameterized.parameters(True, False)
  def test_secure_matches_plain_mean_within_quantization(self, weighted):
    values = [np.array([0.1, -0.2], np.float32), np.array([0.05, 0.4], np.float32),
              np.array([-0.3, 0.25], np.float32)]
    weights = [1.0, 2.0, 1.0] if weighted else None
    results = {}
    for kind in (aggregators.AggregatorType.SECURE, aggregators.AggregatorType.MEAN):
      factory = aggregators.configure_aggregator(aggregator_type=kind, weighted=weighted, clients_per_round=3)
      process = factory.create(VECTOR, tff.TensorType(np.float32)) if weighted else factory.create(VECTOR)
      args = (process.initialize(), values) + ((weights,) if weighted else ())
      results[kind] = process.next(*args).result
    # The secure sum quantizes to 2**20 levels over the clip range: errors ~1e-6.
    self.assertAllClose(results[aggregators.AggregatorType.SECURE],
                        results[aggregators.AggregatorType.MEAN], atol=1e-5)
    expected = np.average(values, axis=0, weights=weights)
    self.assertAllClose(results[aggregators.AggregatorType.MEAN], expected, atol=1e-6)

  def test_secure_signature_is_a_server_mean(self):
    process = aggregators.configure_aggregator(
        aggregator_type=aggregators.AggregatorType.SECURE, weighted=False, clients_per_round=3).create(VECTOR)
    self.assertEqual(str(process.next.type_signature.parameter[1]), '{float32[2]}@CLIENTS')
    self.assertEqual(str(process.next.type_signature.result.result), 'float32[2]@SERVER')

  @parameterized.parameters(True, False)
  def test_mean_and_robust(self, weighted):
    for kind in (aggregators.AggregatorType.MEAN, aggregators.AggregatorType.ROBUST):
      factory = aggregators.configure_aggregator(
          aggregator_type=kind, weighted=weighted, clients_per_round=2)
      self.assertIsInstance(
          factory, tff.aggregators.WeightedAggregationFactory if weighted
          else tff.aggregators.UnweightedAggregationFactory)



class DispatchTest(tf.test.TestCase):

  def test_every_aggregator_type_builds_one_that_aggregates_a_vector(self):
    for aggregator_type in aggregators.AggregatorType:
      factory = aggregators.configure_aggregator(
          aggregator_type=aggregator_type, weighted=False, clients_per_round=3, noise_multiplier=0.5)
      process = factory.create(VECTOR)
      self.assertEqual(str(process.next.type_signature.result[1].member), 'float32[2]', aggregator_type)

  def test_every_aggregator_type_has_a_builder(self):
    # A new member without its entry in BUILDERS fails here, not in a run.
    self.assertCountEqual(aggregators.BUILDERS, aggregators.AggregatorType)

  def test_a_type_without_a_builder_is_refused_by_name(self):
    with mock.patch.dict(aggregators.BUILDERS):
      del aggregators.BUILDERS[aggregators.AggregatorType.MEDIAN]
      with self.assertRaisesRegex(ValueError, r'MEDIAN.*has no entry in tffaml.federated.aggregators.BUILDERS'):
        aggregators.build(aggregators.AggregatorType.MEDIAN, aggregators.Params(weighted=False, clients_per_round=3))

  def test_each_builder_reads_its_own_params(self):
    # `clipping` drops updates above its zeroing norm; the mean reads neither field.
    params = aggregators.Params(weighted=False, clients_per_round=2, clip=1.0, zeroing_norm=2.0)
    values = [np.array([3.0, 4.0], np.float32), np.array([0.3, 0.4], np.float32)]
    results = {}
    for kind in (aggregators.AggregatorType.CLIPPING, aggregators.AggregatorType.MEAN):
      process = aggregators.build(kind, params).create(VECTOR)
      results[kind] = process.next(process.initialize(), values).result
    self.assertAllClose(results[aggregators.AggregatorType.CLIPPING], [0.15, 0.2])  # [3, 4] zeroed, then averaged.
    self.assertAllClose(results[aggregators.AggregatorType.MEAN], [1.65, 2.2])


if __name__ == '__main__':
  tf.test.main()

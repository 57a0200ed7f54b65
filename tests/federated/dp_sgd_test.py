
from absl.testing import parameterized
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tests import helpers
from tffaml import features
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.data import shards
from tffaml.federated import aggregators
from tffaml.federated import client_data
from tffaml.federated import dp_sgd
from tffaml.federated import processes
from tffaml.models import tabular

P = processes


def _noised_mean(grads, segments=None, **kwargs):
  if segments is not None:
    segments = tf.constant(segments, tf.int32)
  return [t.numpy() for t in dp_sgd._clipped_noised_mean_gradient(
      [tf.constant(g, tf.float32) for g in grads], seed=tf.constant([1, 2], tf.int64),
      segments=segments, **kwargs)]


class ClippingAndNoiseTest(tf.test.TestCase):

  def test_clip_hand_computed(self):
    # Record 1: [3, 4] has norm 5 -> [0.6, 0.8]; record 2: [0.3, 0.4] is kept.
    (mean,) = _noised_mean([[[3.0, 4.0], [0.3, 0.4]]], l2_norm_clip=1.0,
                           noise_multiplier=0.0, expected_batch_size=2.0)
    self.assertAllClose(mean, [0.45, 0.6])

  def test_clip_uses_the_norm_across_all_variables(self):
    # Record: kernel [3] and bias [4]: joint norm 5, each scaled by 1/5.
    kernel, bias = _noised_mean([[[3.0]], [[4.0]]], l2_norm_clip=1.0,
                                noise_multiplier=0.0, expected_batch_size=1.0)
    self.assertAllClose(kernel, [0.6])
    self.assertAllClose(bias, [0.8])

  def test_unit_gradient_is_the_sum_of_its_rows_then_clipped(self):
    # Unit 0 = rows [3, 0] + [0, 4] = [3, 4] -> [0.6, 0.8]; unit 1 = [0.1, 0] kept.
    (mean,) = _noised_mean([[[3.0, 0.0], [0.1, 0.0], [0.0, 4.0]]], segments=[0, 1, 0],
                           l2_norm_clip=1.0, noise_multiplier=0.0, expected_batch_size=1.0)
    self.assertAllClose(mean, [0.7, 0.8])

  def test_noise_standard_deviation(self):
    # σ = 2, C = 0.5: noise std 1.0 on the sum, / B = 4 -> 0.25.
    (mean,) = _noised_mean([np.zeros([3, 50_000])], l2_norm_clip=0.5,
                           noise_multiplier=2.0, expected_batch_size=4.0)
    # The sample std of 50,000 normals is within 2% of the truth w.p. > 0.999.
    self.assertAllClose(np.std(mean), 0.25, rtol=0.02)
    self.assertAllClose(np.mean(mean), 0.0, atol=0.005)

  def test_empty_batch_gives_pure_noise(self):
    (mean,) = _noised_mean([np.zeros([0, 4])], l2_norm_clip=1.0,
                           noise_multiplier=1.0, expected_batch_size=1.0)
    self.assertEqual(mean.shape, (4,))
    self.assertGreater(np.abs(mean).sum(), 0)


class PoissonBatchesTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.schema = schema_lib.Schema.from_dict(helpers.SCHEMA)
    cls.frame = schema_lib.validate_frame(helpers.institution_frame(400, seed=0), cls.schema, source='x.csv')

  def _batches(self, seed, batch=20, epochs=3):
    return list(dp_sgd.poisson_batches(
        self.frame, self.schema, expected_batch_size=batch, epochs=epochs, seed=seed))

  def test_steps_and_expected_batch_size(self):
    batches = self._batches(seed=0)
    self.assertLen(batches, 60)  # 3 epochs * 400 rows / 20.
    sizes = np.array([b[1].shape[0] for b in batches])
    # Binomial(400, 0.05) per step: mean 20, and the sizes vary.
    self.assertAllClose(sizes.mean(), 20.0, atol=2.0)
    self.assertGreater(sizes.std(), 1.0)
    x, y, segments, seed = batches[0]
    self.assertEqual(x['amount'].shape[0], y.shape[0])
    self.assertAllEqual(segments, np.arange(y.shape[0]))  # Every row its own unit.
    self.assertEqual(seed.shape, (2,))

  def test_deterministic_given_seed(self):
    a, b, c = self._batches(seed=5), self._batches(seed=5), self._batches(seed=6)
    self.assertAllEqual(a[3][0]['amount'], b[3][0]['amount'])
    self.assertAllEqual(a[3][3], b[3][3])
    self.assertNotAllEqual(a[3][3], c[3][3])

  def test_distributed_round_is_one_poisson_sample_at_rate_q(self):
    samples = [list(dp_sgd.poisson_sample(self.frame, self.schema, sampling_rate=0.25, steps=1, seed=s))
               for s in range(40)]
    self.assertEqual({len(s) for s in samples}, {1})
    sizes = np.array([s[0][1].shape[0] for s in samples])
    # Binomial(400, 0.25): mean 100, sd 8.7; the mean of 40 draws is within 4 of 100.
    self.assertAllClose(sizes.mean(), 100.0, atol=4.0)
    with self.assertRaisesRegex(ValueError, r'sampling_rate must be in \(0, 1\], got 0'):
      dp_sgd.poisson_sample(self.frame, self.schema, sampling_rate=0, steps=1, seed=0)

  def test_a_stored_split_gives_the_steps_of_the_rows_in_memory(self):
    # The same seed samples the same rows with config.data.stream on and off,
    # though the file holds the rows shuffled.
    stored = shards.store(federated_data.Institution('bank', self.frame, self.frame), self.schema,
                          self.create_tempdir().full_path)
    rate, steps = dp_sgd.batches_plan(units=400, expected_batch_size=20, epochs=1)
    expected = list(dp_sgd.poisson_sample(self.frame, self.schema, sampling_rate=rate, steps=steps, seed=9))
    streamed = list(dp_sgd.selected_steps(stored.train_path, self.schema, dp_sgd.stored_selection(
        stored, self.schema, sampling_rate=rate, steps=steps, seed=9)))
    self.assertLen(streamed, 20)
    self.assertEqual(streamed[0][0].keys(), expected[0][0].keys())
    for got, want in zip(streamed, expected):
      for name in want[0]:
        self.assertAllEqual(got[0][name], want[0][name])
      for part in (1, 2, 3):  # Labels, each row's unit, the step's noise seed.
        self.assertAllEqual(got[part], want[part])
    with self.assertRaisesRegex(ValueError, "'account' groups them into units"):
      dp_sgd.stored_selection(stored, schema_lib.Schema.from_dict(dict(helpers.SCHEMA, unit='account')),
                              sampling_rate=rate, steps=steps, seed=9)

  def test_batch_larger_than_institution_is_refused(self):
    with self.assertRaisesRegex(ValueError, r'expected_batch_size must be in \[1, 400\].*got 401'):
      self._batches(seed=0, batch=401)

  def test_units_are_sampled_whole_and_capped(self):
    frame = self.frame.assign(**{schema_lib.UNIT_COLUMN: [f'acct{i % 40}' for i in range(400)]})
    batches = list(dp_sgd.poisson_batches(frame, self.schema, expected_batch_size=4, epochs=1,
                                          seed=1, max_rows_per_unit=3))
    self.assertLen(batches, 10)  # 40 units / 4.
    for x, _, segments, _ in batches:
      segments = segments.numpy()
      # Each sampled unit contributes exactly min(10 rows, cap 3) = 3 consecutive rows.
      self.assertAllEqual(np.bincount(segments), np.full(segments.max() + 1 if len(segments) else 0, 3))
      self.assertTrue((np.diff(segments) >= 0).all())
    uncapped = next(iter(dp_sgd.poisson_batches(frame, self.schema, expected_batch_size=4,
                                                epochs=1, seed=1)))
    self.assertAllEqual(np.unique(np.bincount(uncapped[2].numpy())), [10])


class DpSgdProcessTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = helpers.load_federation()
    cls.space = features.compute_feature_space(cls.data, min_category_count=1)
    cls.element_spec = element_spec = client_data.to_dataset(
        cls.data.institutions[0].train, cls.data.schema, batch_size=8).element_spec
    cls.keras_model_fn = staticmethod(lambda: tabular.build_model(
        model_type=tabular.ModelType.LOGISTIC, feature_space=cls.space))
    cls.model_fn = staticmethod(processes.build_model_fn(
        keras_model_fn=cls.keras_model_fn, element_spec=element_spec, threshold=0.5))

  def _datasets(self, seed=0):
    return [dp_sgd.poisson_batches(i.train, self.data.schema, expected_batch_size=8,
                                   epochs=1, seed=seed + k)
            for k, i in enumerate(self.data.institutions)]

  def _client_work(self, clip=1.0, noise=0.0, lr=0.1):
    return dp_sgd.build_dp_sgd_client_work(
        model_fn=self.model_fn, optimizer=P.build_optimizer(P.OptimizerType.SGD, learning_rate=lr),
        l2_norm_clip=clip, noise_multiplier=noise, expected_batch_size=8)

  def test_client_work_type_signature(self):
    signature = self._client_work().next.type_signature
    self.assertEqual(signature.parameter[2].placement.uri, 'clients')
    self.assertIn('int64[2]', str(signature.parameter[2].member))
    self.assertEqual(
        str(signature.result[2].member), '<train=<steps=int64,sampled_examples=int64>>')

  @parameterized.named_parameters(('logistic_one_hot', tabular.ModelType.LOGISTIC),
                                  ('mlp_embeddings', tabular.ModelType.MLP))
  def test_per_row_gradients_are_each_rows_own(self, model_type):
    x, y, _, _ = next(iter(self._datasets()[0]))
    keras_model = tabular.build_model(model_type=model_type, feature_space=self.space, hidden_units=(6,),
                                      embedding_dim=2)
    loss_fn = tf.keras.losses.binary_crossentropy
    model = processes.build_model_fn(keras_model_fn=lambda: keras_model, element_spec=self.element_spec)()
    got = dp_sgd._per_row_gradients(model, loss_fn, keras_model.trainable_variables, x, y)
    for row in range(y.shape[0]):
      with tf.GradientTape() as tape:
        loss = loss_fn(y[row:row + 1], keras_model({k: v[row:row + 1] for k, v in x.items()}))
      expected = [tf.convert_to_tensor(g) for g in tape.gradient(loss, keras_model.trainable_variables)]
      self.assertAllClose([g[row] for g in got], expected, atol=1e-6)

  def test_one_step_without_noise_or_binding_clip_is_sgd_on_the_sampled_sum(self):
    batch = next(iter(self._datasets()[0]))
    x, y, _, _ = batch
    model = self.keras_model_fn()
    with tf.GradientTape() as tape:
      loss_sum = tf.reduce_sum(tf.keras.losses.binary_crossentropy(y, model(x)))
    expected = [0.1 * g.numpy() / 8 for g in tape.gradient(loss_sum, model.trainable_variables)]
    process = self._client_work(clip=1e6)
    weights = tff_weights(model)
    one_step = tf.data.Dataset.from_tensors(batch)
    output = process.next(process.initialize(), [weights], [one_step])
    (result,) = output.result
    self.assertAllClose(result.update, expected, atol=1e-6)
    self.assertEqual(output.measurements['train']['steps'], 1)
    self.assertEqual(output.measurements['train']['sampled_examples'], y.shape[0])

  @parameterized.named_parameters(
      ('record_dp_only', aggregators.AggregatorType.MEAN),
      ('record_and_client_dp', aggregators.AggregatorType.GAUSSIAN_FIXED),
  )
  def test_round_runs_and_is_deterministic(self, aggregator_type):
    def run_round():
      process = processes.build_dp_sgd_train_parts(
          model_fn=self.model_fn,
          client_optimizer=P.build_optimizer(P.OptimizerType.SGD, learning_rate=0.1),
          server_optimizer=P.build_optimizer(P.OptimizerType.SGD, learning_rate=1.0),
          aggregator=aggregators.configure_aggregator(
              aggregator_type=aggregator_type, weighted=False, clients_per_round=3,
              noise_multiplier=0.5, clip=1.0, noise_seed=3),
          l2_norm_clip=1.0, noise_multiplier=1.0, expected_batch_size=8).compose()
      state = process.initialize()
      state = process.set_model_weights(state, tff_weights(self.keras_model_fn()))
      output = process.next(state, self._datasets())
      return process.get_model_weights(output.state).trainable, output.metrics

    first, metrics = run_round()
    second, _ = run_round()
    self.assertAllClose(first, second)
    initial = tff_weights(self.keras_model_fn()).trainable
    self.assertGreater(max(np.abs(a - b).max() for a, b in zip(first, initial)), 0)
    self.assertEqual(metrics['client_work']['train']['steps'], 3 * 8)  # ceil(60 / 8) each.


def tff_weights(keras_model):
  return tff.learning.models.ModelWeights.from_model(keras_model)


if __name__ == '__main__':
  tf.test.main()


from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tests import helpers
from tffaml import features
from tffaml.federated import aggregators
from tffaml.federated import client_data
from tffaml.federated import processes
from tffaml.models import tabular
import tensorflow_federated as tff

P = processes


class ProcessesTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = helpers.load_federation()
    space = features.compute_feature_space(cls.data, min_category_count=1)
    cls.datasets = [client_data.to_dataset(i.train, cls.data.schema, batch_size=16, shuffle_seed=0)
                    for i in cls.data.institutions]
    cls.model_fn = staticmethod(processes.build_model_fn(
        keras_model_fn=lambda: tabular.build_model(
            model_type=tabular.ModelType.LOGISTIC, feature_space=space),
        # No classification metrics: these tests read weights, types and example counts, and the
        # metrics' graphs are about half of each build's tracing.
        element_spec=cls.datasets[0].element_spec, threshold=None))

  def _build(self, algorithm, weighting, server=P.OptimizerType.SGD, aggregator=None, mu=0.0):
    aggregator = aggregator or aggregators.configure_aggregator(
        aggregator_type=aggregators.AggregatorType.MEAN,
        weighted=weighting is P.Weighting.EXAMPLES, clients_per_round=3)
    return P.build_train_process(
        model_fn=self.model_fn, algorithm=algorithm, weighting=weighting,
        client_optimizer=P.build_optimizer(P.OptimizerType.SGD, learning_rate=0.1),
        server_optimizer=P.build_optimizer(server, learning_rate=0.5),
        aggregator=aggregator, proximal_strength=mu)

  @parameterized.named_parameters(('weighted', P.Weighting.EXAMPLES), ('uniform', P.Weighting.UNIFORM))
  def test_parts_run_apart_equal_tffs_fed_avg(self, weighting):
    weighted = weighting is P.Weighting.EXAMPLES
    kwargs = dict(client_optimizer=P.build_optimizer(P.OptimizerType.SGD, learning_rate=0.1),
                  server_optimizer=P.build_optimizer(P.OptimizerType.ADAM, learning_rate=0.05))
    aggregator = aggregators.configure_aggregator(
        aggregator_type=aggregators.AggregatorType.MEAN, weighted=weighted, clients_per_round=3)
    build = (tff.learning.algorithms.build_weighted_fed_avg if weighted
             else tff.learning.algorithms.build_unweighted_fed_avg)
    reference = build(self.model_fn, client_optimizer_fn=kwargs['client_optimizer'],
                      server_optimizer_fn=kwargs['server_optimizer'], model_aggregator=aggregator,
                      loop_implementation=P.LOOP)
    parts = P.build_fed_avg_parts(model_fn=self.model_fn, weighting=weighting, aggregator=aggregator, **kwargs)
    expected = state = reference.initialize()
    for _ in range(2):  # The second round also checks the server optimizer's state.
      expected = reference.next(expected, self.datasets).state
      weights = reference.get_model_weights(state)
      results = [parts.client_update(weights, d)[0] for d in self.datasets]  # As institutions would.
      state, _ = parts.server_update(state, results)
      self.assertAllClose(reference.get_model_weights(state).trainable,
                          reference.get_model_weights(expected).trainable, atol=1e-6)
    self.assertEqual(parts.compose().next.type_signature, reference.next.type_signature)

  @parameterized.named_parameters(
      ('fedavg_weighted', P.Algorithm.FEDAVG, P.Weighting.EXAMPLES, P.OptimizerType.SGD, 0.0),
      ('fedavg_uniform', P.Algorithm.FEDAVG, P.Weighting.UNIFORM, P.OptimizerType.SGD, 0.0),
      ('fedprox', P.Algorithm.FEDPROX, P.Weighting.UNIFORM, P.OptimizerType.SGD, 0.1),
      ('fedadam', P.Algorithm.FEDAVG, P.Weighting.EXAMPLES, P.OptimizerType.ADAM, 0.0),
      ('fedyogi', P.Algorithm.FEDAVG, P.Weighting.UNIFORM, P.OptimizerType.YOGI, 0.0),
      ('fedsgd', P.Algorithm.FEDSGD, P.Weighting.EXAMPLES, P.OptimizerType.SGD, 0.0),
  )
  def test_round_runs_and_moves_the_model(self, algorithm, weighting, server, mu):
    process = self._build(algorithm, weighting, server, mu=mu)
    self.assertEqual(str(process.next.type_signature.parameter[1]).split('@')[-1], 'CLIENTS')
    state = process.initialize()
    before = process.get_model_weights(state).trainable
    output = process.next(state, self.datasets)
    after = process.get_model_weights(output.state).trainable
    self.assertGreater(max(np.abs(a - b).max() for a, b in zip(after, before)), 0)
    self.assertEqual(output.metrics['client_work']['train']['num_examples'], 180)

  def test_scaled_updates(self):
    # Scale 1 everywhere is FedAvg; scale 3 at one institution of three, with
    # uniform weighting and server learning rate 1, moves the model by
    # (u_a + u_b + 3 u_c) / 3 instead of (u_a + u_b + u_c) / 3.
    def build(scaled):
      kwargs = dict(model_fn=self.model_fn, weighting=P.Weighting.UNIFORM,
                    client_optimizer=P.build_optimizer(P.OptimizerType.SGD, learning_rate=0.1),
                    server_optimizer=P.build_optimizer(P.OptimizerType.SGD, learning_rate=1.0),
                    aggregator=aggregators.configure_aggregator(
                        aggregator_type=aggregators.AggregatorType.MEAN, weighted=False, clients_per_round=3))
      if scaled:
        return P.build_scaled_update_train_parts(**kwargs).compose()
      return P.build_train_process(algorithm=P.Algorithm.FEDAVG, **kwargs)

    def moved(process, data):
      state = process.initialize()
      before = process.get_model_weights(state).trainable
      after = process.get_model_weights(process.next(state, data).state).trainable
      return [a - b for a, b in zip(after, before)]

    plain = moved(build(False), self.datasets)
    ones = moved(build(True), [P.scaled_client_data(d, 1.0) for d in self.datasets])
    self.assertAllClose(ones, plain, atol=1e-6)
    boosted = moved(build(True), [P.scaled_client_data(d, s) for d, s in zip(self.datasets, (1.0, 1.0, 3.0))])
    alone = moved(build(False), self.datasets[2:])  # u_c: the third institution's update alone.
    self.assertAllClose(boosted, [p + 2 * a / 3 for p, a in zip(plain, alone)], atol=1e-5)

  def test_weighting_must_match_aggregator(self):
    with self.assertRaisesRegex(ValueError, "weighting='examples' needs a weighted aggregator"):
      self._build(P.Algorithm.FEDAVG, P.Weighting.EXAMPLES, aggregator=aggregators.configure_aggregator(
          aggregator_type=aggregators.AggregatorType.MEAN, weighted=False, clients_per_round=3))

  def test_fedsgd_refuses_uniform_weighting(self):
    with self.assertRaisesRegex(ValueError, "algorithm='fedsgd' averages by example count"):
      self._build(P.Algorithm.FEDSGD, P.Weighting.UNIFORM)

  def test_fedprox_needs_mu(self):
    with self.assertRaisesRegex(ValueError, 'fedprox needs proximal_strength > 0, got 0.0'):
      self._build(P.Algorithm.FEDPROX, P.Weighting.UNIFORM)



class OptimizerDispatchTest(tf.test.TestCase):

  def test_every_optimizer_type_builds_a_tff_optimizer(self):
    for optimizer_type in processes.OptimizerType:
      optimizer = processes.build_optimizer(optimizer_type, learning_rate=0.1, momentum=0.5)
      self.assertIsInstance(optimizer, tff.learning.optimizers.Optimizer, optimizer_type)


if __name__ == '__main__':
  tf.test.main()

import dataclasses
import math
import random
from unittest import mock

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tests import helpers
from tffaml import features
from tffaml.federated import client_data
from tffaml.models import tabular
from tensorflow.python.eager import context  # pylint: disable=g-direct-tensorflow-import

Y = tf.constant([[1.0], [0.0]])
P = tf.constant([[0.8], [0.4]])


class LossTest(tf.test.TestCase, parameterized.TestCase):

  def test_bce(self):
    losses = tabular.per_example_loss(tabular.LossType.BCE)(Y, P)
    self.assertAllClose(losses, [-math.log(0.8), -math.log(0.6)], rtol=1e-5)

  def test_weighted_bce_weighs_positives(self):
    losses = tabular.per_example_loss(tabular.LossType.WEIGHTED_BCE, positive_weight=10.0)(Y, P)
    self.assertAllClose(losses, [-10 * math.log(0.8), -math.log(0.6)], rtol=1e-5)

  def test_focal_down_weights_easy_rows(self):
    # (1 - p_t)^gamma * BCE: p_t = 0.8 for the positive, 0.6 for the negative.
    losses = tabular.per_example_loss(tabular.LossType.FOCAL, focal_gamma=2.0)(Y, P)
    self.assertAllClose(losses, [0.2 ** 2 * -math.log(0.8), 0.4 ** 2 * -math.log(0.6)], rtol=1e-4)

  def test_reconstruction_is_the_score(self):
    loss = tabular.keras_loss(tabular.per_example_loss(tabular.LossType.RECONSTRUCTION))
    self.assertAllClose(loss(Y, tf.constant([[3.0], [5.0]])), 4.0)  # Labels unused; batch mean.

  @parameterized.parameters(('focal_gamma', -1.0, 'focal_gamma must be >= 0'),
                            ('positive_weight', 0.0, 'positive_weight must be > 0'))
  def test_bad_parameters(self, name, value, message):
    loss_type = tabular.LossType.FOCAL if name == 'focal_gamma' else tabular.LossType.WEIGHTED_BCE
    with self.assertRaisesRegex(ValueError, message):
      tabular.per_example_loss(loss_type, **{name: value})


class AutoencoderTest(tf.test.TestCase):

  def test_score_is_the_mean_squared_reconstruction_error(self):
    data = helpers.load_federation()
    space = features.compute_feature_space(data, min_category_count=1)
    model = tabular.build_model(model_type=tabular.ModelType.AUTOENCODER, feature_space=space,
                                hidden_units=(4, 2), seed=0)
    frame = data.institutions[0].test
    inputs = client_data.feature_tensors(frame, data.schema)
    scores = model.predict(inputs, verbose=0)
    self.assertEqual(scores.shape, (len(frame), 1))
    encoded = tf.keras.Model(model.inputs, model.get_layer('encoded_features').output).predict(inputs, verbose=0)
    reconstruction = tf.keras.Model(model.inputs, model.get_layer('reconstruction').output).predict(inputs, verbose=0)
    self.assertAllClose(scores[:, 0], np.mean(np.square(reconstruction - encoded), axis=1), rtol=1e-5)
    # Bottleneck of 2, mirrored decoder of 4: widths 4, 2, 4, then the encoded width.
    widths = [l.units for l in model.layers if isinstance(l, tf.keras.layers.Dense)]
    self.assertEqual(widths, [4, 2, 4, encoded.shape[1]])


class PriorTest(tf.test.TestCase, parameterized.TestCase):

  INPUTS = {'amount': tf.constant([1000.0, 20000.0, 3.0]), 'rate': tf.constant([5.0, 20.0, 7.0]),
            'grade': tf.constant(['A', 'Z', 'B'])}

  def test_untrained_logistic_scores_every_row_at_the_prior(self):
    space = features.compute_feature_space(helpers.load_federation(), min_category_count=1)
    for prior in (0.001, 0.5, 0.2):
      model = tabular.build_model(model_type=tabular.ModelType.LOGISTIC, feature_space=space,
                                  prior_positive_rate=prior)
      self.assertAllClose(model(self.INPUTS)[:, 0], [prior] * 3, rtol=1e-5)

  def test_mlp_output_bias_is_the_priors_log_odds(self):
    space = features.compute_feature_space(helpers.load_federation(), min_category_count=1)
    model = tabular.build_model(model_type=tabular.ModelType.MLP, feature_space=space, hidden_units=(4,),
                                prior_positive_rate=0.001)
    self.assertAllClose(model.get_layer('probability').bias, [math.log(0.001 / 0.999)])

  @parameterized.parameters(0.0, 1.0, -0.1)
  def test_a_prior_outside_0_1_is_refused(self, prior):
    space = features.compute_feature_space(helpers.load_federation(), min_category_count=1)
    with self.assertRaisesRegex(ValueError, 'prior_positive_rate must be in'):
      tabular.build_model(model_type=tabular.ModelType.LOGISTIC, feature_space=space, prior_positive_rate=prior)


class DispatchTest(tf.test.TestCase):

  def test_every_loss_type_gives_one_loss_per_row(self):
    for loss_type in tabular.LossType:
      losses = tabular.per_example_loss(loss_type)(Y, P)
      self.assertEqual(losses.shape, [2], loss_type)

  def test_every_model_type_builds_a_model_with_one_score_per_row(self):
    space = features.compute_feature_space(helpers.load_federation(), min_category_count=1)
    inputs = {'amount': tf.constant([1000.0, 20000.0]), 'rate': tf.constant([5.0, 20.0]),
              'grade': tf.constant(['A', 'Z'])}
    payments = {'payment_format': tf.constant(['ACH', 'Wire']), 'direction': tf.constant(['outgoing', 'x']),
                'log_amount_paid': tf.constant([3.0, 9.0]), 'hour_sin': tf.constant([0.0, 1.0]),
                'hour_cos': tf.constant([1.0, 0.0])}
    for model_type in tabular.ModelType:
      transactions = model_type is tabular.ModelType.RARITY  # It scores payments only.
      model = tabular.build_model(model_type=model_type, feature_space=helpers.payment_space() if transactions else space,
                                  hidden_units=(4,))
      self.assertEqual(model(payments if transactions else inputs).shape, [2, 1], model_type)

  def test_numeric_or_categorical_columns_alone_build(self):
    # E.g. every categorical value under the DP vocabulary threshold: the model has numeric columns only;
    # Keras clones a model (a personalized copy) by calling its layers again.
    space = features.compute_feature_space(helpers.load_federation(), min_category_count=1)
    inputs = {'amount': tf.constant([1000.0, 20000.0]), 'rate': tf.constant([5.0, 20.0]),
              'grade': tf.constant(['A', 'Z'])}
    for kept in (('amount', 'rate'), ('amount',), ('grade',)):
      schema = dataclasses.replace(space.schema, numeric=tuple(c for c in kept if c != 'grade'),
                                   categorical=tuple(c for c in kept if c == 'grade'))
      for model_type in (tabular.ModelType.MLP, tabular.ModelType.LOGISTIC, tabular.ModelType.AUTOENCODER):
        model = tabular.build_model(model_type=model_type, feature_space=dataclasses.replace(space, schema=schema),
                                    hidden_units=(4,))
        self.assertEqual(model({c: inputs[c] for c in kept}).shape, [2, 1], (kept, model_type))
        copy = tf.keras.models.clone_model(model)  # As a personalized copy is made.
        self.assertEqual(copy({c: inputs[c] for c in kept}).shape, [2, 1], (kept, model_type))

  def test_every_model_type_has_a_builder(self):
    # A new member without its entry in BUILDERS fails here, not in a run.
    self.assertCountEqual(tabular.BUILDERS, tabular.ModelType)

  def test_a_type_without_a_builder_is_refused_by_name(self):
    space = features.compute_feature_space(helpers.load_federation(), min_category_count=1)
    with mock.patch.dict(tabular.BUILDERS):
      del tabular.BUILDERS[tabular.ModelType.LOGISTIC]
      with self.assertRaisesRegex(ValueError, r'LOGISTIC.*has no entry in tffaml.models.tabular.BUILDERS'):
        tabular.build_model(model_type=tabular.ModelType.LOGISTIC, feature_space=space)

  def test_rarity_refuses_data_without_payments(self):
    space = features.compute_feature_space(helpers.load_federation(), min_category_count=1)
    with self.assertRaisesRegex(ValueError, r"scores transactions; this data has no \['direction', 'hour_cos'"):
      tabular.build_model(model_type=tabular.ModelType.RARITY, feature_space=space)



class SeedTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.space = features.compute_feature_space(helpers.load_federation(), min_category_count=1)

  def _build(self, seed):
    return tabular.build_model(model_type=tabular.ModelType.MLP, feature_space=self.space, hidden_units=(4,),
                               seed=seed).get_weights()

  def test_initial_weights_depend_on_the_seed_alone(self):
    first, again, other = self._build(3), self._build(3), self._build(4)
    for a, b in zip(first, again):
      self.assertAllEqual(a, b)
    self.assertFalse(all(np.array_equal(a, b) for a, b in zip(first, other)))

  def test_the_callers_seeds_are_left_as_they_were(self):
    tf.random.set_seed(11)
    random.seed(12)
    np.random.seed(13)
    expected = random.random(), np.random.random()
    random.seed(12)
    np.random.seed(13)
    self._build(3)
    self.assertEqual((random.random(), np.random.random()), expected)
    self.assertEqual(context.global_seed(), 11)
    with tf.Graph().as_default() as graph:
      tf.random.set_seed(7)
      self._build(3)
      self.assertEqual(graph.seed, 7)
    tf.random.set_seed(None)

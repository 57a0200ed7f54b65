import math

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tests import helpers
from tffaml import features
from tffaml.federated import client_data
from tffaml.models import tabular

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

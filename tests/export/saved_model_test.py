import os

import numpy as np
import tensorflow as tf

from tests import helpers
from tffaml.export import saved_model


def _serve(model_dir, rate):
  serve = tf.saved_model.load(model_dir).signatures[saved_model.SIGNATURE]
  n = len(rate)
  return serve(amount=tf.fill([n], 1000.0), rate=tf.constant(rate, tf.float32),
               grade=tf.fill([n], 'A'))


class HardeningTest(tf.test.TestCase):

  def export(self, **hardening):
    model_dir = os.path.join(self.create_tempdir().full_path, 'export')
    helpers.export_rate_model(model_dir, hardening=saved_model.Hardening(**hardening))
    return model_dir

  def test_full_precision_by_default(self):
    out = _serve(self.export(), [14.3])
    self.assertAllClose(out['probability'], [1 / (1 + np.exp(0.7))], rtol=1e-6)

  def test_score_rounded_to_decimals(self):
    model_dir = self.export(score_decimals=1)
    out = _serve(model_dir, [14.3, 16.0])
    self.assertAllClose(out['probability'], [0.3, 0.7])  # sigmoid(-0.7) = 0.332, sigmoid(1) = 0.731.
    self.assertAllEqual(out['label'], [0, 1])
    self.assertEqual(saved_model.read_metadata(model_dir)['serving']['hardening']['score_decimals'], 1)

  def test_decision_only(self):
    model_dir = self.export(decision_only=True)
    out = _serve(model_dir, [14.3, 16.0])
    self.assertCountEqual(out, ['label'])
    self.assertNotIn('score', saved_model.read_metadata(model_dir)['serving'])

  def test_inputs_rounded_before_the_model(self):
    out = _serve(self.export(input_steps={'rate': 5.0}), [14.3, 16.0])
    self.assertAllClose(out['probability'], [0.5, 0.5])  # Both rates become 15.

  def test_bad_options_are_named(self):
    with self.assertRaisesRegex(ValueError, r"input rounding names \['grade'\], not numeric inputs"):
      self.export(input_steps={'grade': 1.0})
    with self.assertRaisesRegex(ValueError, 'score_decimals must be in'):
      saved_model.Hardening(score_decimals=-1)

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tffaml.federated import quantiles


class FederatedQuantileTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(0.5, 0.99, 0.999)
  def test_flags_at_most_the_budget_and_nearly_all_of_it(self, q):
    rng = np.random.default_rng(0)
    clients = [rng.lognormal(0, 2, n) for n in (1000, 5000, 300)]
    scores = np.concatenate(clients)
    threshold = quantiles.federated_quantile(clients, q)
    allowed = len(scores) - int(np.ceil(q * len(scores)))
    self.assertEqual(np.sum(scores >= threshold), allowed)  # No ties: exactly.
    self.assertAllClose(threshold, np.quantile(scores, q), rtol=0.02)

  def test_hand_computed(self):
    # Ten scores 0..9 over two clients; the 0.8 quantile's 8th smallest is 7:
    # the threshold lies in (7, 8], flagging 8 and 9.
    threshold = quantiles.federated_quantile([np.arange(5.0), np.arange(5.0, 10.0)], 0.8)
    self.assertGreater(threshold, 7.0)
    self.assertLessEqual(threshold, 8.0)

  def test_probabilities(self):
    clients = [np.linspace(0, 1, 101)]
    self.assertAllClose(quantiles.federated_quantile(clients, 0.9), 0.9, atol=1e-6)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'q must be in'):
      quantiles.federated_quantile([np.ones(3)], 1.0)
    with self.assertRaisesRegex(ValueError, 'institution 1: scores must be finite and >= 0'):
      quantiles.federated_quantile([np.ones(3), np.array([-1.0])], 0.5)

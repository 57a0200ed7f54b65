import math

from absl.testing import parameterized
import dp_accounting
import numpy as np
from scipy import stats
import tensorflow as tf

from tffaml.privacy import accounting


def _analytic_gaussian_delta(epsilon, sigma):
  """Exact delta of the Gaussian mechanism (Balle & Wang 2018, Thm. 8)."""
  return (stats.norm.cdf(1 / (2 * sigma) - epsilon * sigma)
          - math.exp(epsilon) * stats.norm.cdf(-1 / (2 * sigma) - epsilon * sigma))


class AccountingTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      (0.0025, 1.3, 6000, 1e-5, 0.7242),  # Abadi et al. 2016 setting.
      (0.001, 1.0, 30000, 1e-7, 1.4155),
  )
  def test_poisson_gaussian_known_values(self, q, z, steps, delta, expected):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    self.assertAlmostEqual(accounting.rdp_epsilon(event, delta), expected, places=4)

  def test_full_participation_between_exact_and_classic_rdp_bounds(self):
    z, rounds, delta = 1.0, 100, 1e-5
    epsilon = accounting.statement(
        noise_multiplier=z, institutions=12, clients_per_round=12,
        sampling=accounting.Sampling.FULL, rounds=rounds, delta=delta,
        clipping='fixed').epsilon
    # T Gaussian rounds = one Gaussian with multiplier z / sqrt(T).
    sigma = z / math.sqrt(rounds)
    self.assertLess(_analytic_gaussian_delta(epsilon, sigma), delta)  # exact eps <= RDP eps
    orders = np.linspace(1.01, 200, 20000)
    classic = np.min(rounds * orders / (2 * z**2) + math.log(1 / delta) / (orders - 1))
    self.assertLessEqual(epsilon, classic)  # Mironov 2017, Prop. 3.
    self.assertAlmostEqual(epsilon, 96.1163, places=3)

  def test_sampling_amplifies(self):
    def eps(sampling, m):
      return accounting.statement(
          noise_multiplier=1.0, institutions=50, clients_per_round=m,
          sampling=sampling, rounds=100, delta=1e-5, clipping='fixed').epsilon
    self.assertLess(eps(accounting.Sampling.POISSON, 5), eps(accounting.Sampling.FULL, 50))
    self.assertLess(eps(accounting.Sampling.FIXED_SIZE, 5), eps(accounting.Sampling.FULL, 50))

  def test_statement_without_noise_is_not_private(self):
    statement = accounting.statement(
        noise_multiplier=0.0, institutions=3, clients_per_round=3,
        sampling=accounting.Sampling.FULL, rounds=5, delta=1e-5, clipping='none')
    self.assertFalse(statement.is_private)
    self.assertEqual(statement.to_dict()['epsilon'], 'inf')
    self.assertIn('No differential privacy guarantee', statement.text())

  def test_statement_names_unit_epsilon_delta_accountant(self):
    text = accounting.statement(
        noise_multiplier=1.0, institutions=10, clients_per_round=4,
        sampling=accounting.Sampling.POISSON, rounds=10, delta=1e-6,
        clipping='fixed clip 1').text()
    for part in ('institution', '1e-06', 'RDP', 'Poisson sampling', 'q = 4/10', '10 rounds'):
      self.assertIn(part, text)


if __name__ == '__main__':
  tf.test.main()

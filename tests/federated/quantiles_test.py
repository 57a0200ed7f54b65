import dataclasses

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


class NoisyQuantileTest(tf.test.TestCase, parameterized.TestCase):

  def _clients(self):
    rng = np.random.default_rng(1)
    return [rng.lognormal(-3, 1.5, n) for n in (1000, 5000, 3000)]

  def _quantile(self, clients, q, *, stddev, seed=0, weights=None):
    weights = weights or [np.ones_like(c) for c in clients]
    return quantiles.noisy_quantile(clients, weights, q, stddev=stddev, seed=seed)

  @parameterized.parameters(0.9, 0.99)
  def test_without_noise_flags_the_budget_to_a_bin(self, q):
    clients = self._clients()
    scores = np.concatenate(clients)
    threshold = self._quantile(clients, q, stddev=1e-9)
    allowed = round((1 - q) * len(scores))
    flagged = np.sum(scores >= threshold)
    self.assertLessEqual(flagged, allowed)
    # Short by at most the rows of the last bin: 24 / 64 / 16 nat wide.
    in_last_bin = np.sum((scores >= threshold * np.exp(-24 / 64 / 16)) & (scores < threshold))
    self.assertGreaterEqual(flagged + in_last_bin, allowed)

  def test_noise_of_dp_size_keeps_the_flagged_fraction_near_the_budget(self):
    clients = self._clients()
    scores = np.concatenate(clients)
    fractions = [np.mean(scores >= self._quantile(clients, 0.99, stddev=14.0, seed=s)) for s in range(10)]
    self.assertGreater(len(set(fractions)), 1)  # The noise moves it...
    self.assertAllClose(np.mean(fractions), 0.01, atol=0.003)  # ...around the budget.
    self.assertEqual(self._quantile(clients, 0.99, stddev=14.0, seed=3),
                     self._quantile(clients, 0.99, stddev=14.0, seed=3))

  def test_unit_weights_cap_what_a_unit_adds(self):
    codes = np.array([0, 1, 1, 2, 2, 2, 2])  # Units of 1, 2 and 4 rows.
    self.assertAllClose(quantiles.unit_weights(codes, 2), [1, 1, 1, 0.5, 0.5, 0.5, 0.5])
    self.assertAllClose(quantiles.unit_weights(codes, 1), [1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25])

  def test_a_unit_counts_at_most_its_cap(self):
    # 900 units of one row each, and one unit with 1,000 rows scoring above
    # them all, capped at 10 rows' worth: a mass of 910, so a 10% budget
    # flags 91 rows' worth: the heavy unit's 10 and the top 81 one-row units,
    # short by at most the last bin's (0.023 nat: about 0.01 here, 19 units).
    singles = np.linspace(0.01, 0.5, 900)
    heavy = np.full(1000, 0.9)
    weights = [np.ones(900), quantiles.unit_weights(np.zeros(1000, np.int64), 10)]
    threshold = self._quantile([singles, heavy], 0.9, stddev=1e-9, weights=weights)
    self.assertLessEqual(threshold, 0.9)
    self.assertBetween(np.sum(singles >= threshold), 81 - 19, 81)
    # Uncapped, the heavy unit's 1,000 rows exceed the 190 allowed: the threshold passes above them.
    uncapped = self._quantile([singles, heavy], 0.9, stddev=1e-9, weights=[np.ones(900), np.ones(1000)])
    self.assertGreater(uncapped, 0.9)

  def test_institutions_answer_for_their_units_with_their_noise_shares(self):
    clients = self._clients()
    codes = [np.arange(len(c)) // 4 for c in clients]  # Units of four rows, each counting at most 2.
    ask = quantiles.local_ask(clients, codes, seed=5)
    request = quantiles.HistogramRequest(low=-16.0, high=8.0, bins=64, release=3, stddev=3.0, cap=2)
    # The noise shares sum to the request's noise: N(0, 9) per count over three institutions.
    shares = [quantiles.answer(c, u, request, institutions=3, seed=5, index=i)
              - quantiles.answer(c, u, dataclasses.replace(request, stddev=0.0), institutions=3, seed=5, index=i)
              for i, (c, u) in enumerate(zip(clients, codes))]
    self.assertAllClose(np.std(np.sum(shares, axis=0)), 3.0, rtol=0.25)
    self.assertAllClose(ask(request), np.sum([quantiles.answer(c, u, request, institutions=3, seed=5, index=i)
                                              for i, (c, u) in enumerate(zip(clients, codes))], axis=0))
    weights = [quantiles.unit_weights(u, 2) for u in codes]
    self.assertEqual(quantiles.search(ask, 0.99, stddev=3.0, cap=2, bins=quantiles.BINS),
                     quantiles.noisy_quantile(clients, weights, 0.99, stddev=3.0, seed=5))

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'institution 0: one weight in'):
      quantiles.noisy_quantile([np.ones(3)], [np.ones(2)], 0.5, stddev=1.0, seed=0)
    with self.assertRaisesRegex(ValueError, 'institution 0: one weight in'):
      quantiles.noisy_quantile([np.ones(3)], [np.full(3, 2.0)], 0.5, stddev=1.0, seed=0)

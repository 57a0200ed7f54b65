import dataclasses

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tffaml.federated import quantiles


def _rows(clients):
  return [np.arange(len(c)) for c in clients]  # Every row its own unit.


def _exact(clients, q):
  return quantiles.search(quantiles.local_ask(clients, _rows(clients), seed=0), q)


class ExactQuantileTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(0.5, 0.99, 0.999)
  def test_flags_at_most_the_budget_and_nearly_all_of_it(self, q):
    rng = np.random.default_rng(0)
    clients = [rng.lognormal(0, 2, n) for n in (1000, 5000, 300)]
    scores = np.concatenate(clients)
    threshold = _exact(clients, q)
    allowed = len(scores) - int(np.ceil(q * len(scores)))
    self.assertEqual(np.sum(scores >= threshold), allowed)  # No ties: exactly.
    self.assertAllClose(threshold, np.quantile(scores, q), rtol=0.02)

  def test_hand_computed(self):
    # Ten scores 0..9 over two clients; the 0.8 quantile's 8th smallest is 7:
    # the threshold lies in (7, 8], flagging 8 and 9.
    threshold = _exact([np.arange(5.0), np.arange(5.0, 10.0)], 0.8)
    self.assertGreater(threshold, 7.0)
    self.assertLessEqual(threshold, 8.0)

  def test_probabilities(self):
    self.assertAllClose(_exact([np.linspace(0, 1, 101)], 0.9), 0.9, atol=1e-6)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'q must be in'):
      _exact([np.ones(3)], 1.0)
    with self.assertRaisesRegex(ValueError, 'institution 1: scores must be finite and >= 0'):
      _exact([np.ones(3), np.array([-1.0])], 0.5)
    with self.assertRaisesRegex(ValueError, 'institution 0: one unit code per score'):
      quantiles.search(quantiles.local_ask([np.ones(3)], [np.zeros(2, int)], seed=0), 0.5)


class NoisyQuantileTest(tf.test.TestCase, parameterized.TestCase):

  def _clients(self):
    rng = np.random.default_rng(1)
    return [rng.lognormal(-3, 1.5, n) for n in (1000, 5000, 3000)]

  def _quantile(self, clients, q, *, stddev, seed=0, codes=None, cap=0):
    ask = quantiles.local_ask(clients, codes or _rows(clients), seed=seed)
    return quantiles.search(ask, q, stddev=stddev, cap=cap, bins=quantiles.BINS)

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
    codes = [np.arange(900), np.zeros(1000, np.int64)]
    threshold = self._quantile([singles, heavy], 0.9, stddev=1e-9, codes=codes, cap=10)
    self.assertLessEqual(threshold, 0.9)
    self.assertBetween(np.sum(singles >= threshold), 81 - 19, 81)
    # Uncapped, the heavy unit's 1,000 rows exceed the 190 allowed: the threshold passes above them.
    self.assertGreater(self._quantile([singles, heavy], 0.9, stddev=1e-9, codes=codes), 0.9)

  def test_institutions_answer_for_their_units_with_their_noise_shares(self):
    clients = self._clients()
    codes = [np.arange(len(c)) // 4 for c in clients]  # Units of four rows, each counting at most 2.
    request = quantiles.HistogramRequest(low=-16.0, high=8.0, bins=64, release=3, stddev=3.0, cap=2)
    answers = [quantiles.answer(c, u, request, institutions=3, seed=5, index=i)
               for i, (c, u) in enumerate(zip(clients, codes))]
    noiseless = [quantiles.answer(c, u, dataclasses.replace(request, stddev=0.0), institutions=3, seed=5, index=i)
                 for i, (c, u) in enumerate(zip(clients, codes))]
    # Each unit counts 2 of its 4 rows; the shares sum to the request's noise, N(0, 9) per count.
    self.assertAllClose(np.sum(noiseless), sum(len(c) for c in clients) / 2)
    self.assertAllClose(np.std(np.sum(answers, axis=0) - np.sum(noiseless, axis=0)), 3.0, rtol=0.25)
    self.assertAllClose(quantiles.local_ask(clients, codes, seed=5)(request), np.sum(answers, axis=0))
    self.assertNotAllClose(answers[0], quantiles.answer(clients[0], codes[0], request, institutions=3, seed=6,
                                                        index=0))  # Another seed: other noise.


if __name__ == '__main__':
  tf.test.main()

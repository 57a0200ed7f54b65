"""The one-run ε lower bound (Steinke, Nasr, Jagielski 2023) on hand-checked cases."""

import math

from absl.testing import absltest
import numpy as np

from tffaml import errors
from tffaml.privacy import one_run


class PValueTest(absltest.TestCase):

  def test_p_value_by_hand(self):
    # 10 of 10 right at ε = 0: a fair coin ten times, 1/1024.
    self.assertAlmostEqual(one_run.p_value(canaries=20, guesses=10, correct=10, epsilon=0.0, delta=0.0),
                           1 / 1024)
    # r = 2, v = 2, ε = 0, δ = 0.01, m = 4: P[B >= 2] = 1/4; the δ term's max over
    # i = 1 (P[B = 1] / 1 = 1/2) and i = 2 (P[B <= 1] / 2 = 3/8) is 1/2: 1/4 + 2 * 4 * 0.01 / 2.
    self.assertAlmostEqual(one_run.p_value(canaries=4, guesses=2, correct=2, epsilon=0.0, delta=0.01), 0.29)

  def test_at_epsilon_one_a_guess_is_right_with_e_over_one_plus_e(self):
    q = math.e / (1 + math.e)
    self.assertAlmostEqual(one_run.p_value(canaries=3, guesses=3, correct=3, epsilon=1.0, delta=0.0), q ** 3)
    # 2 of 3 or better: q^3 + 3 q^2 (1 - q).
    self.assertAlmostEqual(one_run.p_value(canaries=3, guesses=3, correct=2, epsilon=1.0, delta=0.0),
                           q ** 3 + 3 * q ** 2 * (1 - q))

  def test_no_correct_guess_is_certain_and_the_p_value_is_capped_at_one(self):
    self.assertEqual(one_run.p_value(canaries=10, guesses=4, correct=0, epsilon=0.0, delta=0.1), 1.0)
    # A δ term of 2 * 1000 * 0.1 * ... would exceed 1.
    self.assertEqual(one_run.p_value(canaries=1000, guesses=4, correct=4, epsilon=0.0, delta=0.1), 1.0)

  def test_the_p_value_grows_with_epsilon_and_delta(self):
    # More privacy loss allowed makes a good guess less surprising.
    by_epsilon = [one_run.p_value(canaries=100, guesses=20, correct=15, epsilon=e, delta=1e-5)
                  for e in (0.0, 0.5, 1.0, 2.0, 4.0)]
    self.assertEqual(by_epsilon, sorted(by_epsilon))
    self.assertLess(by_epsilon[0], by_epsilon[-1])
    by_delta = [one_run.p_value(canaries=100, guesses=20, correct=15, epsilon=1.0, delta=d)
                for d in (0.0, 1e-5, 1e-3)]
    self.assertEqual(by_delta, sorted(by_delta))
    self.assertLess(by_delta[0], by_delta[-1])

  def test_impossible_counts_are_refused(self):
    for canaries, guesses, correct in ((10, 4, 5), (10, 12, 2), (10, 4, -1)):
      with self.subTest((canaries, guesses, correct)), self.assertRaisesRegex(
          ValueError, 'need 0 <= correct <= guesses <= canaries'):
        one_run.p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=1.0, delta=0.0)


class LowerBoundTest(absltest.TestCase):

  def test_lower_bound_by_hand(self):
    # 10 of 10 right refutes every ε with q^10 < 0.05: q = 0.05^0.1, ε = log(q / (1 - q)).
    q = 0.05 ** 0.1
    bound = one_run.epsilon_lower_bound(canaries=100, guesses=10, correct=10, delta=0.0)
    self.assertAlmostEqual(bound, math.log(q / (1 - q)), places=5)
    self.assertEqual(one_run.epsilon_lower_bound(canaries=100, guesses=10, correct=5, delta=0.0), 0.0)
    with_delta = one_run.epsilon_lower_bound(canaries=100, guesses=10, correct=10, delta=1e-3)
    self.assertLess(with_delta, bound)  # δ can only weaken the refutation.

  def test_at_the_bound_the_p_value_is_one_minus_the_confidence(self):
    bound = one_run.epsilon_lower_bound(canaries=1000, guesses=200, correct=150, delta=1e-5, confidence=0.9)
    self.assertGreater(bound, 0.0)
    self.assertAlmostEqual(
        one_run.p_value(canaries=1000, guesses=200, correct=150, epsilon=bound, delta=1e-5), 0.1, places=4)

  def test_the_bound_is_monotone(self):
    def bound(correct=150, confidence=0.95, delta=1e-5):
      return one_run.epsilon_lower_bound(canaries=1000, guesses=200, correct=correct, delta=delta,
                                         confidence=confidence)

    by_correct = [bound(correct=v) for v in (100, 120, 150, 180, 200)]
    self.assertEqual(by_correct, sorted(by_correct))  # More right guesses: a higher bound.
    self.assertEqual(by_correct[0], 0.0)  # Half right: chance, nothing refuted.
    by_confidence = [bound(confidence=c) for c in (0.5, 0.9, 0.95, 0.99)]
    self.assertEqual(by_confidence, sorted(by_confidence, reverse=True))  # Surer: a lower bound.
    by_delta = [bound(delta=d) for d in (0.0, 1e-5, 1e-3)]
    self.assertEqual(by_delta, sorted(by_delta, reverse=True))

  def test_guesses_carry_their_bound(self):
    guesses = one_run.Guesses(canaries=100, guesses=10, correct=10)
    self.assertEqual(guesses.epsilon_lower_bound(delta=0.0),
                     one_run.epsilon_lower_bound(canaries=100, guesses=10, correct=10, delta=0.0))

  def test_a_confidence_or_delta_out_of_range_is_refused(self):
    # Unrefused, confidence=95 gave a bound of 0 and confidence=0 one of EPSILON_SEARCH_MAX.
    for confidence in (0.0, 1.0, 95.0, -0.5):
      with self.subTest(confidence=confidence), self.assertRaisesRegex(
          errors.InputError, rf'confidence must be in \(0, 1\), got {confidence}'):
        one_run.epsilon_lower_bound(canaries=100, guesses=10, correct=10, delta=0.0, confidence=confidence)
    for delta in (-1e-5, 1.0):
      with self.subTest(delta=delta), self.assertRaisesRegex(
          errors.InputError, rf'delta must be in \[0, 1\), got {delta}'):
        one_run.epsilon_lower_bound(canaries=100, guesses=10, correct=10, delta=delta)


class GuessTest(absltest.TestCase):

  def test_guesses_take_the_ends(self):
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.2, 0.3, 0.7, 0.4, 0.6, 0.0])
    included = np.array([1, 0, 1, 0, 0, 1, 1, 0, 0, 1], bool)
    # k = 2: "in" for 0.9 (in) and 0.8 (out), "out" for 0.0 (in) and 0.1 (out): 2 of 4 right.
    self.assertEqual(one_run.guess(scores, included, fraction=0.2),
                     one_run.Guesses(canaries=10, guesses=4, correct=2))

  def test_a_perfect_score_gets_every_guess_right(self):
    included = np.array([1, 0, 0, 1, 1, 0, 1, 0], bool)
    self.assertEqual(one_run.guess(included.astype(float), included, fraction=0.5),
                     one_run.Guesses(canaries=8, guesses=8, correct=8))
    self.assertEqual(one_run.guess(-included.astype(float), included, fraction=0.5).correct, 0)

  def test_at_least_one_guess_at_each_end(self):
    # 10% of 5 canaries is 0.5: still one "in" and one "out".
    guesses = one_run.guess(np.arange(5.0), np.array([0, 0, 1, 1, 1], bool), fraction=0.1)
    self.assertEqual(guesses, one_run.Guesses(canaries=5, guesses=2, correct=2))

  def test_a_fraction_out_of_range_is_refused(self):
    for fraction in (0.0, 0.6, -0.1):
      with self.subTest(fraction=fraction), self.assertRaisesRegex(ValueError, r'fraction must be in \(0, 0.5\]'):
        one_run.guess(np.zeros(4), np.zeros(4, bool), fraction=fraction)


if __name__ == '__main__':
  absltest.main()

"""An ε lower bound from one training run with canaries (Steinke, Nasr, Jagielski, NeurIPS 2023).

m canaries are each included in training independently with probability
1/2 (a secret coin). After training, the auditor scores every canary, guesses
"included" for the k highest scores and "excluded" for the k lowest (r = 2k
guesses, the rest abstain) and counts v correct guesses. If training is
(ε, δ)-DP in each canary, v is stochastically dominated by Binomial(r, q),
q = e^ε / (1 + e^ε) (randomized response at ε), up to a δ term (the paper's
Theorem 3.3 and its Appendix D): the p-value of v correct guesses is

    P[Binomial(r, q) >= v] + 2 m δ max_{1 <= i <= v} P[v - i <= Binomial(r, q) < v] / i.

The lower bound at confidence 1 - β is the largest ε whose p-value is below β:
training cannot be (ε', δ)-DP for ε' under it, unless an event of
probability β happened. k is fixed before looking at the scores (here a
fraction of m), as the bound requires.
"""

import dataclasses
import math

import numpy as np
from scipy import optimize
from scipy import stats

from tffaml import errors

EPSILON_SEARCH_MAX = 50.0  # Beyond any ε a DP claim is made at.


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
  """P[at least `correct` of `guesses` right] for training that is (epsilon, delta)-DP per canary."""
  if not 0 <= correct <= guesses <= canaries:
    raise ValueError(f'need 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}.')
  q = 1.0 / (1.0 + math.exp(-epsilon))  # Randomized response's accuracy at ε.
  tail = stats.binom.sf(correct - 1, guesses, q)  # P[Binomial(r, q) >= v].
  if delta == 0 or correct == 0:
    return min(float(tail), 1.0)
  below = np.cumsum(stats.binom.pmf(correct - np.arange(1, correct + 1), guesses, q))  # P[v-i <= B < v].
  return min(float(tail + 2 * canaries * delta * np.max(below / np.arange(1, correct + 1))), 1.0)


def epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float,
                        confidence: float = 0.95) -> float:
  """The largest ε that `correct` of `guesses` right refutes at `confidence` (0 when none is)."""
  # Unchecked, a confidence of 95 (meant as 95%) or a δ of 1 gave a bound of 0 or EPSILON_SEARCH_MAX
  # as if it had been measured.
  if not 0 < confidence < 1:
    raise errors.InputError(f'confidence must be in (0, 1), got {confidence}.')
  if not 0 <= delta < 1:
    raise errors.InputError(f'delta must be in [0, 1), got {delta}.')
  beta = 1.0 - confidence

  def excess(epsilon: float) -> float:
    return p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=epsilon, delta=delta) - beta

  if excess(0.0) >= 0:
    return 0.0
  if excess(EPSILON_SEARCH_MAX) < 0:
    return EPSILON_SEARCH_MAX
  return float(optimize.brentq(excess, 0.0, EPSILON_SEARCH_MAX, xtol=1e-6))


@dataclasses.dataclass(frozen=True)
class Guesses:
  """The auditor's guesses about which canaries were included."""

  canaries: int
  guesses: int  # r: k "included" and k "excluded", the rest abstained.
  correct: int  # v

  def epsilon_lower_bound(self, *, delta: float, confidence: float = 0.95) -> float:
    return epsilon_lower_bound(canaries=self.canaries, guesses=self.guesses, correct=self.correct,
                               delta=delta, confidence=confidence)


def guess(scores: np.ndarray, included: np.ndarray, *, fraction: float) -> Guesses:
  """Guesses "included" for the `fraction` highest scores and "excluded" for the as many lowest.

  Args:
    scores: Each canary's score (higher: more likely included).
    included: Whether each canary was included (the secret coins).
    fraction: Of the canaries, guessed at each end (fixed before scoring).
  """
  scores, included = np.asarray(scores, np.float64), np.asarray(included, bool)
  if not 0 < fraction <= 0.5:
    raise ValueError(f'fraction must be in (0, 0.5], got {fraction}.')
  k = max(1, int(fraction * len(scores)))
  order = np.argsort(scores, kind='stable')
  correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
  return Guesses(canaries=len(scores), guesses=2 * k, correct=correct)

"""Quantiles of scores spread over institutions, from summed histograms only.

An alert threshold that flags a fraction `budget` of all transactions is the
(1 - budget) quantile of the federation's scores. No institution sends a
score: each answers a `HistogramRequest` with how many of its scores' logs
fall below, inside (per bin) and above an interval (`answer`, with its share
of the DP noise when there is one), the answers are summed (a secure sum in
a deployment), and `search` narrows the interval to the bin holding the
quantile. Whoever sums decides the runtime: `local_ask` in simulation, a
federation's nodes (`tffaml.consortium`) in a deployment; the search is the
same. Logs cover scores s >= 0 (probabilities and reconstruction errors
alike) without a range known first.
"""

import dataclasses
from typing import Callable, Sequence

import numpy as np
import tensorflow_federated as tff

from tffaml import features


# The first pass's bins span log(score) in [-16, 8): scores from 1e-7 to
# about 3,000 (probabilities and reconstruction errors alike), 0.375 nat a
# bin; the second splits the bin holding the quantile in 16 (0.023 nat).
# Few bins in the second pass: the flagged mass sums the noise of every bin
# above the threshold.
LOG_SCORE_RANGE = (-16.0, 8.0)
BINS = (64, 16)  # Per pass; each pass is one DP release.
# Where a unit (an account) holds several rows, at most this many rows'
# worth of it is counted (each row weighted min(1, cap / its unit's rows)):
# the noise grows with the cap, the bias of weighting busy units down
# shrinks with it. Weighting each unit as one row flagged 0.17% of test
# transactions for a 1% budget on generated AML data.
UNIT_ROW_CAP = 16


def unit_weights(unit_codes: np.ndarray, cap: int) -> np.ndarray:
  """Each row's weight min(1, cap / its unit's rows): a unit's weights sum to at most `cap`."""
  rows = np.bincount(unit_codes)[unit_codes]
  return np.minimum(1.0, cap / rows)


# Without noise the passes narrow to below float32's spacing: the threshold
# flags exactly the rows above the k-th smallest score, k = ceil(q n).
EXACT_BINS = (1024, 1024, 1024)


@dataclasses.dataclass(frozen=True)
class HistogramRequest:
  """One pass: every institution's weighted histogram of its training scores' logs, noised.

  Counts [below low, `bins` bins of [low, high), at or above high]; each row
  weighs 1, or min(1, cap / its unit's rows) when cap > 0 (`unit_weights`);
  the summed histogram carries N(0, stddev²) per count, each of K
  institutions adding N(0, stddev² / K) from (its seed, release, its index).
  """

  low: float
  high: float
  bins: int
  release: int
  stddev: float = 0.0
  cap: int = 0

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def answer(scores: np.ndarray, unit_codes: np.ndarray, request: HistogramRequest, *, institutions: int,
           seed: int, index: int) -> np.ndarray:
  """Institution `index`'s answer to `request`: its histogram and its noise share (what leaves it)."""
  scores = np.asarray(scores, np.float64)
  if scores.size and (not np.isfinite(scores).all() or scores.min() < 0):
    raise ValueError(f'institution {index}: scores must be finite and >= 0.')
  if np.shape(unit_codes) != scores.shape:
    raise ValueError(f'institution {index}: one unit code per score.')
  weights = unit_weights(unit_codes, request.cap) if request.cap and scores.size else np.ones(len(scores))
  histogram = np.bincount(log_bin(scores, request.low, request.high, request.bins), weights=weights,
                          minlength=request.bins + 2).astype(np.float64)
  if request.stddev:
    share = request.stddev / np.sqrt(institutions)
    histogram += np.random.default_rng([seed, request.release, index]).normal(0.0, share, request.bins + 2)
  return histogram


def log_bin(scores: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
  """Each score's bin of log(score): 0 below `low`, 1..bins across [low, high), bins + 1 at or above `high`."""
  edges = np.linspace(low, high, bins + 1)  # Exact at both ends.
  with np.errstate(divide='ignore'):  # log(0) = -inf: below every bin.
    return np.searchsorted(edges, np.log(np.asarray(scores, np.float64)), 'right')


Ask = Callable[[HistogramRequest], np.ndarray]  # A request -> the federation's summed histogram.


FIRST_RELEASE = 3  # The first pass's release number: the feature statistics' come before (features.DP_RELEASES).


def search(ask: Ask, q: float, *, stddev: float = 0.0, cap: int = 0, bins: Sequence[int] = EXACT_BINS,
           first_release: int = FIRST_RELEASE) -> float:
  """A threshold t flagging about (1 - q) of the federation's (weighted) training scores.

  No score leaves an institution: `ask` returns the sum of the institutions'
  `answer`s (a secure sum in a deployment; simulated as a plain sum). If one
  unit's weights sum to at most w (`cap`, or 1 for a row), each pass's
  histogram has L2 sensitivity w, and is a Gaussian mechanism of noise
  multiplier stddev / w. Counting from the top, the first pass finds the bin
  where the mass above first exceeds (1 - q) of the total mass (the noisy one
  under noise; without, n - ceil(q n): at most the k-th smallest score's
  rank from the top); each next pass splits that bin; t is the upper edge of
  the last bin found, so the flagged mass is (1 - q) of the total, short by
  at most that bin's mass, give or take the noise of the bins above it.

  Args:
    ask: Sums the institutions' answers to a request.
    q: The quantile, in (0, 1).
    stddev: The noise on every summed count (0: exact).
    cap: Rows' worth a unit counts at most (0: every row counts 1).
    bins: Bins of each pass; each pass is one release.
    first_release: The first pass's release number (those before are the
      feature statistics').

  Returns:
    The threshold, on the scores' scale (the smallest float32 at or above
    the bin's edge: served models compare float32 scores).
  """
  if not 0.0 < q < 1.0:
    raise ValueError(f'q must be in (0, 1), got {q}.')
  low, high = LOG_SCORE_RANGE
  allowed = above = 0.0
  for n, (count, release) in enumerate(zip(bins, range(first_release, first_release + len(bins)))):
    noisy = np.array(ask(HistogramRequest(low=low, high=high, bins=count, release=release, stddev=stddev,
                                          cap=cap)), np.float64)
    if not n:
      total = noisy.sum()
      # Exact counts: the rows above the k-th smallest, k = ceil(q n) (no rounding of (1 - q) n).
      allowed = (1.0 - q) * total if stddev else total - np.ceil(q * total - 1e-9)
    else:  # Rows outside [low, high) were placed by the pass before.
      noisy[0] = noisy[-1] = 0.0
    b = _top_bin(noisy, above, allowed)
    if not n and b in (0, count + 1):  # Below or above the span: its end is the threshold.
      return _smallest_float32_at_or_above(np.exp(low if b == 0 else high))
    b = min(max(b, 1), count)
    above += noisy[b + 1:].sum()
    edges = np.linspace(low, high, count + 1)
    low, high = edges[b - 1], edges[b]
  return _smallest_float32_at_or_above(np.exp(high))


def local_ask(client_scores: Sequence[np.ndarray], client_units: Sequence[np.ndarray], *, seed: int) -> Ask:
  """`search`'s ask where every institution's scores are in this process (the simulation).

  `client_units`: each row's unit code (`dp_sgd.unit_codes`), per institution.
  TFF sums the answers (`features.build_federated_sum`, the aggregation a
  secure-sum platform would run; in simulation a plain sum).
  """
  def ask(request: HistogramRequest) -> np.ndarray:
    summed = features.build_federated_sum(tff.TensorType(np.float64, [request.bins + 2]))
    return np.asarray(summed([
        answer(s, u, request, institutions=len(client_scores), seed=seed, index=i)
        for i, (s, u) in enumerate(zip(client_scores, client_units, strict=True))]))
  return ask


def _top_bin(noisy: np.ndarray, mass_above: float, allowed: float) -> int:
  """The bin, counted from the top, where the mass at or above it first exceeds `allowed`."""
  above = mass_above
  for b in range(len(noisy) - 1, -1, -1):
    if above + noisy[b] > allowed:
      return b
    above += noisy[b]
  return 0


def _smallest_float32_at_or_above(value: float) -> float:
  score = np.float32(value)
  if np.float64(score) < value:
    score = np.nextafter(score, np.float32(np.inf))
  return float(score)

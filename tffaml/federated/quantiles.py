"""Quantiles of scores spread over institutions, from summed histograms only.

An alert threshold that flags a fraction `budget` of all transactions is the
(1 - budget) quantile of the federation's scores. No institution sends a
score: each sends how many of its scores fall below, inside (per bin) and
above an interval, TFF sums the histograms (`features.build_federated_sum`,
the aggregation a secure-sum platform would run; in simulation a plain sum),
and the interval narrows to the bin holding the quantile. Scores s >= 0
(probabilities, reconstruction errors) are binned as s / (1 + s), which maps
[0, inf) onto [0, 1), so no range needs to be known first. `passes` rounds of
`bins` bins locate the quantile to within 1 / bins**passes of that scale.
"""

from typing import Sequence

import numpy as np
import tensorflow_federated as tff

from tffaml import features


def _histogram(scaled: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """[below edges[0], one count per [edges[i], edges[i+1]), at or above edges[-1]].

  Bins are found by comparison with the edges themselves, so the next
  pass's interval [edges[b], edges[b+1]) holds exactly the rows counted in b.
  """
  counts = np.bincount(np.searchsorted(edges, scaled, 'right'), minlength=len(edges) + 1)
  return counts.astype(np.float64)


def _smallest_score_at_or_above(scaled_threshold: float) -> float:
  """The smallest float32 score s with s / (1 + s) >= the threshold.

  Served models compare float32 scores, so the threshold is one of them.
  """
  score = np.float32(scaled_threshold / (1.0 - scaled_threshold))
  while np.float64(score) / (1.0 + np.float64(score)) < scaled_threshold:
    score = np.nextafter(score, np.float32(np.inf))
  while True:
    below = np.nextafter(score, np.float32(0))
    if np.float64(below) / (1.0 + np.float64(below)) < scaled_threshold:
      return float(score)
    score = below


def federated_quantile(
    client_scores: Sequence[np.ndarray], q: float, *, bins: int = 1024, passes: int = 3
) -> float:
  """A threshold t with at most a (1 - q) fraction of all scores >= t.

  t is the upper edge of the final bin holding the k-th smallest score,
  k = ceil(q * n) (as the smallest float32 at or above it), so the rows
  flagged by `score >= t` never exceed n - k and fall short of it only by
  the rows in that bin.

  Args:
    client_scores: Each institution's scores (>= 0); never pooled.
    q: The quantile, in (0, 1).
    bins: Bins per pass.
    passes: Narrowing rounds.

  Returns:
    The threshold, on the scores' scale.
  """
  if not 0.0 < q < 1.0:
    raise ValueError(f'q must be in (0, 1), got {q}.')
  if bins < 2 or passes < 1:
    raise ValueError(f'bins must be >= 2 and passes >= 1, got {bins}, {passes}.')
  scaled = []
  for i, scores in enumerate(client_scores):
    scores = np.asarray(scores, np.float64)
    if scores.size and (not np.isfinite(scores).all() or scores.min() < 0):
      raise ValueError(f'institution {i}: scores must be finite and >= 0.')
    scaled.append(scores / (1.0 + scores))
  summed = features.build_federated_sum(tff.TensorType(np.float64, [bins + 2]))
  low, high = 0.0, 1.0
  for _ in range(passes):
    edges = np.linspace(low, high, bins + 1)  # Exact at both ends.
    counts = np.asarray(summed([_histogram(s, edges) for s in scaled]))
    rank = int(np.ceil(q * counts.sum()))  # The k-th smallest score lies in [low, high).
    below_bin_end = counts[0] + np.cumsum(counts[1:-1])
    b = int(np.searchsorted(below_bin_end, rank, 'left'))
    low, high = edges[b], edges[b + 1]
  return _smallest_score_at_or_above(high)


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


def _log_histogram(log_scores: np.ndarray, weights: np.ndarray, low: float, high: float,
                   bins: int) -> np.ndarray:
  """Weighted [below low, `bins` bins of [low, high), at or above high]."""
  edges = np.linspace(low, high, bins + 1)
  index = np.searchsorted(edges, log_scores, 'right')
  return np.bincount(index, weights=weights, minlength=bins + 2).astype(np.float64)


def _top_bin(noisy: np.ndarray, mass_above: float, allowed: float) -> int:
  """The bin, counted from the top, where the mass at or above it first exceeds `allowed`."""
  above = mass_above
  for b in range(len(noisy) - 1, -1, -1):
    if above + noisy[b] > allowed:
      return b
    above += noisy[b]
  return 0


def noisy_quantile(
    client_scores: Sequence[np.ndarray], client_weights: Sequence[np.ndarray], q: float, *,
    stddev: float, seed: int, bins: Sequence[int] = BINS, first_release: int = 3,
) -> float:
  """A threshold t flagging about (1 - q) of the weighted scores, from noised histograms.

  The DP counterpart of `federated_quantile`. Each institution histograms the
  logarithms of its scores, each row counted with its weight (1 for a
  record; `unit_weights` where a unit has several rows), adds its share
  N(0, stddev² / K) to every count, and only the sums leave it (a secure
  sum; simulated here as a plain sum). If one unit's weights sum to at most
  w, each pass's histogram has L2 sensitivity w to it, and is a Gaussian
  mechanism of noise multiplier stddev / w. Counting from the top, the first
  pass finds the bin where the mass above first exceeds (1 - q) of the
  (noisy) total mass; each next pass splits that bin; t is the upper edge of
  the last bin found, so the flagged mass is about (1 - q) of the total, short
  by at most that bin's mass, give or take the noise of the bins above it.

  Args:
    client_scores: Each institution's scores (>= 0); never pooled.
    client_weights: Each row's weight, in (0, 1].
    q: The quantile, in (0, 1).
    stddev: The noise on every summed count.
    seed: The noise seed (institution i draws release r from (seed, r, i)).
    bins: Bins of each pass; each pass is one release.
    first_release: The first pass's release number (those before are the
      feature statistics').

  Returns:
    The threshold, on the scores' scale.
  """
  if not 0.0 < q < 1.0:
    raise ValueError(f'q must be in (0, 1), got {q}.')
  logs = []
  for i, (scores, weights) in enumerate(zip(client_scores, client_weights, strict=True)):
    scores = np.asarray(scores, np.float64)
    if scores.size and (not np.isfinite(scores).all() or scores.min() < 0):
      raise ValueError(f'institution {i}: scores must be finite and >= 0.')
    if np.shape(weights) != scores.shape or (scores.size and not (0 < np.min(weights) <= np.max(weights) <= 1)):
      raise ValueError(f'institution {i}: one weight in (0, 1] per score.')
    with np.errstate(divide='ignore'):
      logs.append(np.log(scores))
  share = stddev / np.sqrt(len(logs))
  low, high = LOG_SCORE_RANGE
  allowed = above = 0.0
  for n, (count, release) in enumerate(zip(bins, range(first_release, first_release + len(bins)))):
    summed = features.build_federated_sum(tff.TensorType(np.float64, [count + 2]))
    noisy = np.array(summed([
        _log_histogram(x, np.asarray(w, np.float64), low, high, count)
        + np.random.default_rng([seed, release, i]).normal(0.0, share, count + 2)
        for i, (x, w) in enumerate(zip(logs, client_weights))]))
    if not n:
      allowed = (1.0 - q) * noisy.sum()
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


def _smallest_float32_at_or_above(value: float) -> float:
  score = np.float32(value)
  if np.float64(score) < value:
    score = np.nextafter(score, np.float32(np.inf))
  return float(score)

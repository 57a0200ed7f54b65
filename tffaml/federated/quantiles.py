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

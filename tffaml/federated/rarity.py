"""Transaction rarity: an unlabelled AML score from the federation's joint histogram.

The autoencoder scores a transaction by how badly it reconstructs all ~30
features, and mostly finds rare but normal payments (busy accounts'
aggregates dominate its error): AUPRC about 0.01 at a 0.15% base rate. How
unusual a payment itself is - its format, direction, amount and hour
together - says more. Each bank counts its training transactions in the
cells of a `Grid` (payment format x direction x log-amount bin x hour); the
federation sums the counts (`federated_counts`: TFF's sum, a secure sum in
a deployment, a plain sum in simulation); a transaction's score is
-log of its cell's smoothed share of the summed counts (`scores`), high for
combinations the whole federation rarely sees. No row and no score leaves a
bank, only counts; they are exact (no DP noise) in this version.
"""

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd
import tensorflow_federated as tff

from tffaml import features

# The transaction's own columns (tffaml.data.transactions' features).
FORMAT, DIRECTION, LOG_AMOUNT = 'payment_format', 'direction', 'log_amount_paid'
HOUR_SIN, HOUR_COS = 'hour_sin', 'hour_cos'
# Half-pseudo-count per cell (Jeffreys): an unseen cell scores finite, highest.
SMOOTHING = 0.5


@dataclasses.dataclass(frozen=True)
class Grid:
  """The cells: payment format x direction x log-amount bin x hour bin.

  Values outside `formats`/`directions` share one extra slot each. Log
  amounts (log1p of the amount paid) in [0, 20) fall in `amount_bins`
  equal bins, 1.25 nats (a factor 3.5) wide; hours in `hour_bins`.
  """

  formats: tuple[str, ...]
  directions: tuple[str, ...]
  amount_bins: int = 16
  log_amount_range: tuple[float, float] = (0.0, 20.0)
  hour_bins: int = 24

  @property
  def size(self) -> int:
    return (len(self.formats) + 1) * (len(self.directions) + 1) * self.amount_bins * self.hour_bins

  def cells(self, frame: pd.DataFrame) -> np.ndarray:
    """Each row's cell index."""
    slot = lambda values, vocabulary: pd.Categorical(values.astype(str), categories=vocabulary).codes % (
        len(vocabulary) + 1)  # Unknown (-1) -> the extra slot.
    low, high = self.log_amount_range
    amount = np.clip(((frame[LOG_AMOUNT].to_numpy(np.float64) - low) / (high - low) * self.amount_bins)
                     .astype(np.int64), 0, self.amount_bins - 1)
    turn = np.arctan2(frame[HOUR_SIN].to_numpy(np.float64), frame[HOUR_COS].to_numpy(np.float64)) / (2 * np.pi)
    hour = np.round(turn * 24).astype(np.int64) % 24 * self.hour_bins // 24
    cell = slot(frame[FORMAT], list(self.formats)).astype(np.int64)
    cell = cell * (len(self.directions) + 1) + slot(frame[DIRECTION], list(self.directions))
    return (cell * self.amount_bins + amount) * self.hour_bins + hour


def grid_for(space: features.FeatureSpace) -> Grid:
  """The grid over the federation's vocabularies of format and direction."""
  return Grid(formats=tuple(space.vocabulary[FORMAT]), directions=tuple(space.vocabulary[DIRECTION]))


def counts(frame: pd.DataFrame, grid: Grid) -> np.ndarray:
  """One bank's training rows counted per cell: what leaves the bank."""
  return np.bincount(grid.cells(frame), minlength=grid.size).astype(np.float64)


def federated_counts(frames: Sequence[pd.DataFrame], grid: Grid) -> np.ndarray:
  """The banks' `counts`, summed by TFF (`features.build_federated_sum`)."""
  summed = features.build_federated_sum(tff.TensorType(np.float64, [grid.size]))
  return np.asarray(summed([counts(f, grid) for f in frames]))


def scores(frame: pd.DataFrame, grid: Grid, summed: np.ndarray) -> np.ndarray:
  """-log of each row's cell's smoothed share of `summed`: higher is rarer."""
  share = (summed + SMOOTHING) / (summed.sum() + SMOOTHING * grid.size)
  return -np.log(share[grid.cells(frame)])

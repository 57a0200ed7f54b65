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
bank, only counts; they are exact (no DP noise). The `rarity` model
(`tffaml.models.rarity`, same `Grid`) learns the same score by federated
training, under DP where configured, and exports like any model.
"""

from typing import Sequence

import numpy as np
import pandas as pd
import tensorflow_federated as tff

from tffaml import features
from tffaml.models.rarity import Grid

# Half-pseudo-count per cell (Jeffreys): an unseen cell scores finite, highest.
SMOOTHING = 0.5


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

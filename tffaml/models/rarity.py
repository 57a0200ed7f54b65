"""Transaction rarity: an unlabelled AML score, -log of how often the federation sees a payment's kind.

A payment's cell is its format x direction x log-amount bin x hour (`Grid`).
The `rarity` model holds one logit per cell; its score is the negative
log-likelihood -log softmax(logits)[cell], and its loss is that score
(`tabular.LossType.RECONSTRUCTION`: the output is the loss, labels unused).
Trained federated, it fits the federation's distribution of cells by
maximum likelihood, so the score is high for combinations the whole
federation rarely sees (laundering's formats, amounts and hours of its own);
trained with DP-SGD it does so under the run's guarantee, and it exports and
serves like any other model. The per-row gradient, softmax - one-hot, has
norm below sqrt(2) whatever the data.

`tffaml.federated.rarity` computes the same score from exact federated counts
(scripts/compare.py's `rarity_*` methods, no DP): both share `Grid`.
"""

import dataclasses
from typing import Mapping

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml import features

# The transaction's own columns (tffaml.data.transactions' features).
FORMAT, DIRECTION, LOG_AMOUNT = 'payment_format', 'direction', 'log_amount_paid'
HOUR_SIN, HOUR_COS = 'hour_sin', 'hour_cos'
COLUMNS = (FORMAT, DIRECTION, LOG_AMOUNT, HOUR_SIN, HOUR_COS)


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
    """Each row's cell index (as the model computes it, `Cells`)."""
    columns = {c: tf.constant(frame[c].to_numpy(str if c in (FORMAT, DIRECTION) else np.float32))
               for c in COLUMNS}
    return Cells(self)(columns).numpy()


def grid_for(vocabulary: Mapping[str, tuple[str, ...]]) -> Grid:
  """The grid over the federation's vocabularies of format and direction."""
  # As they are: under DP statistics they are `features.HashedSlots`, looked up by hash.
  return Grid(formats=vocabulary[FORMAT], directions=vocabulary[DIRECTION])


class Cells(tf.keras.layers.Layer):
  """{column: [batch]} -> each row's cell index in `grid` (int64 [batch])."""

  def __init__(self, grid: Grid, **kwargs):
    super().__init__(**kwargs)
    self.grid = grid
    self.format_slot = _Slot(grid.formats, name='format_slot')
    self.direction_slot = _Slot(grid.directions, name='direction_slot')

  def call(self, columns):
    g = self.grid
    low, high = g.log_amount_range
    amount = tf.cast((columns[LOG_AMOUNT] - low) / (high - low) * g.amount_bins, tf.int64)  # float32 inputs.
    amount = tf.clip_by_value(amount, 0, g.amount_bins - 1)
    turn = tf.atan2(columns[HOUR_SIN], columns[HOUR_COS]) / (2 * np.pi)
    hour = tf.math.floormod(tf.cast(tf.round(turn * 24), tf.int64), 24) * g.hour_bins // 24
    cell = self.format_slot(columns[FORMAT]) * (len(g.directions) + 1) + self.direction_slot(columns[DIRECTION])
    return (cell * g.amount_bins + amount) * g.hour_bins + hour


class _Slot(tf.keras.layers.Layer):
  """value -> its index in `vocabulary`; any other value -> len(vocabulary), the extra slot."""

  def __init__(self, vocabulary: tuple[str, ...], **kwargs):
    super().__init__(**kwargs)
    self.slots = len(vocabulary) + 1
    # An attribute, so that a SavedModel tracks its table; None when no value cleared the DP vocabulary.
    self.lookup = features.category_lookup(vocabulary, name='lookup') if vocabulary else None

  def call(self, values):
    if self.lookup is None:
      return tf.zeros_like(values, tf.int64)
    # StringLookup puts unknown values at 0 and the vocabulary at 1..n.
    return tf.math.floormod(self.lookup(values) - 1, self.slots)


class NegativeLogShare(tf.keras.layers.Layer):
  """cell [batch] -> -log softmax(logits)[cell] [batch, 1]: one trainable logit per cell, starting uniform."""

  def __init__(self, cells: int, **kwargs):
    super().__init__(**kwargs)
    self.cells = cells

  def build(self, input_shape):
    self.logits = self.add_weight(name='cell_logits', shape=(self.cells,), initializer='zeros')

  def call(self, cell):
    return tf.gather(-tf.nn.log_softmax(self.logits), cell)[:, None]


def build(inputs: Mapping[str, tf.Tensor], vocabulary: Mapping[str, tuple[str, ...]]) -> tf.keras.Model:
  """The rarity model on `features.keras_inputs` (the transaction columns; `missing_columns` first)."""
  grid = grid_for(vocabulary)
  cell = Cells(grid, name='cell')({c: inputs[c] for c in COLUMNS})
  return tf.keras.Model(inputs, NegativeLogShare(grid.size, name='negative_log_share')(cell), name='rarity')


def missing_columns(columns) -> list[str]:
  """The transaction columns the rarity grid needs and `columns` lacks."""
  return sorted(set(COLUMNS) - set(columns))

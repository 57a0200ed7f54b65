"""Canary records for a one-run audit of record-level DP (used by `tffaml.studies.canary_audit`).

The audited model is the real one with one more weight per canary, w_j,
which only canary j's gradient reaches: the white-box "Dirac canary" of
Steinke, Nasr and Jagielski (NeurIPS 2023). Rows carry one more input,
CANARY_COLUMN: -1 on a real row (which leaves the model's output and
gradients as they are), j on canary j's row, and EXCLUDED on the row of a
canary its coin left out. Every canary's row is in the holding institution's
training rows, included or not, so the federation's sizes (and with them
the privacy plan) do not depend on the coins; an excluded canary's row
leaves no trace (its logit is a constant, its gradient 0).

A canary's logit is CANARY_LOGIT whatever the model and w_j are (w_j enters
through its gradient only): p stays near 0, so a canary's gradient, (1 - p)
* CANARY_INPUT on w_j and nothing else, never fades (an unclipped canary
would otherwise push p to 1 within a few steps, and a model blown up by a
broken clip could do it for every canary), and p stays above the 1e-7 where
Keras's cross-entropy clips p and the gradient is 0. Clipped, the gradient
is the clip along w_j; unclipped, ten times the clip. Canaries are labelled
positive: an included canary's steps raise w_j.
"""

import dataclasses
from typing import Callable

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml.data import schema as schema_lib

CANARY_INPUT = 10.0
CANARY_LOGIT = -8.0
CANARY_COLUMN = 'audit_canary'  # The canary's index; -1 on real rows.
REAL = -1
EXCLUDED = -2
CANARY_WEIGHTS = 'audit_canaries'  # The layer holding w.
CANARY_CATEGORY = '__audit_canary__'  # A canary's categorical values (and unit prefix).


def coins(seed: int, canaries: int) -> np.ndarray:
  """Which canaries are included: each with probability 1/2, from `seed`."""
  return np.random.default_rng([seed, canaries]).random(canaries) < 0.5


def training_schema(schema: schema_lib.Schema) -> schema_lib.Schema:
  """`schema` with CANARY_COLUMN: what the audited model's rows carry."""
  return dataclasses.replace(schema, numeric=schema.numeric + (CANARY_COLUMN,))


def mark_real(frame: pd.DataFrame) -> pd.DataFrame:
  return frame.assign(**{CANARY_COLUMN: float(REAL)})


def with_canaries(train: pd.DataFrame, schema: schema_lib.Schema, included: np.ndarray) -> pd.DataFrame:
  """`train`'s rows (marked real) and one row per canary (label 1; EXCLUDED where not `included`).

  A canary's features are any valid values (zeros, and an out-of-vocabulary
  category): its logit does not read them.
  """
  real = mark_real(train)
  m = len(included)
  rows = pd.DataFrame({c: np.zeros(m, real[c].dtype) for c in schema.numeric})
  for c in schema.categorical:
    rows[c] = CANARY_CATEGORY
  rows[schema_lib.LABEL_COLUMN] = np.ones(m, real[schema_lib.LABEL_COLUMN].dtype)
  if schema_lib.UNIT_COLUMN in real:
    rows[schema_lib.UNIT_COLUMN] = [f'{CANARY_CATEGORY}{j}' for j in range(m)]
  rows[CANARY_COLUMN] = np.where(included, np.arange(m), EXCLUDED).astype(np.float64)
  return pd.concat([real, rows[real.columns]], ignore_index=True)


def real_rows(frame: pd.DataFrame) -> pd.DataFrame:
  """`frame` without canary rows (what feature statistics describe)."""
  return frame[frame[CANARY_COLUMN] == REAL] if CANARY_COLUMN in frame else frame


def canary_model(base: Callable[[], tf.keras.Model], canaries: int) -> Callable[[], tf.keras.Model]:
  """`base`'s model with one more weight per canary (see the module docstring).

  The new model's inputs are `base`'s and CANARY_COLUMN. Canary j's logit is
  CANARY_LOGIT, and its gradient that of CANARY_INPUT * w_j.
  """

  def build() -> tf.keras.Model:
    model = base()
    index = tf.keras.Input(shape=(), dtype=tf.float32, name=CANARY_COLUMN)
    # tf.one_hot of a negative index is all zeros: no other row's gradient reaches w.
    one_hot = tf.one_hot(tf.cast(index, tf.int32), canaries) * CANARY_INPUT
    shift = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer='zeros', name=CANARY_WEIGHTS)(one_hot)
    shift -= tf.stop_gradient(shift)  # 0, with the gradient of CANARY_INPUT * w_j.
    p = tf.clip_by_value(model.output, 1e-7, 1 - 1e-7)
    # A canary row's logit does not depend on the model: none of its gradient reaches the model's weights.
    logit = tf.where(index[:, None] != REAL, CANARY_LOGIT, tf.math.log(p) - tf.math.log1p(-p))
    probability = tf.sigmoid(logit + shift)
    return tf.keras.Model({**model.input, CANARY_COLUMN: index}, probability, name=f'{model.name}_audited')

  return build


def weights_index(keras_model: Callable[[], tf.keras.Model]) -> int:
  """The index of w among the model's trainable weights."""
  names = [w.name for w in keras_model().trainable_weights]
  return next(i for i, name in enumerate(names) if name.startswith(f'{CANARY_WEIGHTS}/'))

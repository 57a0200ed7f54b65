"""Institutions' rows as the `tf.data` datasets TFF clients train on."""

import collections
from typing import Any, Callable, Hashable, Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.data import shards


def feature_tensors(frame: pd.DataFrame, schema: schema_lib.Schema) -> collections.OrderedDict:
  """Raw feature columns as arrays: float32 numeric, bytes categorical."""
  columns = collections.OrderedDict(
      (c, frame[c].to_numpy(np.float32)) for c in schema.numeric
  )
  columns.update((c, frame[c].to_numpy(str).astype(object)) for c in schema.categorical)
  return columns


def element_spec(schema: schema_lib.Schema) -> tuple[collections.OrderedDict, tf.TensorSpec]:
  """The (features, label[batch, 1]) spec of every client dataset built here."""
  features = collections.OrderedDict((c, tf.TensorSpec([None], tf.float32)) for c in schema.numeric)
  features.update((c, tf.TensorSpec([None], tf.string)) for c in schema.categorical)
  return features, tf.TensorSpec([None, 1], tf.float32)


def lean(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` without tf.data's static rewrites and autotuning.

  TFF rebuilds each institution's dataset from its serialized graph in every
  round, and tf.data re-runs its Grappler rewrites on each one: 23% of the
  worker's time at 100 institutions, for pipelines (slice, batch) that the
  rewrites cannot speed up. A compiled loop over the pooled rows was faster
  without them too (0.22 s against 0.32 s an epoch, see README "Benchmarks").
  """
  options = tf.data.Options()
  options.experimental_optimization.apply_default_optimizations = False
  options.autotune.enabled = False
  return dataset.with_options(options)


def to_dataset(
    frame: pd.DataFrame,
    schema: schema_lib.Schema,
    *,
    batch_size: int,
    epochs: int = 1,
    shuffle_seed: Optional[int] = None,
) -> tf.data.Dataset:
  """(features, label[batch, 1]) batches; `epochs` passes, each reshuffled.

  The order is drawn here in NumPy from `shuffle_seed`, not by `tf.data`, so
  the same seed gives the same batches wherever the dataset runs.

  Args:
    frame: Validated rows (`schema.validate_frame`), with labels.
    schema: Their schema.
    batch_size: Rows per batch.
    epochs: Passes over the rows.
    shuffle_seed: Seed of the order; None keeps the rows in order.

  Returns:
    A batched dataset.
  """
  if batch_size < 1 or epochs < 1:
    raise ValueError(f'batch_size and epochs must be >= 1, got {batch_size}, {epochs}.')
  if shuffle_seed is None:
    order = np.tile(np.arange(len(frame)), epochs)
  else:
    rng = np.random.default_rng(shuffle_seed)
    order = np.concatenate([rng.permutation(len(frame)) for _ in range(epochs)])
  rows = frame.iloc[order]
  labels = rows[schema_lib.LABEL_COLUMN].to_numpy(np.float32)[:, None]
  return lean(tf.data.Dataset.from_tensor_slices(
      (feature_tensors(rows, schema), labels)
  ).batch(batch_size))


def institution_dataset(
    institution: federated_data.InstitutionLike,
    split: str,
    schema: schema_lib.Schema,
    *,
    batch_size: int,
    epochs: int = 1,
    shuffle_seed: Optional[int] = None,
) -> tf.data.Dataset:
  """An institution's `split` as `to_dataset` batches; streamed from its file if stored."""
  if isinstance(institution, shards.StoredInstitution):
    path = institution.train_path if split == 'train' else institution.test_path
    return lean(shards.dataset(
        path, schema, batch_size=batch_size, epochs=epochs, shuffle_seed=shuffle_seed))
  return to_dataset(getattr(institution, split), schema, batch_size=batch_size, epochs=epochs,
                    shuffle_seed=shuffle_seed)


PREDICT_BATCH = 16384


def predict(model: tf.keras.Model, frame: pd.DataFrame, schema: schema_lib.Schema) -> np.ndarray:
  """The model's score of every row of `frame`, computed where the rows are.

  Called eagerly, a batch at a time: `Model.predict` traces a predict
  function for each model it sees (0.1-0.3 CPU-s), and a run scores many
  models once each (every institution's copy, every fold's). The same ops,
  so scores agree with `Model.predict` to float32 rounding.
  """
  columns = feature_tensors(frame, schema)
  batches = [model({c: v[start:start + PREDICT_BATCH] for c, v in columns.items()}, training=False)[:, 0]
             for start in range(0, len(frame), PREDICT_BATCH)]
  return np.concatenate([b.numpy() for b in batches]) if batches else np.zeros(0, np.float32)


class Scorer:
  """A model's scores of rows, kept for the last model asked (a quantile search asks pass after pass)."""

  def __init__(self, keras_model_fn: Callable[[], tf.keras.Model], schema: schema_lib.Schema):
    self._model_fn, self._schema = keras_model_fn, schema
    self._model: Optional[tf.keras.Model] = None  # Built when first asked: most runs set no alert budget.
    self._weights: Optional[list[np.ndarray]] = None
    self._scores: dict[Hashable, np.ndarray] = {}

  def __call__(self, weights: Any, key: Hashable, rows: Callable[[], pd.DataFrame]) -> np.ndarray:
    """The scores of `rows()` (read only when not kept: a stored split is read from its file), named `key`.

    `weights`: a tff.learning.models.ModelWeights.
    """
    flat = [np.asarray(w) for w in tf.nest.flatten(weights)]
    if self._weights is None or not all(np.array_equal(a, b) for a, b in zip(flat, self._weights)):
      self._model = self._model or self._model_fn()
      weights.assign_weights_to(self._model)
      self._weights, self._scores = flat, {}
    if key not in self._scores:
      self._scores[key] = predict(self._model, rows(), self._schema)
    return self._scores[key]

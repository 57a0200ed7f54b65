"""Keras models for tabular binary classification (loan risk).

Both take the raw named features (see `features.keras_inputs`) and return the
probability of the positive class, shape [batch, 1]:

* `mlp`: categorical embeddings and standardised numerics, then ReLU layers.
* `logistic`: one-hot categoricals and standardised numerics, then a single
  sigmoid unit: the research baseline.
"""

import enum
from typing import Sequence

import tensorflow as tf

from tffaml import features


class ModelType(enum.Enum):
  MLP = 'mlp'
  LOGISTIC = 'logistic'


def build_model(
    *,
    model_type: ModelType,
    feature_space: features.FeatureSpace,
    hidden_units: Sequence[int] = (64, 32),
    embedding_dim: int = 4,
    seed: int = 0,
) -> tf.keras.Model:
  """Builds an uncompiled model whose initial weights depend only on `seed`.

  Args:
    model_type: Which architecture.
    feature_space: Federated feature statistics, baked into the model.
    hidden_units: Widths of the MLP's hidden layers (ignored for logistic).
    embedding_dim: Categorical embedding size of the MLP (must be >= 1).
    seed: Seed of the initial weights.

  Returns:
    A `tf.keras.Model` from raw feature dict to probability.
  """
  if model_type is ModelType.MLP:
    if embedding_dim < 1:
      raise ValueError(f'embedding_dim must be >= 1 for mlp, got {embedding_dim}.')
    if not hidden_units or min(hidden_units) < 1:
      raise ValueError(f'hidden_units must be positive widths, got {hidden_units}.')
  tf.keras.utils.set_random_seed(seed)
  inputs = features.keras_inputs(feature_space.schema)
  encoded = features.encode(
      inputs,
      feature_space,
      embedding_dim=embedding_dim if model_type is ModelType.MLP else 0,
  )
  hidden = encoded
  if model_type is ModelType.MLP:
    for i, units in enumerate(hidden_units):
      hidden = tf.keras.layers.Dense(units, activation='relu', name=f'hidden_{i}')(hidden)
  probability = tf.keras.layers.Dense(1, activation='sigmoid', name='probability')(hidden)
  return tf.keras.Model(inputs, probability, name=model_type.value)

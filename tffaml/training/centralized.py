"""The non-private reference: the same model trained by Keras on pooled rows.

Only possible on public or simulated data; it bounds what federation could
reach and is reported beside the federated model, never exported.
"""

from typing import Callable

import tensorflow as tf

from tffaml.data import federated_data
from tffaml.federated import client_data


def train(
    keras_model_fn: Callable[[], tf.keras.Model],
    data: federated_data.FederatedData,
    *,
    loss: tf.keras.losses.Loss,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> tf.keras.Model:
  """Adam on all institutions' training rows, pooled and shuffled."""
  model = keras_model_fn()
  model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate), loss=loss)
  pooled = client_data.to_dataset(
      data.pooled('train'), data.schema, batch_size=batch_size, epochs=epochs,
      shuffle_seed=seed)
  model.fit(pooled, epochs=1, verbose=0)
  return model

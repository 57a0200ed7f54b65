"""Record-level DP-SGD inside each institution, as a TFF client work process.

Each institution trains its local steps with DP-SGD (Abadi et al. 2016,
"Deep Learning with Differential Privacy", arXiv:1607.00133, Algorithm 1):
every step takes a Poisson sample of the institution's records (each record
independently with probability q = expected_batch_size / rows), clips each
record's gradient to L2 norm `l2_norm_clip`, sums, adds Gaussian noise of
standard deviation `noise_multiplier * l2_norm_clip` and divides by the
expected batch size. Per-record gradients are computed in one vectorised
Jacobian (`tf.GradientTape.jacobian` with pfor), not a loop over records.

The institution's update is then a post-processing of DP-SGD outputs, so
every record has (ε, δ)-DP with respect to the update it sends (and to
everything computed from it: the aggregate, the model). A client-level DP
aggregator on top adds institution-level protection; see
`tffaml.privacy.accounting` for both guarantees.

The Poisson draws and the noise come from `poisson_batches`' per-step seeds,
derived from the run's secret noise seed: the sample must stay hidden for
the amplification by sampling that the accounting assumes. In a deployment
each institution draws its own sample and noise from its own secret
randomness; this simulation derives them from one seed so runs reproduce.
"""

import collections
from typing import Callable

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_federated as tff

from tffaml.data import schema as schema_lib
from tffaml.federated import client_data


def steps_per_round(*, rows: int, expected_batch_size: int, epochs: int) -> int:
  """DP-SGD steps an institution takes per round: `epochs` expected passes."""
  return int(np.ceil(epochs * rows / expected_batch_size))


def poisson_batches(
    frame: pd.DataFrame,
    schema: schema_lib.Schema,
    *,
    expected_batch_size: int,
    epochs: int,
    seed: int,
) -> tf.data.Dataset:
  """Poisson-sampled batches of `frame` and the seed of each step's noise.

  Elements are `(features, labels, step_seed)`: the rows sampled for the
  step (each with probability expected_batch_size / len(frame); a batch may
  be empty), their labels [batch, 1], and an int64[2] stateless seed.

  Args:
    frame: One institution's validated training rows.
    schema: Their schema.
    expected_batch_size: Expected rows per step (>= 1, <= len(frame)).
    epochs: Expected passes over the rows per round.
    seed: Secret seed of this institution's round (sampling and noise).

  Returns:
    A dataset of `steps_per_round(...)` elements.
  """
  if not 1 <= expected_batch_size <= len(frame):
    raise ValueError(
        f'expected_batch_size must be in [1, {len(frame)}] (the institution'
        f' rows), got {expected_batch_size}.'
    )
  steps = steps_per_round(rows=len(frame), expected_batch_size=expected_batch_size, epochs=epochs)
  rng = np.random.default_rng(seed)
  sampled = rng.random((steps, len(frame))) < expected_batch_size / len(frame)
  lengths = sampled.sum(axis=1)
  rows = frame.iloc[np.nonzero(sampled)[1]]
  ragged = lambda values: tf.RaggedTensor.from_row_lengths(values, lengths)
  batch_features = collections.OrderedDict(
      (name, ragged(values)) for name, values in client_data.feature_tensors(rows, schema).items()
  )
  labels = ragged(rows[schema_lib.LABEL_COLUMN].to_numpy(np.float32)[:, None])
  step_seeds = rng.integers(0, np.iinfo(np.int64).max, (steps, 2), dtype=np.int64)
  # Slices of a ragged tensor are dense; the identity map makes tf.data say so.
  return tf.data.Dataset.from_tensor_slices((batch_features, labels, step_seeds)).map(
      lambda *element: element)


def _clipped_noised_mean_gradient(
    per_example_grads, *, l2_norm_clip, noise_multiplier, expected_batch_size, seed
):
  """(Σ_i clip(g_i) + N(0, σ²C² I)) / B, for g_i the rows' gradients."""
  squares = [
      tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), axis=1)
      for g in per_example_grads
  ]
  norms = tf.sqrt(tf.add_n(squares))
  scale = tf.minimum(1.0, l2_norm_clip / tf.maximum(norms, 1e-12))
  result = []
  for i, g in enumerate(per_example_grads):
    clipped_sum = tf.tensordot(scale, g, axes=1)
    noise = tf.random.stateless_normal(
        tf.shape(clipped_sum),
        seed=tf.random.experimental.stateless_fold_in(seed, i),
        stddev=noise_multiplier * l2_norm_clip,
    )
    result.append((clipped_sum + noise) / expected_batch_size)
  return result


def _build_client_update(model, optimizer, *, l2_norm_clip, noise_multiplier, expected_batch_size):
  """DP-SGD over an institution's `poisson_batches`; returns (ClientResult, counts)."""

  @tf.function
  def client_update(initial_weights, dataset):
    weights = tff.learning.models.ModelWeights.from_model(model)
    tf.nest.map_structure(lambda v, t: v.assign(t), weights, initial_weights)
    trainable = tuple(tf.nest.flatten(weights.trainable))
    optimizer_state = optimizer.initialize(
        tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable))

    def step(carry, batch):
      optimizer_state, steps, sampled = carry
      x, y, seed = batch
      with tf.GradientTape() as tape:
        probability = model.predict_on_batch(x, training=True)
        losses = tf.keras.losses.binary_crossentropy(y, probability)
      per_example = tape.jacobian(losses, trainable, experimental_use_pfor=True)
      gradients = _clipped_noised_mean_gradient(
          per_example, l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
          expected_batch_size=float(expected_batch_size), seed=seed)
      optimizer_state, updated = optimizer.next(optimizer_state, trainable, tuple(gradients))
      for variable, value in zip(trainable, updated):
        variable.assign(value)
      return optimizer_state, steps + 1, sampled + tf.shape(y, out_type=tf.int64)[0]

    _, steps, sampled = dataset.reduce(
        (optimizer_state, tf.constant(0, tf.int64), tf.constant(0, tf.int64)), step)
    update = tf.nest.map_structure(tf.subtract, initial_weights.trainable, weights.trainable)
    return (
        tff.learning.templates.ClientResult(update=update, update_weight=tf.constant(1.0)),
        collections.OrderedDict(steps=steps, sampled_examples=sampled),
    )

  return client_update


def build_dp_sgd_client_work(
    *,
    model_fn: Callable[[], tff.learning.models.VariableModel],
    optimizer: tff.learning.optimizers.Optimizer,
    l2_norm_clip: float,
    noise_multiplier: float,
    expected_batch_size: int,
) -> tff.learning.templates.ClientWorkProcess:
  """A client work process training each institution with DP-SGD.

  Type signature of `next`:
  `(<state@SERVER, ModelWeights@CLIENTS, {<x, y, seed>*}@CLIENTS> ->
  <state@SERVER, ClientResult@CLIENTS, <train=<steps, sampled_examples>>@SERVER>)`
  where the client data comes from `poisson_batches`.

  Every institution's update has weight 1: a weight by sampled rows would
  leak the sample. The measurements are the numbers of steps and of sampled
  rows, summed over institutions; no unprotected training loss leaves an
  institution.

  Args:
    model_fn: Constructs the TFF model from a Keras model whose output is the
      positive-class probability (`processes.build_model_fn`).
    optimizer: The local optimizer applied to the noised gradients.
    l2_norm_clip: Per-record gradient clip C (> 0).
    noise_multiplier: σ (>= 0; 0 trains with clipping only, no DP).
    expected_batch_size: B, the divisor of the noised sum.

  Returns:
    A `tff.learning.templates.ClientWorkProcess`.
  """
  if not l2_norm_clip > 0:
    raise ValueError(f'l2_norm_clip must be > 0, got {l2_norm_clip}.')
  if not noise_multiplier >= 0:
    raise ValueError(f'noise_multiplier must be >= 0, got {noise_multiplier}.')
  if expected_batch_size < 1:
    raise ValueError(f'expected_batch_size must be >= 1, got {expected_batch_size}.')

  with tf.Graph().as_default():
    model = model_fn()
  x_spec, y_spec = model.input_spec
  seed_spec = tf.TensorSpec([2], tf.int64)
  data_type = tff.SequenceType(tff.types.tensorflow_to_type((x_spec, y_spec, seed_spec)))
  weights_type = tff.learning.models.weights_type_from_model(model)

  @tff.tensorflow.computation(weights_type, data_type)
  def client_update(initial_weights, dataset):
    # tf.function orders the variable updates (TFF traces in plain graph mode).
    return _build_client_update(
        model_fn(), optimizer, l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
        expected_batch_size=expected_batch_size)(initial_weights, dataset)

  @tff.federated_computation()
  def init_fn():
    return tff.federated_value((), tff.SERVER)

  @tff.federated_computation(
      init_fn.type_signature.result,
      tff.FederatedType(weights_type, tff.CLIENTS),
      tff.FederatedType(data_type, tff.CLIENTS),
  )
  def next_fn(state, weights, client_data_value):
    result, counts = tff.federated_map(client_update, (weights, client_data_value))
    measurements = tff.federated_zip(
        collections.OrderedDict(train=tff.federated_sum(counts)))
    return tff.templates.MeasuredProcessOutput(state, result, measurements)

  return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)

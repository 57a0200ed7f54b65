"""Record- and unit-level DP-SGD inside each institution, as a TFF client work.

Each institution trains its local steps with DP-SGD (Abadi et al. 2016,
"Deep Learning with Differential Privacy", arXiv:1607.00133, Algorithm 1):
every step takes a Poisson sample of the institution's privacy units (each
independently with probability q = expected_batch_size / units), clips each
unit's gradient to L2 norm `l2_norm_clip`, sums, adds Gaussian noise of
standard deviation `noise_multiplier * l2_norm_clip` and divides by the
expected batch size. Per-row gradients are computed by one vectorised
map over rows (`tf.vectorized_map`), not a loop over rows.

The unit is a row (record-level DP), or, when the schema names a `unit`
column such as an account id, all rows sharing its value (user-level
DP-SGD, McMahan et al. 2018, arXiv:1710.06963): a unit's gradient is the sum
of its rows' gradients, at most `max_rows_per_unit` of them per round (the
cap bounds the work; the clip alone bounds the sensitivity).

The institution's update is then a post-processing of DP-SGD outputs, so
every unit has (ε, δ)-DP with respect to the update it sends (and to
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
import dataclasses
from typing import Callable

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.learning import loop_builder  # pylint: disable=g-direct-tensorflow-import

from tffaml.data import schema as schema_lib
from tffaml.data import shards
from tffaml.federated import client_data


def steps_per_round(*, units: int, expected_batch_size: int, epochs: int) -> int:
  """DP-SGD steps an institution takes per round: `epochs` expected passes."""
  return int(np.ceil(epochs * units / expected_batch_size))


def unit_codes(frame: pd.DataFrame) -> np.ndarray:
  """Each row's privacy unit as 0..units-1: its `UNIT_COLUMN`, or the row."""
  if schema_lib.UNIT_COLUMN in frame:
    return pd.factorize(frame[schema_lib.UNIT_COLUMN])[0]
  return np.arange(len(frame))


def poisson_batches(
    frame: pd.DataFrame,
    schema: schema_lib.Schema,
    *,
    expected_batch_size: int,
    epochs: int,
    seed: int,
    max_rows_per_unit: int = 0,
) -> tf.data.Dataset:
  """Local DP-SGD's round: `epochs` expected passes of Poisson-sampled batches.

  Args:
    frame: One institution's validated training rows.
    schema: Their schema.
    expected_batch_size: Expected units per step (>= 1, <= units).
    epochs: Expected passes over the units per round.
    seed: Secret seed of this institution's round (sampling and noise).
    max_rows_per_unit: Rows of a unit used in the round (a random subset);
      0 uses all.

  Returns:
    `poisson_sample`'s dataset of `steps_per_round(...)` elements.
  """
  rate, steps = batches_plan(units=int(unit_codes(frame).max()) + 1, expected_batch_size=expected_batch_size,
                             epochs=epochs)
  return poisson_sample(frame, schema, sampling_rate=rate, steps=steps, seed=seed,
                        max_rows_per_unit=max_rows_per_unit)


def batches_plan(*, units: int, expected_batch_size: int, epochs: int) -> tuple[float, int]:
  """(sampling rate, steps) of `poisson_batches` for an institution of `units` units."""
  if not 1 <= expected_batch_size <= units:
    raise ValueError(
        f'expected_batch_size must be in [1, {units}] (the institution\'s'
        f' privacy units), got {expected_batch_size}.'
    )
  return expected_batch_size / units, steps_per_round(units=units, expected_batch_size=expected_batch_size,
                                                      epochs=epochs)


def poisson_sample(
    frame: pd.DataFrame,
    schema: schema_lib.Schema,
    *,
    sampling_rate: float,
    steps: int,
    seed: int,
    max_rows_per_unit: int = 0,
) -> tf.data.Dataset:
  """Poisson-sampled batches of units, and the seed of each step's noise.

  Elements are `(features, labels, segments, step_seed)`: the rows of the
  units sampled for the step (each unit independently with probability
  `sampling_rate`; a batch may be empty), their labels [batch, 1], each
  row's unit as an index into the step's sampled units, and an int64[2]
  stateless seed.

  Args:
    frame: One institution's validated training rows.
    schema: Their schema.
    sampling_rate: q, in (0, 1].
    steps: Batches drawn (>= 1).
    seed: Secret seed of this institution's round (sampling and noise).
    max_rows_per_unit: Rows of a unit used in the round (a random subset);
      0 uses all.

  Returns:
    A dataset of `steps` elements.
  """
  selection = poisson_selection(unit_codes(frame), sampling_rate=sampling_rate, steps=steps, seed=seed,
                                max_rows_per_unit=max_rows_per_unit)
  rows = frame.iloc[selection.rows]
  ragged = lambda values: tf.RaggedTensor.from_row_lengths(values, selection.lengths)
  batch_features = collections.OrderedDict(
      (name, ragged(values)) for name, values in client_data.feature_tensors(rows, schema).items()
  )
  labels = ragged(rows[schema_lib.LABEL_COLUMN].to_numpy(np.float32)[:, None])
  return steps_dataset(batch_features, labels, ragged(selection.segments), selection.step_seeds)


@dataclasses.dataclass(frozen=True)
class Selection:
  """The rows of a round's Poisson-sampled steps (`poisson_selection`)."""

  rows: np.ndarray  # Row indices, step after step.
  lengths: np.ndarray  # Rows in each step.
  segments: np.ndarray  # Each row's unit, as an index into its step's sampled units.
  step_seeds: np.ndarray  # int64[steps, 2]: each step's noise seed.


def poisson_selection(codes: np.ndarray, *, sampling_rate: float, steps: int, seed: int,
                      max_rows_per_unit: int = 0) -> Selection:
  """Which rows (of units `codes`, 0..units-1 per row) `poisson_sample` takes, from `seed` alone.

  Needs no row's values: a runtime whose rows are elsewhere sends the
  selection to where they are (`tffaml.cluster.sampling`).
  """
  if not 0 < sampling_rate <= 1:
    raise ValueError(f'sampling_rate must be in (0, 1], got {sampling_rate}.')
  units = int(codes.max()) + 1
  rng = np.random.default_rng(seed)
  # Rows grouped by unit, in a random order within each unit, then capped.
  order = np.lexsort((rng.random(len(codes)), codes))
  sizes = np.bincount(codes, minlength=units)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  kept = np.minimum(sizes, max_rows_per_unit) if max_rows_per_unit else sizes
  sampled = rng.random((steps, units)) < sampling_rate
  step_rows, step_segments = [], []
  for step_units in sampled:
    chosen = np.flatnonzero(step_units)
    step_rows.append(np.concatenate(
        [order[starts[u]:starts[u] + kept[u]] for u in chosen] or [np.zeros(0, int)]))
    step_segments.append(np.repeat(np.arange(len(chosen), dtype=np.int32), kept[chosen]))
  step_seeds = rng.integers(0, np.iinfo(np.int64).max, (steps, 2), dtype=np.int64)
  return Selection(rows=np.concatenate(step_rows).astype(np.int64),
                   lengths=np.array([len(r) for r in step_rows], np.int64),
                   segments=np.concatenate(step_segments), step_seeds=step_seeds)


def stored_selection(institution: shards.StoredInstitution, schema: schema_lib.Schema, *, sampling_rate: float,
                     steps: int, seed: int, max_rows_per_unit: int = 0) -> Selection:
  """`poisson_selection` of a stored institution's training rows, each its own unit: from the row count alone.

  Its `rows` are lines of the train file: those of the rows `poisson_sample`
  takes from the same rows in memory (the file holds them shuffled), so a
  seeded run draws the same sample with `config.data.stream` on and off.
  """
  if schema.unit:
    raise ValueError(f'a stored split is sampled by rows; {schema.unit!r} groups them into units.')
  selection = poisson_selection(np.arange(institution.counts['train_rows']), sampling_rate=sampling_rate,
                                steps=steps, seed=seed, max_rows_per_unit=max_rows_per_unit)
  return dataclasses.replace(selection, rows=shards.train_lines(institution)[selection.rows])


def selected_steps(path, schema: schema_lib.Schema, selection: Selection) -> tf.data.Dataset:
  """`poisson_sample`'s dataset of the rows `selection` takes from the stored split at `path`.

  Whoever iterates it reads the file: a TFF worker holding it
  (`tffaml.cluster`), or this process. `path` and `selection`'s fields may
  be tensors (a computation's parameters) or values.
  """
  def to_steps(lines):
    features, labels = shards.decode(lines, schema)
    ragged = lambda values: tf.RaggedTensor.from_row_lengths(tf.gather(values, selection.rows),
                                                             selection.lengths)
    return steps_dataset(collections.OrderedDict((c, ragged(v)) for c, v in features.items()), ragged(labels),
                         tf.RaggedTensor.from_row_lengths(selection.segments, selection.lengths),
                         selection.step_seeds)

  whole_file = (1 << 31) - 1
  return client_data.lean(tf.data.TextLineDataset(path).skip(1).batch(whole_file).flat_map(to_steps))


def steps_dataset(features, labels, segments, step_seeds) -> tf.data.Dataset:
  """`poisson_sample`'s dataset from its ragged [steps, rows] parts and [steps, 2] seeds."""
  # Slices of a ragged tensor are dense; the identity map makes tf.data say so.
  return client_data.lean(tf.data.Dataset.from_tensor_slices(
      (features, labels, segments, step_seeds)).map(lambda *element: element))


def _clipped_noised_mean_gradient(
    per_example_grads, *, l2_norm_clip, noise_multiplier, expected_batch_size, seed,
    segments=None,
):
  """(Σ_u clip(g_u) + N(0, σ²C² I)) / B, for g_u the units' gradients.

  A unit's gradient is the sum of its rows' (`segments` gives each row's
  unit; None: every row is its own unit).
  """
  if segments is not None:
    units = tf.reduce_max(tf.concat([segments, [-1]], axis=0)) + 1  # 0 for an empty batch.
    per_example_grads = [
        tf.math.unsorted_segment_sum(g, segments, units) for g in per_example_grads]
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


def _per_row_gradients(model, loss_fn, trainable, x, y) -> list[tf.Tensor]:
  """Each row's loss gradient, [rows, *shape] per variable.

  `tf.vectorized_map` over rows runs one row's forward and backward pass,
  vectorised: O(rows x weights) memory and work. The Jacobian of the batch's
  losses (`tape.jacobian` with pfor) carries a [rows, rows, width] tensor
  through every layer's backward pass instead: 150 times slower for the
  logistic model on 6,000 rows, and out of memory for a 64-unit MLP.
  """

  def row_gradient(row):
    x_row, y_row = tf.nest.map_structure(lambda t: t[tf.newaxis], row)
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(loss_fn(y_row, model.predict_on_batch(x_row, training=True)))
    return [tf.convert_to_tensor(g) for g in tape.gradient(loss, trainable)]

  return tf.vectorized_map(row_gradient, (x, y))


def _build_client_update(model, optimizer, *, loss_fn, l2_norm_clip, noise_multiplier, expected_batch_size,
                         loop_implementation):
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
      x, y, segments, seed = batch
      per_example = _per_row_gradients(model, loss_fn, trainable, x, y)
      gradients = _clipped_noised_mean_gradient(
          per_example, l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
          expected_batch_size=float(expected_batch_size), seed=seed, segments=segments)
      optimizer_state, updated = optimizer.next(optimizer_state, trainable, tuple(gradients))
      for variable, value in zip(trainable, updated):
        variable.assign(value)
      return optimizer_state, steps + 1, sampled + tf.shape(y, out_type=tf.int64)[0]

    _, steps, sampled = loop_builder.build_training_loop(loop_implementation)(
        step, dataset,
        lambda: (optimizer_state, tf.constant(0, tf.int64), tf.constant(0, tf.int64)))
    update = tf.nest.map_structure(tf.subtract, initial_weights.trainable, weights.trainable)
    return (
        tff.learning.templates.ClientResult(update=update, update_weight=tf.constant(1.0)),
        collections.OrderedDict(steps=steps, sampled_examples=sampled),
    )

  return client_update


def _check_dp_sgd(*, l2_norm_clip: float, noise_multiplier: float, expected_batch_size: float) -> None:
  if not l2_norm_clip > 0:
    raise ValueError(f'l2_norm_clip must be > 0, got {l2_norm_clip}.')
  if not noise_multiplier >= 0:
    raise ValueError(f'noise_multiplier must be >= 0, got {noise_multiplier}.')
  if not expected_batch_size > 0:
    raise ValueError(f'expected_batch_size must be > 0, got {expected_batch_size}.')


def _client_types(model_fn: Callable[[], tff.learning.models.VariableModel]):
  """(model weights type, `poisson_batches` sequence type) of the model's inputs."""
  with tf.Graph().as_default():
    model = model_fn()
  x_spec, y_spec = model.input_spec
  segments_spec = tf.TensorSpec([None], tf.int32)
  seed_spec = tf.TensorSpec([2], tf.int64)
  data_type = tff.SequenceType(
      tff.types.tensorflow_to_type((x_spec, y_spec, segments_spec, seed_spec)))
  return tff.learning.models.weights_type_from_model(model), data_type


def build_dp_sgd_client_work(
    *,
    model_fn: Callable[[], tff.learning.models.VariableModel],
    optimizer: tff.learning.optimizers.Optimizer,
    l2_norm_clip: float,
    noise_multiplier: float,
    expected_batch_size: float,
    loss_fn: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] = tf.keras.losses.binary_crossentropy,
    loop_implementation: tff.learning.LoopImplementation = tff.learning.LoopImplementation.DATASET_REDUCE,
) -> tff.learning.templates.ClientWorkProcess:
  """A client work process training each institution with DP-SGD.

  Type signature of `next`:
  `(<state@SERVER, ModelWeights@CLIENTS, {<x, y, segments, seed>*}@CLIENTS> ->
  <state@SERVER, ClientResult@CLIENTS, <train=<steps, sampled_examples>>@SERVER>)`
  where the client data comes from `poisson_batches`.

  Every institution's update has weight 1: a weight by sampled rows would
  leak the sample. The measurements are the numbers of steps and of sampled
  rows, summed over institutions; no unprotected training loss leaves an
  institution.

  Args:
    model_fn: Constructs the TFF model (`processes.build_model_fn`).
    optimizer: The local optimizer applied to the noised gradients.
    l2_norm_clip: Per-unit gradient clip C (> 0).
    noise_multiplier: σ (>= 0; 0 trains with clipping only, no DP).
    expected_batch_size: B, the divisor of the noised sum (> 0; distributed
      DP divides by the federation's expected batch over the institutions).
    loss_fn: `(labels, scores) -> per-row losses` (`tabular.per_example_loss`).
    loop_implementation: How the local loop iterates the batches, as in TFF's
      builders (`processes.LOOP` is the fast choice in simulation).

  Returns:
    A `tff.learning.templates.ClientWorkProcess`.
  """
  _check_dp_sgd(l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
                expected_batch_size=expected_batch_size)
  weights_type, data_type = _client_types(model_fn)

  @tff.tensorflow.computation(weights_type, data_type)
  def client_update(initial_weights, dataset):
    # tf.function orders the variable updates (TFF traces in plain graph mode).
    return _build_client_update(
        model_fn(), optimizer, loss_fn=loss_fn, l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
        expected_batch_size=expected_batch_size, loop_implementation=loop_implementation,
    )(initial_weights, dataset)

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

"""Federated learning and evaluation processes over Keras models.

`build_train_process` covers the algorithms of the federated optimisation
literature as choices of TFF builder and optimizers:

* FedAvg (McMahan et al. 2017, arXiv:1602.05629): local SGD, averaged
  updates applied by a server optimizer; weighted by examples or uniform.
* FedProx (Li et al. 2020, arXiv:1812.06127): FedAvg with a proximal term
  `proximal_strength / 2 * ||w - w_server||^2` in the local objective.
* FedAdam / FedYogi (Reddi et al. 2021, arXiv:2003.00295): FedAvg with an
  Adam or Yogi server optimizer (`server_optimizer`).
* FedSGD: one gradient per institution per round over its local data,
  averaged by example count.
"""

import collections
import dataclasses
import enum
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml.federated import aggregators
from tffaml.federated import dp_sgd
from tffaml.models import metrics as metrics_lib
from tffaml.models import tabular


# Local training loops iterate the dataset instead of `Dataset.reduce`. Under
# `reduce`, TF re-instantiates (and re-optimizes with Grappler) every function
# the loop body calls, once per institution per round: at 100 institutions
# that was 80% of a round (7.0 s against 1.3 s; see README "Benchmarks").
LOOP = tff.learning.LoopImplementation.DATASET_ITERATOR


class Algorithm(enum.Enum):
  FEDAVG = 'fedavg'
  FEDPROX = 'fedprox'
  FEDSGD = 'fedsgd'


class Weighting(enum.Enum):
  EXAMPLES = 'examples'  # Institutions weighted by their number of examples.
  UNIFORM = 'uniform'  # Every institution counts the same (needed for DP).


class OptimizerType(enum.Enum):
  SGD = 'sgd'
  ADAM = 'adam'
  YOGI = 'yogi'


@dataclasses.dataclass(frozen=True)
class Parts:
  """A training process as TFF composes it, its parts kept apart for runtimes that split it.

  The simulation runs `compose()`; a federation of separate machines runs
  `client_work` at each institution and `aggregator` then `finalizer` at the
  coordinator, on the state `compose().initialize()` makes (TFF's
  `LearningAlgorithmState`), so the two give the same models.
  """

  initial_model_weights: tff.Computation
  client_work: tff.learning.templates.ClientWorkProcess
  # Weighted: (state, updates@CLIENTS, weights@CLIENTS); None in a node's client-side parts.
  aggregator: Optional[tff.templates.AggregationProcess]
  finalizer: Optional[tff.learning.templates.FinalizerProcess]

  @property
  def weights_type(self) -> tff.types.StructType:
    return self.initial_model_weights.type_signature.result

  def compose(self) -> tff.learning.templates.LearningProcess:
    return tff.learning.templates.compose_learning_process(
        self.initial_model_weights, tff.learning.templates.build_broadcast_process(self.weights_type),
        self.client_work, self.aggregator, self.finalizer)

  def client_update(self, weights: tff.learning.models.ModelWeights, client_data_value):
    """One institution's (ClientResult, measurements) from the global `weights`: what it sends."""
    output = self.client_work.next(self.client_work.initialize(), [weights], [client_data_value])
    return output.result[0], output.measurements

  def server_update(self, state, results: Sequence[tff.learning.templates.ClientResult]):
    """(`state` after aggregating `results` and applying the update, aggregator measurements).

    `state` is the composed process's (`compose().initialize()`); the client
    work and distributor here are stateless (FedAvg's and DP-SGD's are `()`).
    """
    aggregated = self.aggregator.next(state.aggregator, [r.update for r in results],
                                      [r.update_weight for r in results])
    finalized = self.finalizer.next(state.finalizer, state.global_model_weights, aggregated.result)
    return (tff.learning.templates.LearningAlgorithmState(
        finalized.result, state.distributor, state.client_work, aggregated.state, finalized.state),
            aggregated.measurements)


def _initial_model_weights(model_fn: Callable[[], tff.learning.models.VariableModel]) -> tff.Computation:
  @tff.tensorflow.computation
  def initial_model_weights_fn():
    return tff.learning.models.ModelWeights.from_model(model_fn())
  return initial_model_weights_fn


def _parts(model_fn, client_work_fn: Callable[[tff.types.StructType], tff.learning.templates.ClientWorkProcess],
           aggregator: Optional[aggregators.Factory], server_optimizer: tff.learning.optimizers.Optimizer) -> Parts:
  """The parts around a client work: a weighted `aggregator` and the server optimizer's finalizer.

  Without `aggregator`, the client work only (an institution's node runs nothing else).
  """
  initial = _initial_model_weights(model_fn)
  weights_type = initial.type_signature.result
  if aggregator is None:
    return Parts(initial_model_weights=initial, client_work=client_work_fn(weights_type),
                 aggregator=None, finalizer=None)
  if not isinstance(aggregator, tff.aggregators.WeightedAggregationFactory):
    aggregator = tff.aggregators.as_weighted_aggregator(aggregator)  # Every weight is 1 then.
  return Parts(
      initial_model_weights=initial, client_work=client_work_fn(weights_type),
      aggregator=aggregator.create(weights_type.trainable, tff.TensorType(np.float32)),
      finalizer=tff.learning.templates.build_apply_optimizer_finalizer(server_optimizer, weights_type))


def build_optimizer(
    optimizer_type: OptimizerType, *, learning_rate: float, momentum: float = 0.0
) -> tff.learning.optimizers.Optimizer:
  """A TFF optimizer (`tff.learning` no longer takes Keras optimizers)."""
  if not learning_rate > 0:
    raise ValueError(f'learning_rate must be > 0, got {learning_rate}.')
  if optimizer_type is OptimizerType.SGD:
    return tff.learning.optimizers.build_sgdm(learning_rate=learning_rate, momentum=momentum or None)
  if optimizer_type is OptimizerType.ADAM:
    return tff.learning.optimizers.build_adam(learning_rate=learning_rate)
  if optimizer_type is OptimizerType.YOGI:
    return tff.learning.optimizers.build_yogi(learning_rate=learning_rate)
  raise ValueError(f'no optimizer for {optimizer_type!r}.')


def build_model_fn(
    *,
    keras_model_fn: Callable[[], tf.keras.Model],
    element_spec,
    loss_fn: tabular.PerExampleLoss = tf.keras.losses.binary_crossentropy,
    threshold: Optional[float] = 0.5,
) -> Callable[[], tff.learning.models.VariableModel]:
  """A TFF model constructor.

  Args:
    keras_model_fn: Builds the Keras model (one score per row).
    element_spec: Of the client datasets' (features, labels) batches.
    loss_fn: The per-row loss (`tabular.per_example_loss`), averaged.
    threshold: For a classifier, where accuracy counts a positive; None for
      a model whose score is not a probability (no classification metrics).
  """

  def model_fn() -> tff.learning.models.VariableModel:
    return tff.learning.models.from_keras_model(
        keras_model_fn(),
        loss=tabular.keras_loss(loss_fn),
        input_spec=element_spec,
        metrics=[] if threshold is None else metrics_lib.evaluation_metrics(threshold),
    )

  return model_fn


def _check_weighting(weighting: Weighting, aggregator: Optional[aggregators.Factory]) -> None:
  weighted = weighting is Weighting.EXAMPLES
  if aggregator is not None and weighted != isinstance(aggregator, tff.aggregators.WeightedAggregationFactory):
    raise ValueError(
        f'weighting={weighting.value!r} needs a'
        f' {"weighted" if weighted else "unweighted"} aggregator, got'
        f' {type(aggregator).__name__}.'
    )


def build_train_process(
    *,
    model_fn: Callable[[], tff.learning.models.VariableModel],
    algorithm: Algorithm,
    weighting: Weighting,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
    aggregator: aggregators.Factory,
    proximal_strength: float = 0.0,
) -> tff.learning.templates.LearningProcess:
  """Builds the training process.

  Type signature of `next`:
  `(<state@SERVER, {tf.data.Dataset}@CLIENTS> -> <state@SERVER, metrics@SERVER>)`.

  Args:
    model_fn: Constructs the TFF model (see `build_model_fn`).
    algorithm: FedAvg, FedProx or FedSGD.
    weighting: How institutions are weighted; must match `aggregator`.
    client_optimizer: Local optimizer (ignored by FedSGD).
    server_optimizer: Applies the aggregated update (Adam/Yogi = FedAdam/Yogi).
    aggregator: From `aggregators.configure_aggregator`.
    proximal_strength: FedProx's mu (> 0 for FedProx).

  Returns:
    A `tff.learning.templates.LearningProcess`.
  """
  weighted = weighting is Weighting.EXAMPLES
  _check_weighting(weighting, aggregator)
  if algorithm is Algorithm.FEDSGD:
    if not weighted:
      raise ValueError(
          "algorithm='fedsgd' averages by example count: it needs"
          " weighting='examples' and a non-DP aggregator; use 'fedavg' with one"
          ' local step for DP-FedSGD.'
      )
    return tff.learning.algorithms.build_fed_sgd(
        model_fn, server_optimizer_fn=server_optimizer, model_aggregator=aggregator,
        loop_implementation=LOOP)
  if algorithm is Algorithm.FEDPROX:
    if not proximal_strength > 0:
      raise ValueError(f'fedprox needs proximal_strength > 0, got {proximal_strength}.')
    algorithms = tff.learning.algorithms
    build = algorithms.build_weighted_fed_prox if weighted else algorithms.build_unweighted_fed_prox
    return build(model_fn, client_optimizer_fn=client_optimizer, server_optimizer_fn=server_optimizer,
                 model_aggregator=aggregator, loop_implementation=LOOP,
                 proximal_strength=proximal_strength)
  if algorithm is Algorithm.FEDAVG:
    if proximal_strength:
      raise ValueError(f'proximal_strength={proximal_strength} is only for fedprox.')
    return build_fed_avg_parts(
        model_fn=model_fn, weighting=weighting, client_optimizer=client_optimizer,
        server_optimizer=server_optimizer, aggregator=aggregator).compose()
  raise ValueError(f'no training process for {algorithm!r}.')


def build_fed_avg_parts(
    *,
    model_fn: Callable[[], tff.learning.models.VariableModel],
    weighting: Weighting,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
    aggregator: aggregators.Factory,
) -> Parts:
  """FedAvg's parts, as TFF's `build_weighted_fed_avg` / `build_unweighted_fed_avg` compose them.

  Client work `next`: `(<(), ModelWeights@CLIENTS, {<x, y>*}@CLIENTS> ->
  <(), ClientResult@CLIENTS, <train=metrics>@SERVER>)`.
  """
  _check_weighting(weighting, aggregator)
  from tensorflow_federated.python.learning.templates import model_delta_client_work  # pylint: disable=g-import-not-at-top
  client_weighting = (tff.learning.ClientWeighting.NUM_EXAMPLES if weighting is Weighting.EXAMPLES
                      else tff.learning.ClientWeighting.UNIFORM)
  return _parts(model_fn, lambda _: model_delta_client_work.build_model_delta_client_work(
      model_fn, client_optimizer, client_weighting, loop_implementation=LOOP), aggregator, server_optimizer)


def build_eval_process(
    model_fn: Callable[[], tff.learning.models.VariableModel],
) -> tff.learning.templates.LearningProcess:
  """Federated evaluation: metric states summed over institutions, then finalised.

  Type signature of `next`:
  `(<state@SERVER, {tf.data.Dataset}@CLIENTS> -> <state@SERVER, metrics@SERVER>)`.
  """
  return tff.learning.algorithms.build_fed_eval(model_fn, loop_implementation=LOOP)


def build_dp_sgd_train_parts(
    *,
    model_fn: Callable[[], tff.learning.models.VariableModel],
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
    aggregator: tff.aggregators.UnweightedAggregationFactory,
    l2_norm_clip: float,
    noise_multiplier: float,
    expected_batch_size: float,
    loss_fn: tabular.PerExampleLoss = tf.keras.losses.binary_crossentropy,
) -> Parts:
  """FedAvg whose institutions train with record-level DP-SGD.

  TFF's FedAvg composition (broadcast, client work, aggregator, server
  optimizer) with `dp_sgd.build_dp_sgd_client_work` as the client work;
  `aggregator` (unweighted: institutions count the same) may itself be
  client-level DP.

  Type signature of the composed `next`:
  `(<state@SERVER, {<x, y, seed>*}@CLIENTS> -> <state@SERVER, metrics@SERVER>)`,
  client data from `dp_sgd.poisson_batches`.
  """
  _check_weighting(Weighting.UNIFORM, aggregator)
  return _parts(model_fn, lambda _: dp_sgd.build_dp_sgd_client_work(
      model_fn=model_fn, optimizer=client_optimizer, l2_norm_clip=l2_norm_clip,
      noise_multiplier=noise_multiplier, expected_batch_size=expected_batch_size,
      loss_fn=loss_fn, loop_implementation=LOOP), aggregator, server_optimizer)


def _scaled_updates(inner: tff.learning.templates.ClientWorkProcess) -> tff.learning.templates.ClientWorkProcess:
  """`inner`, each institution's update multiplied by the scale sent with its data.

  Client data: `<data=inner's data, scale=float32*>` (a one-element sequence:
  TFF client data must be sequences).
  """
  state_type = inner.initialize.type_signature.result
  _, weights_type, data_type = inner.next.type_signature.parameter
  result_type = inner.next.type_signature.result.result.member
  scaled_data_type = tff.FederatedType(
      tff.StructType([('data', data_type.member), ('scale', tff.SequenceType(np.float32))]), tff.CLIENTS)

  @tff.tensorflow.computation(result_type, tff.SequenceType(np.float32))
  def scale_update(result, scale):
    factor = scale.reduce(0.0, lambda total, x: total + x)
    return tff.learning.templates.ClientResult(
        update=tf.nest.map_structure(lambda u: u * factor, result.update),
        update_weight=result.update_weight)

  @tff.federated_computation(state_type, weights_type, scaled_data_type)
  def next_fn(state, weights, client_data):
    output = inner.next(state, weights, client_data.data)
    return tff.templates.MeasuredProcessOutput(
        output.state, tff.federated_map(scale_update, (output.result, client_data.scale)),
        output.measurements)

  return tff.learning.templates.ClientWorkProcess(inner.initialize, next_fn)


def scaled_client_data(dataset: tf.data.Dataset, scale: float) -> collections.OrderedDict:
  """An institution's data for `build_scaled_update_train_parts`."""
  return collections.OrderedDict(data=dataset, scale=tf.data.Dataset.from_tensors(np.float32(scale)))


def build_scaled_update_train_parts(
    *,
    model_fn: Callable[[], tff.learning.models.VariableModel],
    weighting: Weighting,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
    aggregator: aggregators.Factory,
) -> Parts:
  """FedAvg in which an institution's update is multiplied by a scale it sends.

  The simulation of model replacement (Bagdasaryan et al. 2020, "How To
  Backdoor Federated Learning", arXiv:1807.00459): a malicious institution
  boosts its update so that it survives averaging; honest ones send scale 1,
  which is plain FedAvg.

  Type signature of the composed `next`:
  `(<state@SERVER, {<data=<x, y>*, scale=float32*>}@CLIENTS> -> <state@SERVER, metrics@SERVER>)`,
  client data from `scaled_client_data`.
  """
  fed_avg = build_fed_avg_parts(model_fn=model_fn, weighting=weighting, client_optimizer=client_optimizer,
                                server_optimizer=server_optimizer, aggregator=aggregator)
  return dataclasses.replace(fed_avg, client_work=_scaled_updates(fed_avg.client_work))

"""The models, aggregator, training process and client data a config builds (typed choices in, TFF out)."""

import collections
import dataclasses
import enum
import hashlib
import json
import threading
from typing import Callable, Optional

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import errors
from tffaml.config import checks as config_checks
from tffaml.config import data as config_data
from tffaml.config import plan as config_plan
from tffaml.data import federated_data
from tffaml.data import shards
from tffaml.federated import aggregators
from tffaml.federated import client_data
from tffaml.federated import dp_sgd
from tffaml.federated import processes
from tffaml.models import canaries as canaries_lib
from tffaml.models import tabular
from tffaml.privacy import accounting


def _no_params(section: ml_collections.ConfigDict) -> dict:
  del section  # A model or aggregator with no parameters of its own.
  return {}


# How each model's parameters (`tabular.ModelParams` fields) are read from
# config.model. tests/config/config_test.py holds that every
# `tabular.ModelType` has an entry.
MODEL_PARAMS: dict[tabular.ModelType, Callable[[ml_collections.ConfigDict], dict]] = {
    tabular.ModelType.MLP: lambda m: dict(hidden_units=tuple(m.hidden_units), embedding_dim=m.embedding_dim,
                                          prior_positive_rate=m.prior_positive_rate),
    tabular.ModelType.LOGISTIC: lambda m: dict(prior_positive_rate=m.prior_positive_rate),
    tabular.ModelType.AUTOENCODER: lambda m: dict(hidden_units=tuple(m.hidden_units)),
    tabular.ModelType.RARITY: _no_params,
}


# How each aggregator's parameters are read from config.aggregator: the
# `aggregators.Params` fields it uses beyond the run's (weighting, cohort,
# noise multiplier and seed). tests/config/config_test.py holds that every
# `aggregators.AggregatorType` has an entry.
AGGREGATOR_PARAMS: dict[aggregators.AggregatorType, Callable[[ml_collections.ConfigDict], dict]] = {
    aggregators.AggregatorType.MEAN: _no_params,
    aggregators.AggregatorType.ROBUST: _no_params,
    aggregators.AggregatorType.SECURE: _no_params,
    aggregators.AggregatorType.CLIPPING: lambda a: dict(clip=a.clip, zeroing_norm=a.zeroing_norm),
    aggregators.AggregatorType.MEDIAN: _no_params,
    aggregators.AggregatorType.TRIMMED_MEAN: lambda a: dict(trim_fraction=a.trim_fraction),
    aggregators.AggregatorType.GAUSSIAN_FIXED: lambda a: dict(clip=a.clip),
    aggregators.AggregatorType.GAUSSIAN_ADAPTIVE: lambda a: dict(
        clip=a.clip, target_unclipped_quantile=a.target_unclipped_quantile,
        clip_learning_rate=a.clip_learning_rate, clipped_count_stddev=a.clipped_count_stddev),
}


def aggregator_params(config, choices: config_checks.Choices, plan: accounting.PrivacyPlan, *, cohort: int,
                      noise_seed: int) -> aggregators.Params:
  """The run's aggregator parameters: its weighting, cohort and noise, and the type's own (`AGGREGATOR_PARAMS`)."""
  a = config.aggregator
  read = errors.registered(AGGREGATOR_PARAMS, choices.aggregator, 'tffaml.config.builders.AGGREGATOR_PARAMS')
  return aggregators.Params(
      weighted=choices.weighting is processes.Weighting.EXAMPLES, clients_per_round=cohort,
      noise_multiplier=plan.client.noise_multiplier if plan.client else a.noise_multiplier,
      noise_seed=noise_seed, **read(a))


def build_aggregator(
    config, choices: config_checks.Choices, plan: accounting.PrivacyPlan, *, cohort: int, noise_seed: int
) -> aggregators.Factory:
  return aggregators.build(
      choices.aggregator, aggregator_params(config, choices, plan, cohort=cohort, noise_seed=noise_seed))


def loss_fn(config, choices: config_checks.Choices) -> tabular.PerExampleLoss:
  return tabular.per_example_loss(
      choices.loss, positive_weight=config.model.positive_weight, focal_gamma=config.model.focal_gamma)


def keras_model_fn(config, choices: config_checks.Choices, space) -> Callable[[], tf.keras.Model]:
  """Builds the config's Keras model on the federated feature statistics `space` (audited, in a canary audit)."""
  read = errors.registered(MODEL_PARAMS, choices.model, 'tffaml.config.builders.MODEL_PARAMS')
  # Read now: the builder outlives this call (`build_training` keeps it), the config may change.
  model_type, seed, params, canaries = choices.model, config.seed, read(config.model), config_data.canary_records(config)
  build = lambda: tabular.build_model(model_type=model_type, feature_space=space, seed=seed, **params)
  if canaries:
    return canaries_lib.canary_model(build, canaries)
  return build


def initial_weights(keras_model: Callable[[], tf.keras.Model]) -> tff.learning.models.ModelWeights:
  """The model's initial weights (seeded by the model's builder, so every party makes the same)."""
  return tff.learning.models.ModelWeights.from_model(keras_model())


def model_fn(config, choices: config_checks.Choices, keras_model: Callable[[], tf.keras.Model], element_spec):
  """The TFF model: the config's loss, and classification metrics for classifiers."""
  return processes.build_model_fn(
      keras_model_fn=keras_model, element_spec=element_spec, loss_fn=loss_fn(config, choices),
      threshold=config.model.threshold if choices.model.is_classifier else None)


class ClientWork(enum.Enum):
  """What each institution runs in a round: one choice for the process and its client data."""

  FEDERATED = 'federated'  # The algorithm's client work on shuffled batches.
  DP_SGD = 'dp_sgd'  # Record-level DP-SGD on secretly Poisson-sampled batches.
  # One Poisson sample's clipped gradient sum with a share of the noise.
  DISTRIBUTED_DP_SGD = 'distributed_dp_sgd'
  SCALED_UPDATES = 'scaled_updates'  # FedAvg whose clients scale their updates (a boosting attack).


def client_work(plan: accounting.PrivacyPlan, *, boosting: bool) -> ClientWork:
  """The run's client work (`parse_choices` refuses attacks together with record-level DP)."""
  if boosting:
    return ClientWork.SCALED_UPDATES
  if isinstance(plan.record, accounting.DistributedRecordDp):
    return ClientWork.DISTRIBUTED_DP_SGD
  if plan.record is not None:
    return ClientWork.DP_SGD
  return ClientWork.FEDERATED


def build_train_process(config, choices: config_checks.Choices, plan: accounting.PrivacyPlan, *, work: ClientWork,
                        model_fn, aggregator) -> tff.learning.templates.LearningProcess:
  """The training process running `work` at each institution (FedProx and FedSGD: TFF's builders)."""
  if work is ClientWork.FEDERATED and choices.algorithm is not processes.Algorithm.FEDAVG:
    f = config.federated
    optimizers = _optimizers(config, choices, plan)
    return processes.build_train_process(
        model_fn=model_fn, algorithm=choices.algorithm, weighting=choices.weighting, aggregator=aggregator,
        proximal_strength=f.proximal_strength, **optimizers)
  return build_train_parts(config, choices, plan, work=work, model_fn=model_fn, aggregator=aggregator).compose()


class Side(enum.Enum):
  """Which party's share of the training a runtime builds."""

  WHOLE = 'whole'  # The simulation: the composed process.
  COORDINATOR = 'coordinator'  # The aggregator and server step, on the composed process's state.
  NODE = 'node'  # An institution's client work only.



@dataclasses.dataclass(frozen=True)
class Training:
  """What every runtime builds from a config: the models, the client work and the process."""

  keras_model_fn: Callable[[], tf.keras.Model]
  model_fn: Callable[[], tff.learning.models.VariableModel]
  work: ClientWork
  parts: Optional[processes.Parts]  # None for FedProx and FedSGD (built whole by TFF).
  process: Optional[tff.learning.templates.LearningProcess]  # None at a node.


# Where a config names its files and whether rows stream from them: where the
# rows are read from and how, never what is built.
_ROW_SOURCE_KEYS = (('data', 'dir'), ('data', 'path'), ('data', 'schema_file'), ('public', 'path'),
                    ('data', 'stream'))
# What only a run reads, after its build (its evaluation, the pooled reference,
# the copies it fine-tunes, where its rounds run): runs that differ only there,
# as a study's and a streamed run do, share one build.
_RUN_SECTIONS = ('evaluation', 'reference', 'personalize', 'runtime')
# Built trainings by what they were built from (`_build_key`), the most recent last.
_BUILT: collections.OrderedDict[str, Training] = collections.OrderedDict()
BUILT_KEPT = 8  # Each holds its traced TFF computations and Keras builders.
_build_counts = {'hits': 0, 'misses': 0}
_built_lock = threading.Lock()


def _build_key(config, plan: accounting.PrivacyPlan, space, schema, **arguments) -> str:
  """Everything a build reads: the config (but its row sources and run sections), plan, feature space, schema."""
  values = config.to_dict()
  for section, key in _ROW_SOURCE_KEYS:
    if section in values and key in values[section]:
      values[section][key] = ''
  for section in _RUN_SECTIONS:
    values.pop(section, None)
  described = [values, repr(plan), space.to_dict(), schema.to_dict(), sorted(arguments.items(), key=str)]
  return hashlib.sha256(json.dumps(described, sort_keys=True, default=repr).encode()).hexdigest()


def build_counts() -> dict[str, int]:
  """How often `build_training` reused a built training ('hits') or built one ('misses') in this process."""
  return dict(_build_counts)


def build_training(config, choices: config_checks.Choices, plan: accounting.PrivacyPlan, space, schema, *,
                   side: Side, cohort: int = 0, noise_seed: int = 0, boosting: bool = False) -> Training:
  """The models and training of `config` on feature space `space`, for `side`: built once per process.

  Building traces the client work and the process into TFF computations:
  most of a short run's CPU (about 3 of a smoke run's 5 CPU-s). A built
  training holds no run's state (a process's state is its `initialize()`),
  so runs from the same config, plan, feature space and schema share one,
  wherever their files are: a study's runs, a resumed run, a node's runs.

  Args:
    config: The experiment config.
    choices: Its parsed choices.
    plan: The run's privacy plan.
    space: The federated feature statistics (`features.FeatureSpace`).
    schema: The institutions' schema.
    side: Which party's share to build.
    cohort: Institutions per round (not used at a node).
    noise_seed: The aggregator's noise seed (not used at a node).
    boosting: Whether clients scale their updates (a simulated attack).

  Raises:
    errors.ConfigError: a federation (COORDINATOR or NODE) of FedProx or FedSGD.
  """
  key = _build_key(config, plan, space, schema, side=side.value, cohort=cohort, noise_seed=noise_seed,
                   boosting=boosting)
  with _built_lock:  # A node may answer requests on several threads.
    if key in _BUILT:
      _build_counts['hits'] += 1
      _BUILT.move_to_end(key)
      return _BUILT[key]
    _build_counts['misses'] += 1
  training = _build_training(config, choices, plan, space, schema, side=side, cohort=cohort,
                             noise_seed=noise_seed, boosting=boosting)
  with _built_lock:
    _BUILT[key] = training
    while len(_BUILT) > BUILT_KEPT:
      _BUILT.popitem(last=False)
  return training


def _build_training(config, choices: config_checks.Choices, plan: accounting.PrivacyPlan, space, schema, *,
                    side: Side, cohort: int, noise_seed: int, boosting: bool) -> Training:
  keras_model = keras_model_fn(config, choices, space)
  model = model_fn(config, choices, keras_model, client_data.element_spec(config_data.training_schema(config, schema)))
  work = client_work(plan, boosting=boosting)
  aggregator = None
  if side is not Side.NODE:
    aggregator = build_aggregator(config, choices, plan, cohort=cohort, noise_seed=noise_seed)
  parts = process = None
  if side is Side.WHOLE and work is ClientWork.FEDERATED and choices.algorithm is not processes.Algorithm.FEDAVG:
    process = build_train_process(config, choices, plan, work=work, model_fn=model, aggregator=aggregator)
  else:
    parts = build_train_parts(config, choices, plan, work=work, model_fn=model, aggregator=aggregator)
    process = parts.compose() if aggregator is not None else None
  return Training(keras_model_fn=keras_model, model_fn=model, work=work, parts=parts, process=process)


def _optimizers(config, choices: config_checks.Choices, plan: accounting.PrivacyPlan) -> dict:
  f = config.federated
  return dict(
      client_optimizer=processes.build_optimizer(
          choices.client_optimizer, learning_rate=f.client_learning_rate,
          momentum=f.client_momentum),
      server_optimizer=processes.build_optimizer(
          choices.server_optimizer, learning_rate=config_plan.server_learning_rate(config, plan),
          momentum=f.server_momentum),
  )


def build_train_parts(config, choices: config_checks.Choices, plan: accounting.PrivacyPlan, *, work: ClientWork,
                      model_fn, aggregator) -> processes.Parts:
  """The parts of the training process running `work`, for runtimes that run them apart.

  With `aggregator` None, the client work only (what an institution's node runs).

  Raises:
    errors.ConfigError: FedProx or FedSGD (built whole by TFF: no parts).
  """
  optimizers = _optimizers(config, choices, plan)
  if work is ClientWork.SCALED_UPDATES:
    if choices.algorithm is not processes.Algorithm.FEDAVG:
      raise errors.ConfigError(f"config.attack.type='boost' simulates FedAvg; config.federated.algorithm="
                       f'{config.federated.algorithm!r} must be \'fedavg\'.')
    return processes.build_scaled_update_train_parts(
        model_fn=model_fn, weighting=choices.weighting, aggregator=aggregator, **optimizers)
  if work is ClientWork.DP_SGD:
    return processes.build_dp_sgd_train_parts(
        model_fn=model_fn, aggregator=aggregator, l2_norm_clip=plan.record.clip,
        noise_multiplier=plan.record.noise_multiplier,
        expected_batch_size=plan.record.expected_batch_size, loss_fn=loss_fn(config, choices),
        **optimizers)
  if work is ClientWork.DISTRIBUTED_DP_SGD:
    # One step of plain SGD at rate 1 makes each update the institution's
    # noised gradient sum over the federation's expected batch / K; the
    # mean over K institutions is then one DP-SGD gradient, which the
    # server optimizer applies.
    return processes.build_dp_sgd_train_parts(
        model_fn=model_fn, aggregator=aggregator, l2_norm_clip=plan.record.clip,
        noise_multiplier=plan.record.noise_share,
        expected_batch_size=plan.record.expected_batch_size / len(plan.record.units),
        loss_fn=loss_fn(config, choices), server_optimizer=optimizers['server_optimizer'],
        client_optimizer=processes.build_optimizer(processes.OptimizerType.SGD, learning_rate=1.0))
  if work is ClientWork.FEDERATED:
    if choices.algorithm is not processes.Algorithm.FEDAVG:
      raise errors.ConfigError(
          f'config.federated.algorithm={config.federated.algorithm!r} is built whole by TFF and runs'
          " only in simulation; use 'fedavg' (FedAdam and FedYogi are fedavg with a server optimizer).")
    return processes.build_fed_avg_parts(model_fn=model_fn, weighting=choices.weighting,
                                         aggregator=aggregator, **optimizers)
  raise ValueError(f'no training process for {work!r}.')


def stable_seed(*parts: int) -> int:
  """A seed derived from `parts` (e.g. the run's seed, the round, the institution)."""
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def stored_selection(config, work: ClientWork, plan: accounting.PrivacyPlan, schema,
                     institution: shards.StoredInstitution, *, index: int, round_num: int,
                     noise_seed: int) -> dp_sgd.Selection:
  """The rows DP-SGD `work` samples from a stored `institution` (rows as units) for `round_num`."""
  f, rows = config.federated, institution.counts['train_rows']
  rate, steps = (dp_sgd.batches_plan(units=rows, expected_batch_size=f.batch_size, epochs=f.client_epochs)
                 if work is ClientWork.DP_SGD else (plan.record.sampling_rate, 1))
  return dp_sgd.stored_selection(institution, schema, sampling_rate=rate, steps=steps,
                                 seed=stable_seed(noise_seed, round_num, index),
                                 max_rows_per_unit=config.record_dp.max_rows_per_unit)


def shuffle_seed(config, *, round_num: int, index: int) -> int:
  """The seed of the `index`th institution's batch order in `round_num` (FedAvg's client work)."""
  return stable_seed(config.seed, round_num, index)


def client_dataset(config, work: ClientWork, plan: accounting.PrivacyPlan, schema,
                   institution: federated_data.InstitutionLike, *, index: int, round_num: int,
                   noise_seed: int, scale: float = 1.0):
  """Training data of `institution`, the federation's `index`th, for `round_num`, as `work` takes them.

  Under DP the sample and the noise are secret: seeded from the noise seed,
  which a federation's node keeps to itself.
  """
  f, schema = config.federated, config_data.training_schema(config, schema)
  if work in (ClientWork.DP_SGD, ClientWork.DISTRIBUTED_DP_SGD) and isinstance(institution, shards.StoredInstitution) \
      and not schema.unit:  # Sampled from the row count, read where the file is (a TFF worker's, or here).
    return dp_sgd.selected_steps(institution.train_path, schema, stored_selection(
        config, work, plan, schema, institution, index=index, round_num=round_num, noise_seed=noise_seed))
  if work is ClientWork.DP_SGD:
    return dp_sgd.poisson_batches(
        institution.train, schema, expected_batch_size=f.batch_size, epochs=f.client_epochs,
        seed=stable_seed(noise_seed, round_num, index), max_rows_per_unit=config.record_dp.max_rows_per_unit)
  if work is ClientWork.DISTRIBUTED_DP_SGD:
    return dp_sgd.poisson_sample(
        institution.train, schema, sampling_rate=plan.record.sampling_rate, steps=1,
        seed=stable_seed(noise_seed, round_num, index), max_rows_per_unit=config.record_dp.max_rows_per_unit)
  dataset = client_data.institution_dataset(
      institution, 'train', schema, batch_size=f.batch_size, epochs=f.client_epochs,
      shuffle_seed=shuffle_seed(config, round_num=round_num, index=index))
  if work is ClientWork.SCALED_UPDATES:
    return processes.scaled_client_data(dataset, scale)
  if work is ClientWork.FEDERATED:
    return dataset
  raise ValueError(f'no client data for {work!r}.')

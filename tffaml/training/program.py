"""The federated training program: rounds, checkpoints, metrics, export.

Layout of a run's workdir:

    .lock                  held (flock) by the run using the workdir
    hyperparameters.json   the full config (a resumed run must match it)
    run_identity.json      the data and noise the checkpoints were made with
    secret/noise_seed      the DP noise seed (0600; never in checkpoints)
    checkpoints/           state per round: tff.program.FileProgramStateManager's, or sealed (checkpoints.py)
    results/metrics.csv    per-round metrics (tff.program CSV release manager)
    results/training_curves.png
    logdir/                TensorBoard (tff.program TensorBoard release manager)
    metrics.json           final evaluation, per institution and pooled
    privacy.txt            the privacy statement
    export/                SavedModel + metadata.json (see tffaml.export)

A run killed at any point resumes from its last checkpoint and ends with the
same model as an uninterrupted run: the model's initial weights, the cohort
and the batch order of every round derive from `config.seed` and the round
number, and the DP noise generator's position is part of the checkpointed
aggregator state. The privacy ledger (rounds each institution joined) is
part of every checkpoint, so a resumed run reports the same ε.

The run, in stages (each a function here):
    run            parse and check the config; lock the workdir
    prepare        load and check the data, the attack, the export's
                   interface, the privacy plan (`_Setup`)
    _claim_workdir start a run, or check that the checkpoints are this run's
                   (config, data, noise): all before any TFF work
    _build         feature statistics -> model, aggregator, the client work
                   (`config_builders.ClientWork`) and its client data (`Built`),
                   by the runtime (`InProcess`, or a federation's)
    _restore       the latest checkpoint, the noise seed put back
    _train_rounds  rounds, ledger, metrics, checkpoints; fails on non-finite
    _finish        evaluation, alert threshold, reference, statement, export
"""

import asyncio
import collections
import dataclasses
import json
import math
import os
import secrets
import shutil
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Protocol

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import errors
from tffaml import features
from tffaml import io
from tffaml.data import interface as interface_lib
from tffaml.data import loading
from tffaml.data import schema as schema_lib
from tffaml.export import saved_model
from tffaml.federated import client_data
from tffaml.federated import dp_sgd
from tffaml.federated import quantiles
from tffaml.models import tabular
from tffaml.privacy import accounting
from tffaml.training import centralized
from tffaml.training import checkpoints
from tffaml.training import evaluation
from tffaml.training import personalize
from tffaml.training import public as public_lib
from tffaml.config import builders as config_builders
from tffaml.config import checks as config_checks
from tffaml.config import data as config_data
from tffaml.config import plan as config_plan
from tffaml.config import values as config_values
from tffaml.federated import poisoning
from tffaml.training import report
from tffaml.training import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Paths:
  """Where a run's outputs live, under `root` (see the module docstring)."""

  root: str

  def _join(self, name: str) -> str:
    return os.path.join(self.root, name)

  hyperparameters = property(lambda self: self._join('hyperparameters.json'))
  checkpoints = property(lambda self: self._join('checkpoints'))
  results = property(lambda self: self._join('results'))
  metrics_csv = property(lambda self: self._join('results/metrics.csv'))
  curves = property(lambda self: self._join('results/training_curves.png'))
  logdir = property(lambda self: self._join('logdir'))
  metrics = property(lambda self: self._join('metrics.json'))
  privacy = property(lambda self: self._join('privacy.txt'))
  export = property(lambda self: self._join('export'))
  shards = property(lambda self: self._join('shards'))  # Institutions' rows, with config.data.stream.
  # config.personalize: each institution's fine-tuned copy (export/, privacy.txt) under its name.
  personalized = property(lambda self: self._join('personalized'))


def sample_cohort(
    sampling: accounting.Sampling, *, num_institutions: int, cohort: int, seed: int, round_num: int
) -> list[int]:
  """Indices of the institutions that train in `round_num` (sorted)."""
  rng = np.random.default_rng([seed, round_num])
  if sampling is accounting.Sampling.FULL:
    return list(range(num_institutions))
  if sampling is accounting.Sampling.POISSON:
    return np.flatnonzero(rng.random(num_institutions) < cohort / num_institutions).tolist()
  if sampling is accounting.Sampling.FIXED_SIZE:
    return sorted(rng.choice(num_institutions, cohort, replace=False).tolist())
  raise ValueError(f'no cohort sampling for {sampling!r}.')


def flatten_metrics(value, prefix: str = '') -> dict[str, float]:
  """Numeric scalars of a nested metrics structure as 'a/b/c' -> float."""
  out = {}
  if isinstance(value, Mapping):
    for k, v in value.items():
      out.update(flatten_metrics(v, f'{prefix}{k}/'))
  elif np.ndim(value) == 0 and isinstance(value, (int, float, np.number)):
    out[prefix.rstrip('/')] = float(value)
  return out


def _public_config(config: ml_collections.ConfigDict) -> dict:
  """The config as shipped with a model: without the DP noise seed."""
  value = json.loads(config.to_json_best_effort())
  if value['privacy'].get('noise_seed') is not None:
    value['privacy']['noise_seed'] = 'redacted'
  return value


def _config_for_comparison(config_dict: dict) -> dict:
  config_dict = json.loads(json.dumps(config_dict))
  config_dict['federated'].pop('rounds', None)  # A run may be extended.
  # Where it runs is not what it trains: a run may resume on moved workers,
  # with new certificates or a longer wait.
  config_dict.pop('runtime', None)
  return config_dict


def _claim_workdir(config: ml_collections.ConfigDict, paths: Paths, identity: workdir_lib.Identity,
                   checkpoint_round: Optional[int]) -> None:
  """Checks that the checkpoints in `paths` belong to this run, or starts a new run there.

  Without a checkpoint nothing of a previous attempt is kept: its
  hyperparameters are replaced, so a corrected config can be rerun.
  """
  current = json.loads(config.to_json_best_effort())
  if checkpoint_round is None:
    io.write_json(paths.hyperparameters, current)
    workdir_lib.write_identity(paths.root, identity)
    return
  with open(paths.hyperparameters) as f:
    previous = json.load(f)
  if _config_for_comparison(previous) != _config_for_comparison(current):
    changed = _changed_keys(_config_for_comparison(previous), _config_for_comparison(current))
    raise workdir_lib.WorkdirError(
        f'{paths.root} holds a run with a different config ({paths.hyperparameters}; changed:'
        f' {", ".join(changed)}); resume it with the same config or use a new --workdir.')
  workdir_lib.check_identity(paths.root, identity, checkpoint_round=checkpoint_round,
                             rounds=config.federated.rounds,
                             target_epsilon=config.privacy.target_epsilon)
  io.write_json(paths.hyperparameters, current)


def _changed_keys(before, after, prefix: str = 'config') -> list[str]:
  if isinstance(before, dict) and isinstance(after, dict):
    return [k for key in sorted(set(before) | set(after))
            for k in _changed_keys(before.get(key), after.get(key), f'{prefix}.{key}')]
  return [] if before == after else [prefix]


class _Progress:
  """One line per round with that round's time and the ETA."""

  def __init__(self, total_rounds: int, log: Callable[[str], None]):
    self._total, self._log = total_rounds, log
    self._seconds: list[float] = []  # This session's rounds, each alone.

  def round_done(self, round_num: int, summary: str, seconds: float) -> float:
    """Logs the round's line; returns the ETA in seconds."""
    self._seconds.append(seconds)
    eta = round_estimate(self._seconds) * (self._total - round_num)
    self._log(
        f'round {round_num}/{self._total} | {summary} | {seconds:.2f} s this round'
        f' | ETA {time.strftime("%H:%M:%S", time.gmtime(eta))}'
    )
    return eta

  @property
  def mean_seconds(self) -> Optional[float]:
    return sum(self._seconds) / len(self._seconds) if self._seconds else None


def round_estimate(seconds: list[float]) -> float:
  """A later round's time: the median of a session's rounds after its first.

  The first round of a session carries its start-up (TFF tracing the
  computations; in a federation, every node building its client work),
  often many later rounds' worth: it counts only while it is the only one.
  """
  return statistics.median(seconds[1:] or seconds)


@dataclasses.dataclass
class RunResult:
  paths: Paths
  metrics: Optional[dict]  # None when stopped early.
  rounds_completed: int
  model: Optional[tf.keras.Model] = None  # The exported Keras model.
  warnings: tuple[str, ...] = ()  # E.g. a model no better than chance (scripts exit non-zero).
  threshold: Optional[float] = None  # The export's alert threshold.


@dataclasses.dataclass(frozen=True)
class _Setup:
  """What the config and the data fix before any training: the run's inputs."""

  data: Any  # federated_data.FederatedData, poisoned when an attack is simulated.
  attack: poisoning.Attack
  interface: interface_lib.Interface
  hardening: saved_model.Hardening
  cohort: int
  plan: accounting.PrivacyPlan

  @property
  def identity(self) -> workdir_lib.Identity:
    return workdir_lib.Identity(
        institutions=tuple((s['institution'], s['train_rows'], s['test_rows'])
                           for s in self.data.summary()),
        record_noise_multiplier=self.plan.record.noise_multiplier if self.plan.record else None,
        client_noise_multiplier=self.plan.client.noise_multiplier if self.plan.client else None,
        rounds=None)


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_after_round: Optional[int] = None,
    log: Callable[[str], None] = print,
    runtime: Optional['Runtime'] = None,
    checkpoint_key: Optional[bytes] = None,
) -> RunResult:
  """Trains, evaluates and exports; resumes from `workdir` if it holds a run.

  Call inside `tffaml.runtime.local_runtime()`. Every config check, the
  data's validation and the check that `workdir`'s checkpoints belong to this
  run come before anything is written; one run at a time holds `workdir`.

  Args:
    config: The experiment config (see configs/).
    workdir: Where the run's outputs and checkpoints live.
    stop_after_round: Stop after checkpointing this round, as a killed run
      would (for tests); no evaluation or export then.
    log: Where progress lines go.
    runtime: Where the institutions' data and client work live: by default
      this process (`InProcess`); TFF workers (`tffaml.cluster.runtime.configured`,
      which scripts/train.py uses when config.runtime names them);
      or a federation of nodes (`tffaml.consortium.coordinator.Federation`).
    checkpoint_key: An AES-256 key (`tffaml.security.encryption.load_key`):
      checkpoints are sealed with it at rest. A run resumes only with the
      key it started with, or only without one.

  Returns:
    The paths written and the final metrics.

  Raises:
    errors.Refusal: bad config, data or workdir (before any work: one that
      is a file, read-only or full too), a round whose loss, model or
      metrics are not finite (nothing exported), or a disk that filled
      (the same command resumes once space is freed).
  """
  choices = config_checks.parse_choices(config)
  if config.canary_audit.canaries:
    raise errors.ConfigError(
        f'config.canary_audit.canaries={config.canary_audit.canaries} makes the run a canary audit, which'
        ' trains an instrumented model and exports nothing: run scripts/canary_audit.py (or'
        ' scripts/coordinator.py in a federation), or set config.canary_audit.canaries=0 to train.')
  if runtime is None or isinstance(runtime, InProcess):
    refuse_own_runtime(config, 'this command')
    runtime = runtime or InProcess()
  elif config_data.public_corpus(config) is not None:
    raise errors.ConfigError(
        f'config.public.path={config.public.path!r}: a public start runs in the simulation only for now'
        ' (scripts/train.py without config.runtime.workers); set config.public.path=\'\' here.')
  elif config.personalize.epochs:
    raise errors.ConfigError(
        f'config.personalize.epochs={config.personalize.epochs}: personalized copies are trained where the'
        ' rows are, in the simulation only for now (scripts/train.py without config.runtime.workers); set'
        ' config.personalize.epochs=0 here.')
  config_values.check_public(config)
  runtime.check(config)
  paths = Paths(os.path.abspath(workdir))
  if config.data.source == loading.Source.CSV_DIR.value and config.data.dir:
    workdir_lib.check_outside(paths.root, config.data.dir)
  created = not os.path.exists(paths.root)
  try:
    with workdir_lib.lock(paths.root), workdir_lib.disk_full_resumes(paths.root):
      return _run_locked(config, choices, paths, runtime, stop_after_round=stop_after_round, log=log,
                         checkpoint_key=checkpoint_key)
  except BaseException:
    if created and os.path.isdir(paths.root) and set(os.listdir(paths.root)) <= {'.lock'}:
      shutil.rmtree(paths.root, ignore_errors=True)  # Refused before any work: leave nothing.
    raise


def refuse_own_runtime(config: ml_collections.ConfigDict, what: str) -> None:
  """Refuses config.runtime.workers for `what`, which runs in one process or a Flower federation."""
  if config_checks.cluster(config) is not None:
    raise errors.ConfigError(f'config.runtime.workers={config.runtime.workers!r}: {what} runs in this process'
                             ' or a federation of nodes, not on TFF workers; unset config.runtime.workers'
                             ' (scripts/train.py trains on them).')


def prepare(config, choices: config_checks.Choices, paths: Paths, runtime: 'Runtime', log) -> _Setup:
  """Loads and checks the data, the attack, the export's interface and the privacy plan."""
  data = runtime.load(config, paths, log=log)
  config_checks.check_model_fits(config, choices, data.schema)
  attack = config_checks.attack(config, data)
  if attack.type is not poisoning.AttackType.NONE:
    log(f'simulated attack: {attack.type.value} by {", ".join(attack.malicious)}')
    data = poisoning.poison(data, attack)
  # By the source's kind alone: a runtime whose rows are elsewhere names no path.
  interface = loading.interface(config_data.data_source(config), data.schema)
  hardening = config_checks.hardening(config)
  try:
    saved_model.check_hardening(interface, hardening)
  except ValueError as e:
    raise errors.ConfigError(f'config.export.input_rounding: {e}') from None
  cohort = config_plan.clients_per_round(config, choices.sampling, len(data.institutions))
  plan = config_plan.privacy_plan_for_census(config, choices, data.schema, runtime.census(data),
                                            cohort=cohort)
  return _Setup(data=data, attack=attack, interface=interface, hardening=hardening,
                cohort=cohort, plan=plan)


def _latest_round(state_manager: tff.program.ProgramStateManager) -> Optional[int]:
  versions = asyncio.run(state_manager.get_versions())
  return max(versions) if versions else None


def _run_locked(config, choices: config_checks.Choices, paths: Paths, runtime: 'Runtime', *, stop_after_round,
                log, checkpoint_key: Optional[bytes]) -> RunResult:
  removed = workdir_lib.remove_stale_temporaries(paths.root)
  if removed:
    log(f'removed what a killed run left half-written: {", ".join(removed)}')
  setup = prepare(config, choices, paths, runtime, log)
  # After the data's checks: TFF's manager makes its directory.
  state_manager = checkpoints.state_manager(paths.checkpoints, checkpoint_key)
  checkpoint_round = _latest_round(state_manager)
  identity = dataclasses.replace(
      setup.identity, rounds=config.federated.rounds if config.privacy.target_epsilon else None)
  _claim_workdir(config, paths, identity, checkpoint_round)
  os.makedirs(paths.results, exist_ok=True)
  data = setup.data
  log(f'{len(data.institutions)} institutions: ' + ', '.join(
      f'{s["institution"]} ({s["train_rows"]} train rows)' for s in data.summary()))
  if config.privacy.target_epsilon is not None:
    calibrated = setup.plan.record or setup.plan.client
    log(f'noise multiplier {calibrated.noise_multiplier:.4f} for ε = {config.privacy.target_epsilon:g}'
        f' at δ = {config.privacy.delta:g} over {config.federated.rounds} rounds'
        f' ({choices.accountant.value})')
  noise_seed = workdir_lib.noise_seed(paths.root, config.privacy.noise_seed, lambda: secrets.randbits(62))
  public = public_start(config, choices, pretrain=checkpoint_round is None, log=log)
  if public is not None:  # Exact statistics from the public corpus: no institution answers.
    space = public.space
  else:
    space = runtime.feature_space(config, data, noise=statistics_noise(setup.plan, noise_seed))
  built = runtime.build(config, choices, setup, space, noise_seed)
  if public is not None:
    built = dataclasses.replace(built, public=public)
  initial = public.initial_weights(built.keras_model_fn) if public is not None else built.initial_model()
  crowded = config_plan.crowding_note(setup.plan, weights=sum(np.size(w) for w in initial.trainable),
                                     epsilon=config.privacy.target_epsilon)
  if crowded:
    log(f'note: {crowded}')
  state, participation, released, first_round = _restore(built.process, state_manager, initial,
                                                         noise_seed, len(data.institutions))
  if first_round:
    log(f'resuming {paths.root} after round {first_round}')
  last_round = config.federated.rounds if stop_after_round is None else min(config.federated.rounds,
                                                                            stop_after_round)
  released, per_round = _train_rounds(
      config, choices, setup, built, state_manager, paths, state=state, participation=participation,
      released=released, rounds=range(first_round + 1, last_round + 1), noise_seed=noise_seed, log=log)
  if last_round < config.federated.rounds:
    return RunResult(paths=paths, metrics=None, rounds_completed=last_round)
  released = tf.nest.pack_sequence_as(initial, released)
  return _finish(config, choices, setup, built, paths, released=released, participation=participation,
                 space=space, per_round=per_round, log=log)


def public_start(config, choices: config_checks.Choices, *, pretrain: bool, log) -> Optional[public_lib.Public]:
  """The public corpus's statistics and (unless resuming: the checkpoint holds the model) pretrained model."""
  corpus = config_data.public_corpus(config)
  if corpus is None:
    return None
  if not pretrain:
    corpus = dataclasses.replace(corpus, epochs=0)
  return public_lib.prepare(
      corpus, config_data.load_public(config), min_category_count=config.features.min_category_count,
      keras_model_fn=lambda space: config_builders.keras_model_fn(config, choices, space),
      loss=tabular.keras_loss(config_builders.loss_fn(config, choices)), seed=config.seed, log=log)


def statistics_noise(plan: accounting.PrivacyPlan, noise_seed: int) -> Optional[features.StatisticsNoise]:
  if plan.statistics is None:
    return None
  return features.StatisticsNoise(
      stddev=plan.statistics.stddev, seed=noise_seed,
      vocabulary_threshold=plan.statistics.vocabulary_threshold(plan.delta))


@dataclasses.dataclass(frozen=True)
class Built:
  """The run's model and processes, and how its runtime trains and evaluates them."""

  keras_model_fn: Callable[[], tf.keras.Model]
  process: Any  # The composed tff.learning.templates.LearningProcess: the state's form.
  # (state, cohort's institution indices, round) -> (state, the round's metric values,
  # the indices whose updates were aggregated: the privacy ledger counts only those).
  train_round: Callable[[Any, list[int], int], tuple[Any, dict, list[int]]]
  # (model weights, per_institution) -> {'pooled': metrics[, 'institutions': {name: metrics}]}.
  evaluate: Callable[[tff.learning.models.ModelWeights, bool], dict]
  # (model weights, request) -> the federation's summed histogram of training
  # log-scores, each institution's noise share in (`quantiles.search`'s ask):
  # the alert threshold. None where the runtime cannot (`Runtime.check` refuses).
  score_histogram: Optional[Callable[[tff.learning.models.ModelWeights, quantiles.HistogramRequest],
                                     np.ndarray]] = None
  # (model weights, threshold, budgets) -> `evaluation.alert_metrics`' form, on the test splits.
  alert_metrics: Optional[Callable[[tff.learning.models.ModelWeights, Optional[float], tuple[float, ...]],
                                   dict]] = None
  # Rows in this process, for what reads them (attacks, the centralized
  # reference); None in a federation (`Runtime.check` refuses those).
  rows: Optional[Any] = None
  aggregation: accounting.Aggregation = accounting.Aggregation.SIMULATED  # For the statement.
  # With config.public.path: the public corpus, which places the alert threshold.
  public: Optional[public_lib.Public] = None
  # (round, its released metric values, ETA in seconds), after each round is checkpointed: a
  # runtime's own progress report (a federation's status.json); None: nothing more than the log line.
  on_round: Optional[Callable[[int, Mapping[str, float], float], None]] = None

  def initial_model(self) -> tff.learning.models.ModelWeights:
    return config_builders.initial_weights(self.keras_model_fn)


class Runtime(Protocol):
  """Where the institutions' rows and client work live; the rest of the run is the same program."""

  def check(self, config: ml_collections.ConfigDict) -> None:
    """Refuses (errors.ConfigError) what this runtime cannot run, before any work."""

  def load(self, config: ml_collections.ConfigDict, paths: Paths, *, log) -> Any:
    """The federation: `.schema`, `.institutions` (each with `.name`) and `.summary()`.

    `paths`: the run's workdir (for what the runtime keeps there).
    """

  def census(self, data) -> list[dict]:
    """Per institution, its 'train_rows' and DP 'units' (the privacy plan's sizes)."""

  def feature_space(self, config: ml_collections.ConfigDict, data, noise) -> features.FeatureSpace:
    """The federated feature statistics."""

  def build(self, config, choices: config_checks.Choices, setup: _Setup, space, noise_seed: int) -> Built:
    """The model, its processes and how rounds and evaluations run."""


def refuse_needing_rows(config: ml_collections.ConfigDict, *, runtime: str, fix: str, alerts: bool) -> None:
  """Refuses (errors.ConfigError) what reads rows in this process, for a `runtime` whose rows are elsewhere.

  `alerts`: the runtime computes alert thresholds and metrics where the rows are.
  """
  needs_rows = {'config.reference.centralized_epochs': config.reference.centralized_epochs}
  if not alerts:
    needs_rows.update({'config.model.alert_budget': config.model.alert_budget,
                       'config.evaluation.alert_budgets': tuple(config.evaluation.alert_budgets)})
  for key, value in needs_rows.items():
    if value:
      raise errors.ConfigError(f'{key}={value!r} needs the rows in one process; {runtime} runs'
                               f' without it: set {key} to its empty value, or {fix}.')
  if config.attack.type != 'none':
    raise errors.ConfigError(f"config.attack.type simulates attackers in one process; set it to 'none' or {fix}.")


class InProcess:
  """The simulation: every institution's rows in this process, run by TFF's local runtime."""

  def check(self, config: ml_collections.ConfigDict) -> None:
    del config  # The simulation runs every config parse_choices accepts.

  def load(self, config: ml_collections.ConfigDict, paths: Paths, *, log):
    return config_data.load_data(config, shard_dir=paths.shards, log=log)

  def census(self, data) -> list[dict]:
    return config_plan.census(data)

  def feature_space(self, config: ml_collections.ConfigDict, data, noise) -> features.FeatureSpace:
    return config_data.feature_space(config, data, noise)

  def build(self, config, choices: config_checks.Choices, setup: _Setup, space, noise_seed: int) -> Built:
    return _build(config, choices, setup, space, noise_seed)


def _build(config, choices: config_checks.Choices, setup: _Setup, space, noise_seed: int) -> Built:
  schema = setup.data.schema
  training = config_builders.build_training(
      config, choices, setup.plan, space, schema, side=config_builders.Side.WHOLE, cohort=setup.cohort,
      noise_seed=noise_seed, boosting=setup.attack.type is poisoning.AttackType.BOOST)
  process, work, model_fn = training.process, training.work, training.model_fn
  institutions = setup.data.institutions

  def train_round(state, members: list[int], round_num: int):
    datasets = [config_builders.client_dataset(
        config, work, setup.plan, schema, institutions[i], index=i, round_num=round_num,
        noise_seed=noise_seed, scale=setup.attack.scale(institutions[i].name)) for i in members]
    output = process.next(state, datasets)
    return output.state, {**flatten_metrics(output.metrics['client_work']['train'], 'train/'),
                          **flatten_metrics(output.metrics['aggregator'], 'aggregator/')}, members

  evaluator = evaluation.LocalEvaluator(model_fn)  # TFF's federated evaluation, without its build.
  test_sets = {
      i.name: client_data.institution_dataset(i, 'test', schema, batch_size=config.federated.eval_batch_size)
      for i in institutions
  }
  scores = client_data.Scorer(training.keras_model_fn, schema)
  unit_codes = {}  # Per institution, once: units matter only under a cap, and a stored split is read for them.

  def score_histogram(weights, request: quantiles.HistogramRequest) -> np.ndarray:
    train = [scores(weights, (k, 'train'), lambda i=i: i.train) for k, i in enumerate(institutions)]
    if request.cap and not unit_codes:
      unit_codes.update((k, dp_sgd.unit_codes(i.train)) for k, i in enumerate(institutions))
    units = [unit_codes[k] if request.cap else np.arange(len(s)) for k, s in enumerate(train)]
    return quantiles.local_ask(train, units, seed=noise_seed)(request)

  def alert_metrics(weights, threshold: Optional[float], budgets: tuple[float, ...]) -> dict:
    return evaluation.alert_metrics(
        {i.name: (i.test[schema_lib.LABEL_COLUMN].to_numpy(), scores(weights, (k, 'test'), lambda i=i: i.test))
         for k, i in enumerate(institutions)}, budgets=budgets, threshold=threshold,
        validation_fraction=config.evaluation.validation_fraction)

  return Built(keras_model_fn=training.keras_model_fn, process=process, train_round=train_round,
               evaluate=lambda weights, per_institution: evaluator.evaluate(
                   weights, test_sets, per_institution=per_institution),
               score_histogram=score_histogram, alert_metrics=alert_metrics, rows=setup.data)


def _restore(process, state_manager, initial_model, noise_seed: int, institutions: int):
  """(state, privacy ledger, released model, last completed round) from the latest checkpoint, or a fresh start.

  The released model is the running average of the rounds' models
  (`config.federated.weight_averaging`), as a flat list of arrays.
  """
  state = process.initialize()
  # TFF's initialize() runs Keras initializers unseeded; start from ours.
  state = process.set_model_weights(state, initial_model)
  participation = np.zeros(institutions, np.int64)  # The privacy ledger.
  released = [np.asarray(w) for w in tf.nest.flatten(initial_model)]
  loaded, round_num = asyncio.run(
      state_manager.load_latest([workdir_lib.redact(state), 0, participation, released]))
  if loaded is None:
    return state, participation, released, 0
  saved_state, _, participation, released = loaded
  return (workdir_lib.restore(saved_state, noise_seed), np.asarray(participation, np.int64),
          [np.asarray(w) for w in released], round_num)


def _average(released: list[np.ndarray], weights, *, decay: float, first: bool) -> list[np.ndarray]:
  """The released model: an exponential moving average of the rounds' models.

  Averaging DP iterates cancels much of their noise (and costs no privacy:
  it post-processes models the accounting already covers); decay 0 keeps
  the last round's model.
  """
  current = [np.asarray(w) for w in tf.nest.flatten(weights)]
  if first or not decay:
    return current
  return [decay * r + (1.0 - decay) * w for r, w in zip(released, current)]


def _check_finite(round_num: int, values: Mapping[str, float], weights) -> None:
  """Fails the run, naming the round, when its loss, metrics or model are not finite."""
  bad = [k for k, v in values.items()
         if k.startswith(('train/', 'eval/')) and v is not None and not math.isfinite(v)]
  arrays = list(weights.trainable) + list(weights.non_trainable)
  if not all(np.all(np.isfinite(np.asarray(w))) for w in arrays):
    bad.append('model weights')
  if values.get('institutions_in_round') and values.get('train/num_examples') == 0:
    # TFF drops a client whose update is not finite (weight 0, metrics reset):
    # when all are dropped the round trains nothing, and reports a loss of 0.
    bad.append("every institution's update (TFF dropped them all, so the model did not train)")
  if bad:
    raise errors.RunFailed(
        f'round {round_num}: {", ".join(bad)} not finite; the run stopped and exported nothing'
        f' (its last checkpoint is round {round_num - 1}). Likely causes: a learning rate too'
        ' large for the data, or extreme feature values; lower config.federated.client_learning_rate'
        ' or check the data, then rerun in a new --workdir.')


def _train_rounds(config, choices, setup: _Setup, built: Built, state_manager, paths: Paths, *,
                  state, participation: np.ndarray, released, rounds: range, noise_seed: int, log):
  """Runs `rounds`, checkpointing each (noise seed redacted); returns (released model, mean seconds per round)."""
  f, n = config.federated, len(setup.data.institutions)
  releaser = tff.program.GroupingReleaseManager([
      tff.program.CSVFileReleaseManager(paths.metrics_csv, key_fieldname='round'),
      tff.program.TensorBoardReleaseManager(paths.logdir),
  ])
  progress = _Progress(f.rounds, log)
  for round_num in rounds:
    start = time.monotonic()
    members = sample_cohort(choices.sampling, num_institutions=n, cohort=setup.cohort,
                            seed=config.seed, round_num=round_num)
    values = {}
    if members:  # A Poisson round may draw nobody: the model stays as it is.
      state, values, members = built.train_round(state, members, round_num)
    participation[members] += 1
    values['institutions_in_round'] = float(len(members))
    values.update(_privacy_values(setup.plan, round_num, participation))
    weights = built.process.get_model_weights(state)
    released = _average(released, weights, decay=f.weight_averaging, first=round_num == 1)
    values['eval_seconds'] = 0.0  # So that rounds with and without evaluation compare.
    if f.eval_every and round_num % f.eval_every == 0 or round_num == f.rounds:
      eval_start = time.monotonic()
      pooled = built.evaluate(tf.nest.pack_sequence_as(weights, released), False)
      values['eval_seconds'] = time.monotonic() - eval_start
      values.update(flatten_metrics(pooled['pooled'], 'eval/'))
    _check_finite(round_num, values, weights)
    # Saved before the metrics are released, so that round_seconds counts it
    # (a run killed in between resumes after this round, without its row).
    asyncio.run(state_manager.save(
        [workdir_lib.redact(state), round_num, participation, released], round_num))
    values['round_seconds'] = time.monotonic() - start  # This round alone.
    asyncio.run(releaser.release(values, key=round_num))
    eta = progress.round_done(round_num, _summary(values, setup.plan), values['round_seconds'])
    if built.on_round is not None:
      built.on_round(round_num, values, eta)
  return released, progress.mean_seconds


def _privacy_values(plan: accounting.PrivacyPlan, round_num: int, participation) -> dict[str, float]:
  """ε so far for each DP unit, as metrics: `privacy/epsilon` is the headline unit's."""
  if not plan.is_private:
    return {}
  epsilons = plan.epsilons(rounds=round_num, participation=participation)
  # The headline is the record-level ε when there is one, as in the statement.
  values = {'privacy/epsilon': epsilons['record' if plan.record else 'institution']}
  if plan.record and plan.client:
    values['privacy/institution_epsilon'] = epsilons['institution']
  return values


def _summary(values: Mapping[str, float], plan: accounting.PrivacyPlan) -> str:
  """The progress line's metrics; ε with its unit (`ε(record)=0.42`), and only under DP."""
  parts = [f'{name} {values[k]:.4g}' for k, name in (('train/loss', 'loss'), ('eval/auc', 'auc'))
           if values.get(k) is not None]
  if 'privacy/epsilon' in values:
    parts.append(f'ε({plan.headline_unit})={values["privacy/epsilon"]:.4g}')
  if 'privacy/institution_epsilon' in values:
    parts.append(f'ε(institution)={values["privacy/institution_epsilon"]:.4g}')
  return ' | '.join(parts)


def _finish(config, choices, setup: _Setup, built: Built, paths: Paths, *, released, participation,
            space, per_round, log) -> RunResult:
  """Final evaluation, thresholds, reference, statement and export of a completed run."""
  schema, f = setup.data.schema, config.federated
  model = built.keras_model_fn()
  weights = released
  weights.assign_weights_to(model)
  metrics = {
      'federated': built.evaluate(weights, True),
      'rounds': f.rounds,
      'seconds_per_round_this_session': per_round,
      'institutions': setup.data.summary(),
  }
  threshold = _alerts(config, setup, built, weights, metrics, log)
  if built.rows is not None:
    _from_rows(config, choices, setup, built, model, metrics, log)
  _check_finite(f.rounds, flatten_metrics(metrics['federated']['pooled'], 'eval/'), weights)
  warnings = _warnings(metrics['federated']['pooled'], setup.plan)
  if warnings:
    metrics['warnings'] = list(warnings)
    for warning in warnings:
      log(f'WARNING: {warning}')
  statement = setup.plan.statement(rounds=f.rounds, participation=participation,
                                   aggregation=built.aggregation)
  metrics['privacy'] = statement.to_dict()
  export = lambda model, path, threshold, privacy, metrics: saved_model.export(
      model, path, schema=schema, interface=setup.interface, threshold=threshold, hardening=setup.hardening,
      replace=True, metadata={'feature_space': space.to_dict(), 'config': _public_config(config),
                              'metrics': metrics, 'privacy': privacy})
  if config.personalize.epochs:
    metrics['personalized'] = _personalized(config, choices, setup, built, model, statement, paths, export, log,
                                            space=space)
  io.write_json(paths.metrics, metrics)
  io.write_text(paths.privacy, statement.text() + '\n')
  report.plot_training_curves(paths.metrics_csv, paths.curves)
  export(model, paths.export, threshold, statement.to_dict(), metrics)
  return RunResult(paths=paths, metrics=metrics, rounds_completed=f.rounds, model=model,
                   warnings=warnings, threshold=threshold)


def _personalized(config, choices, setup: _Setup, built: Built, model, statement, paths: Paths, export,
                  log, *, space: features.FeatureSpace) -> dict:
  """Each institution's copy of the release, fine-tuned on its own rows and exported (and with
  config.personalize.trees its trees on the release's and the copy's scores); their test metrics."""
  how = personalize.FineTune(epochs=config.personalize.epochs, batch_size=config.federated.batch_size,
                             learning_rate=config.personalize.learning_rate, seed=config.seed)
  schema, budget = setup.data.schema, config.model.alert_budget
  copies, trees = _Owned(), _Owned()
  institutions = {i.name: i for i in built.rows.institutions}
  for own in personalize.each(model, built.rows.institutions, schema,
                              loss=tabular.keras_loss(config_builders.loss_fn(config, choices)), how=lambda _: how,
                              alert_budget=budget, threshold=config.model.threshold, log=log,
                              out_of_fold=config.personalize.trees):
    note = personalize.privacy_note(own.name, statement.text())
    root = os.path.join(paths.personalized, own.name)
    privacy = {'text': note, 'release': statement.to_dict()}
    export(own.model, os.path.join(root, 'export'), own.threshold, privacy, {})
    io.write_text(os.path.join(root, 'privacy.txt'), note + '\n')
    copies.add(own.name, own.test, own.threshold)
    if config.personalize.trees:
      stacked = personalize.own_trees(model, own, institutions[own.name], schema, space, seed=config.seed,
                                      alert_budget=budget, threshold=config.model.threshold)
      export(stacked.model, os.path.join(root, 'trees', 'export'), stacked.threshold, privacy, {})
      trees.add(own.name, stacked.test, stacked.threshold)
  metrics = copies.metrics(config, 'personalized models', log)
  if config.personalize.trees:
    metrics['trees'] = trees.metrics(config, 'their trees on the release\'s and the copy\'s scores', log)
  return metrics


class _Owned:
  """Each institution's own model's test (labels, scores) and alert threshold, and their metrics."""

  def __init__(self):
    self.scored, self.thresholds = {}, {}

  def add(self, name: str, test: tuple[np.ndarray, np.ndarray], threshold: float) -> None:
    self.scored[name], self.thresholds[name] = test, threshold

  def metrics(self, config, what: str, log) -> dict:
    budgets = tuple(config.evaluation.alert_budgets)
    metrics = evaluation.alert_metrics(self.scored, budgets=budgets, threshold=self.thresholds,
                                       validation_fraction=config.evaluation.validation_fraction)
    metrics['pooled']['auc'] = evaluation.auc(*map(np.concatenate, zip(*self.scored.values())))
    for name, test in self.scored.items():
      metrics['institutions'][name]['auc'] = evaluation.auc(*test)
    log(f'{what}, all institutions: AUC {metrics["pooled"]["auc"]:.4f} | '
        + evaluation.alert_summary(metrics['pooled'], budgets))
    return metrics


def _alerts(config, setup: _Setup, built: Built, weights, metrics: dict, log) -> Optional[float]:
  """The export's threshold (from config.model.alert_budget when set) and the test splits' alert metrics."""
  threshold = config.model.threshold
  budgets = tuple(config.evaluation.alert_budgets)
  if config.model.alert_budget and built.public is not None:
    model = built.keras_model_fn()
    weights.assign_weights_to(model)
    threshold = built.public.threshold(model, config.model.alert_budget)
    log(f'alert threshold {threshold:.6g}: flags {config.model.alert_budget:g} of the public corpus\'s'
        ' training rows')
  elif config.model.alert_budget:
    threshold = _alert_threshold(config.model.alert_budget, setup.plan,
                                 lambda request: built.score_histogram(weights, request))
    log(f'alert threshold {threshold:.6g}: flags {config.model.alert_budget:g} of training rows'
        + (' (federated quantile, DP)' if setup.plan.statistics else ' (federated quantile)'))
  if budgets or config.model.alert_budget:
    metrics['alerts'] = built.alert_metrics(weights, threshold, budgets)
    log('test alerts, all institutions: ' + evaluation.alert_summary(metrics['alerts']['pooled'], budgets))
  return threshold


def _alert_threshold(budget: float, plan: accounting.PrivacyPlan, ask: quantiles.Ask) -> float:
  """The score flagging `budget` of the training rows; DP when the plan's statistics are."""
  if plan.statistics is None:
    return quantiles.search(ask, 1.0 - budget)
  # A unit's rows count at most `alert_rows` rows' worth: the histograms' sensitivity.
  return quantiles.search(ask, 1.0 - budget, stddev=plan.statistics.alert_stddev, cap=plan.statistics.alert_rows,
                          bins=quantiles.BINS)


def _from_rows(config, choices, setup: _Setup, built: Built, model, metrics: dict, log) -> None:
  """What needs the rows in this process: attack and reference metrics."""
  data = built.rows
  if setup.attack.type is not poisoning.AttackType.NONE:
    metrics['attack'] = poisoning.measure(setup.attack, model, data)
  if config.reference.centralized_epochs:
    metrics['centralized_reference'] = _centralized_reference(config, choices, built, data, log)


def _warnings(pooled: Mapping, plan: accounting.PrivacyPlan) -> tuple[str, ...]:
  why = evaluation.chance_level(pooled)
  if why is None:
    return ()
  cause = ('the DP noise may be too large for the data: try a larger privacy.target_epsilon, more'
           ' rows per institution, or a larger batch' if plan.is_private else
           'the model may not have learned: check the training loss in results/metrics.csv, try'
           ' more rounds or another federated.client_learning_rate')
  return (f'the model is no better than chance: {why}. Likely cause: {cause}.',)


def _centralized_reference(config, choices, built: Built, data, log) -> dict:
  log('training the centralized reference (pooled data, same model)...')
  reference = centralized.train(
      built.keras_model_fn, data, loss=tabular.keras_loss(config_builders.loss_fn(config, choices)),
      epochs=config.reference.centralized_epochs, batch_size=config.federated.batch_size,
      learning_rate=config.reference.learning_rate, seed=config.seed)
  return built.evaluate(tff.learning.models.ModelWeights.from_model(reference), True)

"""The federated training program: rounds, checkpoints, metrics, export.

Layout of a run's workdir:

    hyperparameters.json   the full config (a resumed run must match it)
    checkpoints/           tff.program.FileProgramStateManager state per round
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
"""

import asyncio
import collections
import dataclasses
import json
import math
import os
import secrets
import time
from typing import Callable, Mapping, Optional

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import features
from tffaml import io
from tffaml.data import loading
from tffaml.data import schema as schema_lib
from tffaml.export import saved_model
from tffaml.federated import client_data
from tffaml.federated import dp_sgd
from tffaml.federated import processes
from tffaml.federated import quantiles
from tffaml.models import tabular
from tffaml.privacy import accounting
from tffaml.training import centralized
from tffaml.training import evaluation
from tffaml.training import experiment
from tffaml.training import poisoning
from tffaml.training import report


@dataclasses.dataclass(frozen=True)
class Paths:
  root: str

  def __getattr__(self, name):
    files = {
        'hyperparameters': 'hyperparameters.json', 'checkpoints': 'checkpoints',
        'results': 'results', 'metrics_csv': 'results/metrics.csv',
        'curves': 'results/training_curves.png', 'logdir': 'logdir',
        'metrics': 'metrics.json', 'privacy': 'privacy.txt', 'export': 'export',
        'shards': 'shards',  # Institutions' rows, with config.data.stream.
    }
    if name not in files:
      raise AttributeError(name)
    return os.path.join(self.root, files[name])


def _stable_seed(*parts: int) -> int:
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def sample_cohort(
    sampling: accounting.Sampling, *, num_institutions: int, cohort: int, seed: int, round_num: int
) -> list[int]:
  """Indices of the institutions that train in `round_num` (sorted)."""
  rng = np.random.default_rng([seed, round_num])
  if sampling is accounting.Sampling.FULL:
    return list(range(num_institutions))
  if sampling is accounting.Sampling.POISSON:
    return np.flatnonzero(rng.random(num_institutions) < cohort / num_institutions).tolist()
  return sorted(rng.choice(num_institutions, cohort, replace=False).tolist())


def _flatten(value, prefix: str = '') -> dict[str, float]:
  """Numeric scalars of a nested metrics structure as 'a/b/c' -> float."""
  out = {}
  if isinstance(value, Mapping):
    for k, v in value.items():
      out.update(_flatten(v, f'{prefix}{k}/'))
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
  return config_dict


def _check_or_write_hyperparameters(config: ml_collections.ConfigDict, paths: Paths) -> None:
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(paths.hyperparameters):
    with open(paths.hyperparameters) as f:
      previous = json.load(f)
    if _config_for_comparison(previous) != _config_for_comparison(current):
      raise ValueError(
          f'{paths.root} holds a run with a different config'
          f' ({paths.hyperparameters}); resume it with the same config or use'
          ' a new --workdir.'
      )
  io.write_json(paths.hyperparameters, current)


class _Progress:
  """One line per round with the time per round and the ETA."""

  def __init__(self, total_rounds: int, first_round: int, log: Callable[[str], None]):
    self._total, self._first, self._log = total_rounds, first_round, log
    self._start = time.monotonic()

  def round_done(self, round_num: int, summary: str) -> float:
    done = round_num - self._first
    per_round = (time.monotonic() - self._start) / done
    eta = per_round * (self._total - round_num)
    self._log(
        f'round {round_num}/{self._total} | {summary} | {per_round:.2f} s/round'
        f' | ETA {time.strftime("%H:%M:%S", time.gmtime(eta))}'
    )
    return per_round


@dataclasses.dataclass
class RunResult:
  paths: Paths
  metrics: Optional[dict]  # None when stopped early.
  rounds_completed: int
  model: Optional[tf.keras.Model] = None  # The exported Keras model.


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    stop_after_round: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> RunResult:
  """Trains, evaluates and exports; resumes from `workdir` if it holds a run.

  Call inside `tffaml.runtime.local_runtime()`.

  Args:
    config: The experiment config (see configs/).
    workdir: Where the run's outputs and checkpoints live.
    stop_after_round: Stop after checkpointing this round, as a killed run
      would (for tests); no evaluation or export then.
    log: Where progress lines go.

  Returns:
    The paths written and the final metrics.
  """
  choices = experiment.parse_choices(config)
  if config.data.get('stream') and config.reference.centralized_epochs:
    raise ValueError('config.reference.centralized_epochs pools every row in memory;'
                     ' set it to 0 with config.data.stream.')
  paths = Paths(os.path.abspath(workdir))
  data = loading.load(config.data, seed=config.seed, shard_dir=paths.shards, log=log)
  attack = poisoning.from_config(config, data, seed=config.seed)
  if attack.type is not poisoning.AttackType.NONE:
    log(f'simulated attack: {attack.type.value} by {", ".join(attack.malicious)}')
    data = poisoning.poison(data, attack)
  os.makedirs(paths.results, exist_ok=True)
  _check_or_write_hyperparameters(config, paths)
  log(f'{len(data.institutions)} institutions: ' + ', '.join(
      f'{s["institution"]} ({s["train_rows"]} train rows)' for s in data.summary()))

  space = features.compute_feature_space(
      data, min_category_count=config.features.min_category_count)
  schema = data.schema
  interface, hardening = loading.interface(config.data, schema), experiment.hardening(config)
  try:
    saved_model.check_hardening(interface, hardening)
  except ValueError as e:
    raise ValueError(f'config.export.input_rounding: {e}') from None

  keras_model_fn = experiment.keras_model_fn(config, choices, space)
  f = config.federated
  model_fn = experiment.model_fn(config, choices, keras_model_fn, client_data.element_spec(schema))
  n = len(data.institutions)
  cohort = experiment.clients_per_round(config, choices.sampling, n)
  plan = experiment.privacy_plan_for_data(config, choices, data, cohort=cohort)
  if config.privacy.target_epsilon is not None:
    calibrated = plan.record or plan.client
    log(f'noise multiplier {calibrated.noise_multiplier:.4f} for ε = {config.privacy.target_epsilon:g}'
        f' at δ = {config.privacy.delta:g} over {f.rounds} rounds ({choices.accountant.value})')
  noise_seed = config.privacy.noise_seed
  if noise_seed is None:  # Secret by default: see tffaml.federated.dp_queries.
    noise_seed = secrets.randbits(62)
  aggregator = experiment.build_aggregator(config, choices, plan, cohort=cohort, noise_seed=noise_seed)
  boosting = attack.type is poisoning.AttackType.BOOST
  process = experiment.build_train_process(
      config, choices, plan, model_fn=model_fn, aggregator=aggregator, scaled_updates=boosting)

  state = process.initialize()
  # TFF's initialize() runs Keras initializers unseeded; start from ours.
  state = process.set_model_weights(
      state, tff.learning.models.ModelWeights.from_model(keras_model_fn()))
  state_manager = tff.program.FileProgramStateManager(paths.checkpoints, keep_total=2, keep_first=False)
  participation = np.zeros(n, np.int64)  # The privacy ledger.
  loaded, first_round = asyncio.run(state_manager.load_latest([state, 0, participation]))
  if loaded is not None:
    state, _, participation = loaded
    participation = np.asarray(participation, np.int64)
    log(f'resuming {paths.root} after round {first_round}')
  else:
    first_round = 0
  releaser = tff.program.GroupingReleaseManager([
      tff.program.CSVFileReleaseManager(paths.metrics_csv, key_fieldname='round'),
      tff.program.TensorBoardReleaseManager(paths.logdir),
  ])
  eval_process = processes.build_eval_process(model_fn)
  test_sets = {
      i.name: client_data.institution_dataset(i, 'test', schema, batch_size=f.eval_batch_size)
      for i in data.institutions
  }

  def train_dataset(i: int, round_num: int) -> tf.data.Dataset:
    institution = data.institutions[i]
    if plan.record is not None:  # Secret sample and noise: from the noise seed.
      return dp_sgd.poisson_batches(
          institution.train, schema, expected_batch_size=f.batch_size, epochs=f.client_epochs,
          seed=_stable_seed(noise_seed, round_num, i),
          max_rows_per_unit=config.record_dp.max_rows_per_unit)
    dataset = client_data.institution_dataset(
        institution, 'train', schema, batch_size=f.batch_size, epochs=f.client_epochs,
        shuffle_seed=_stable_seed(config.seed, round_num, i))
    if boosting:
      return processes.scaled_client_data(dataset, attack.scale(data.institutions[i].name))
    return dataset

  last_round = f.rounds if stop_after_round is None else min(f.rounds, stop_after_round)
  progress = _Progress(f.rounds, first_round, log)
  per_round = math.nan
  for round_num in range(first_round + 1, last_round + 1):
    members = sample_cohort(choices.sampling, num_institutions=n, cohort=cohort,
                            seed=config.seed, round_num=round_num)
    datasets = [train_dataset(i, round_num) for i in members]
    participation[members] += 1
    values = {}
    if datasets:  # A Poisson round may draw nobody: the model stays as it is.
      output = process.next(state, datasets)
      state = output.state
      values.update(_flatten(output.metrics['client_work']['train'], 'train/'))
      values.update(_flatten(output.metrics['aggregator'], 'aggregator/'))
    values['institutions_in_round'] = float(len(members))
    privacy = plan.statement(rounds=round_num, participation=participation)
    values['privacy/epsilon'] = privacy.epsilon
    if plan.record and plan.client:
      values['privacy/institution_epsilon'] = privacy.epsilon_for('institution')
    if f.eval_every and round_num % f.eval_every == 0 or round_num == f.rounds:
      pooled = evaluation.evaluate(
          eval_process, process.get_model_weights(state), test_sets, per_institution=False)
      values.update(_flatten(pooled['pooled'], 'eval/'))
    per_round = progress.round_done(
        round_num,
        ' | '.join(f'{k.split("/")[-1]} {values[k]:.4g}' for k in
                   ('train/loss', 'eval/auc', 'privacy/epsilon') if k in values))
    values['round_seconds'] = per_round
    asyncio.run(releaser.release(values, key=round_num))
    asyncio.run(state_manager.save([state, round_num, participation], round_num))
  if last_round < f.rounds:
    return RunResult(paths=paths, metrics=None, rounds_completed=last_round)

  model = keras_model_fn()
  process.get_model_weights(state).assign_weights_to(model)
  weights = process.get_model_weights(state)
  metrics = {
      'federated': evaluation.evaluate(eval_process, weights, test_sets),
      'rounds': f.rounds,
      'seconds_per_round_this_session': per_round,
      'institutions': data.summary(),
  }
  threshold = config.model.threshold
  if config.model.alert_budget:
    threshold = quantiles.federated_quantile(
        [client_data.predict(model, i.train, schema) for i in data.institutions],
        1.0 - config.model.alert_budget)
    log(f'alert threshold {threshold:.6g}: flags {config.model.alert_budget:g} of training rows'
        ' (federated quantile)')
  if config.evaluation.alert_budgets or config.model.alert_budget:
    metrics['alerts'] = evaluation.alert_metrics(
        {i.name: (i.test[schema_lib.LABEL_COLUMN].to_numpy(), client_data.predict(model, i.test, schema))
         for i in data.institutions},
        budgets=tuple(config.evaluation.alert_budgets), threshold=threshold)
  if attack.type is not poisoning.AttackType.NONE:
    metrics['attack'] = poisoning.measure(attack, model, data)
  if config.reference.centralized_epochs:
    log('training the centralized reference (pooled data, same model)...')
    reference = centralized.train(
        keras_model_fn, data, loss=tabular.keras_loss(experiment.loss_fn(config, choices)),
        epochs=config.reference.centralized_epochs,
        batch_size=f.batch_size, learning_rate=config.reference.learning_rate,
        seed=config.seed)
    metrics['centralized_reference'] = evaluation.evaluate(
        eval_process, tff.learning.models.ModelWeights.from_model(reference), test_sets)
  statement = plan.statement(rounds=f.rounds, participation=participation)
  metrics['privacy'] = statement.to_dict()
  io.write_json(paths.metrics, metrics)
  io.write_text(paths.privacy, statement.text() + '\n')
  report.plot_training_curves(paths.metrics_csv, paths.curves)
  saved_model.export(
      model, paths.export, schema=schema, interface=interface, threshold=threshold,
      hardening=hardening,
      metadata={
          'feature_space': space.to_dict(),
          'config': _public_config(config),
          'metrics': metrics,
          'privacy': statement.to_dict(),
      })
  return RunResult(paths=paths, metrics=metrics, rounds_completed=f.rounds, model=model)

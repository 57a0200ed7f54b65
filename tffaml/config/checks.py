"""A config's choices parsed and every value checked, before any work.

Every error names the config key (as its flag, `config.x.y`) and the value.
"""

import dataclasses

import ml_collections

from tffaml import errors
from tffaml.config import data as config_data
from tffaml.config import values as config_values
from tffaml.data import schema as schema_lib
from tffaml.export import saved_model
from tffaml.federated import aggregators
from tffaml.federated import processes
from tffaml.models import rarity
from tffaml.models import tabular
from tffaml.privacy import accounting
from tffaml.federated import poisoning



@dataclasses.dataclass(frozen=True)
class Choices:
  """The config's enumerated choices, parsed."""

  model: tabular.ModelType
  loss: tabular.LossType
  algorithm: processes.Algorithm
  weighting: processes.Weighting
  client_optimizer: processes.OptimizerType
  server_optimizer: processes.OptimizerType
  aggregator: aggregators.AggregatorType
  sampling: accounting.Sampling
  accountant: accounting.Accountant
  record_dp_mode: accounting.RecordDpMode


# Checked without TensorFlow (the scripts check them first); here for the callers.
check_values = config_values.check_values
Cluster = config_values.Cluster
cluster = config_values.cluster


def parse_choices(config: ml_collections.ConfigDict) -> Choices:
  check_values(config)
  f = config.federated
  choices = Choices(
      model=errors.parse_enum(tabular.ModelType, config.model.name, 'model.name'),
      loss=errors.parse_enum(tabular.LossType, config.model.loss, 'model.loss'),
      algorithm=errors.parse_enum(processes.Algorithm, f.algorithm, 'federated.algorithm'),
      weighting=errors.parse_enum(processes.Weighting, f.weighting, 'federated.weighting'),
      client_optimizer=errors.parse_enum(processes.OptimizerType, f.client_optimizer, 'federated.client_optimizer'),
      server_optimizer=errors.parse_enum(processes.OptimizerType, f.server_optimizer, 'federated.server_optimizer'),
      aggregator=errors.parse_enum(aggregators.AggregatorType, config.aggregator.type, 'aggregator.type'),
      sampling=errors.parse_enum(accounting.Sampling, f.sampling, 'federated.sampling'),
      accountant=errors.parse_enum(accounting.Accountant, config.privacy.accountant, 'privacy.accountant'),
      record_dp_mode=errors.parse_enum(accounting.RecordDpMode, config.record_dp.mode, 'record_dp.mode'),
  )
  if (choices.loss is tabular.LossType.RECONSTRUCTION) == choices.model.is_classifier:
    raise errors.ConfigError(
        f"config.model.loss={config.model.loss!r} does not fit config.model.name={config.model.name!r}:"
        " the autoencoder and rarity train with loss='reconstruction', classifiers with bce, focal or"
        " weighted_bce.")
  budget = config.model.alert_budget
  if not 0.0 <= budget < 1.0:
    raise errors.ConfigError(f'config.model.alert_budget must be in [0, 1), got {budget}.')
  if not budget and not choices.model.is_classifier:
    raise errors.ConfigError(
        f'config.model.name={config.model.name!r} scores are not probabilities: set'
        ' config.model.alert_budget (the fraction of transactions to flag) to place its threshold.')
  if any(not 0.0 < b < 1.0 for b in config.evaluation.alert_budgets):
    raise errors.ConfigError(
        f'config.evaluation.alert_budgets must lie in (0, 1), got {config.evaluation.alert_budgets}.')
  if not 0.0 <= config.evaluation.validation_fraction < 1.0:
    raise errors.ConfigError('config.evaluation.validation_fraction must be in [0, 1), got'
                             f' {config.evaluation.validation_fraction}.')
  if choices.aggregator.is_dp and not config.aggregator.noise_multiplier > 0:
    raise errors.ConfigError(
        f'config.aggregator.type={config.aggregator.type!r} needs'
        f' config.aggregator.noise_multiplier > 0, got {config.aggregator.noise_multiplier}.'
    )
  if choices.weighting is processes.Weighting.EXAMPLES and not choices.aggregator.weighs_institutions:
    raise errors.ConfigError(
        f'config.aggregator.type={config.aggregator.type!r} weighs every institution alike;'
        " set config.federated.weighting='uniform'.")
  if (choices.accountant is accounting.Accountant.PLD and choices.aggregator.is_dp
      and choices.sampling is accounting.Sampling.FIXED_SIZE):
    raise errors.ConfigError(
        "config.privacy.accountant='pld' cannot account for"
        " config.federated.sampling='fixed_size' (sampling without replacement);"
        " use accountant='rdp' or sampling='poisson'.")
  _check_record_dp(config, choices)
  _check_pld_noise(config, choices)
  if config.record_dp.enabled and config.attack.type != 'none':
    raise errors.ConfigError('config.attack simulates attacks on FedAvg without record-level DP;'
                     ' set config.record_dp.enabled=False.')
  hardening(config)
  if cluster(config) is None:
    config_data.data_spec(config)  # A bad data section is refused before any work.
  else:
    config_data.data_source(config)  # The rows are the workers': only the source's kind matters here.
  return choices


def _check_pld_noise(config, choices: Choices) -> None:
  """Refuses a given noise multiplier too small for the PLD accountant (accounting.PLD_MIN_NOISE)."""
  if choices.accountant is not accounting.Accountant.PLD:
    return
  calibrated = config.privacy.target_epsilon is not None
  given = {}
  if config.record_dp.enabled:
    given['features.noise_multiplier'] = config.features.noise_multiplier
    if not calibrated:
      given['record_dp.noise_multiplier'] = config.record_dp.noise_multiplier
  if choices.aggregator.is_dp and (config.record_dp.enabled or not calibrated):
    given['aggregator.noise_multiplier'] = config.aggregator.noise_multiplier
  for name, z in given.items():
    if z is not None and 0 < z < accounting.PLD_MIN_NOISE:
      raise errors.ConfigError(
          f'config.{name}={z} is below {accounting.PLD_MIN_NOISE}: too little noise for'
          " config.privacy.accountant='pld', whose accounting would need gigabytes of memory."
          " Raise it, or set config.privacy.accountant='rdp'.")


def _check_record_dp(config, choices: Choices) -> None:
  r, p = config.record_dp, config.privacy
  if p.target_epsilon is not None:
    if not (r.enabled or choices.aggregator.is_dp):
      raise errors.ConfigError(
          f'config.privacy.target_epsilon={p.target_epsilon} needs a DP mechanism to'
          ' calibrate: config.record_dp.enabled=True or a DP config.aggregator.type.')
  if not r.enabled:
    return
  z = config.features.noise_multiplier
  if z is not None and not z > 0:
    raise errors.ConfigError(f'config.features.noise_multiplier must be > 0, got {z}'
                             ' (None: exact statistics, outside the guarantee).')
  if p.target_epsilon is None and not r.noise_multiplier > 0:
    raise errors.ConfigError(
        f'config.record_dp.noise_multiplier must be > 0, got {r.noise_multiplier}'
        ' (or set config.privacy.target_epsilon).')
  if choices.algorithm is not processes.Algorithm.FEDAVG:
    raise errors.ConfigError(
        f'config.record_dp.enabled=True trains locally with DP-SGD under FedAvg;'
        f" config.federated.algorithm={config.federated.algorithm!r} must be 'fedavg'.")
  if choices.weighting is not processes.Weighting.UNIFORM:
    raise errors.ConfigError(
        "config.record_dp.enabled=True needs config.federated.weighting='uniform'"
        ' (a weight by sampled rows would leak the sample).')
  if choices.record_dp_mode is accounting.RecordDpMode.DISTRIBUTED:
    if choices.sampling is not accounting.Sampling.FULL:
      raise errors.ConfigError(
          "config.record_dp.mode='distributed' needs every institution's noise share every round:"
          " set config.federated.sampling='full'.")
    if choices.aggregator is not aggregators.AggregatorType.MEAN:
      raise errors.ConfigError(
          "config.record_dp.mode='distributed' sums the institutions' noised gradients as they are:"
          f" set config.aggregator.type='mean' (got {config.aggregator.type!r}).")


def check_model_fits(config, choices: Choices, schema: schema_lib.Schema) -> None:
  """config.model.name must read columns the data has (the rarity model reads payments)."""
  missing = rarity.missing_columns(schema.columns) if choices.model is tabular.ModelType.RARITY else []
  if missing:
    others = ', '.join(m.value for m in tabular.ModelType if m is not tabular.ModelType.RARITY)
    raise errors.ConfigError(
        f"config.model.name='rarity' scores transactions (an AMLworld-format file, config.data.source="
        f"'amlworld'); this data has no {missing} columns: choose another config.model.name ({others}).")


def attack(config, data) -> poisoning.Attack:
  """`config.attack` on `data`; errors name the `config.attack` key."""
  a = config.attack
  attack_type = errors.parse_enum(poisoning.AttackType, a.type, 'attack.type')
  trigger = {}
  if attack_type is poisoning.AttackType.BACKDOOR:
    trigger = column_numbers(a.trigger, key='attack.trigger')
  try:
    return poisoning.build(
        attack_type, data, institutions=[n.strip() for n in a.institutions.split(',') if n.strip()],
        count=a.count, boost_factor=a.boost_factor, trigger=trigger, seed=config.seed)
  except ValueError as e:
    raise errors.ConfigError(f'config.attack.{e}') from None


def column_numbers(text: str, *, key: str, number: str = 'value') -> dict[str, float]:
  """'col=1.5,other=2' -> {'col': 1.5, 'other': 2.0}; errors name `config.<key>`."""
  values = {}
  for item in filter(None, (part.strip() for part in text.split(','))):
    column, _, value = item.partition('=')
    try:
      values[column.strip()] = float(value)
    except ValueError:
      raise errors.ConfigError(f'config.{key}: {item!r} is not column={number}.') from None
  return values


def hardening(config) -> saved_model.Hardening:
  """`config.export` as the export's hardening options."""
  steps = column_numbers(config.export.input_rounding, key='export.input_rounding', number='step')
  try:
    return saved_model.Hardening(score_decimals=config.export.score_decimals,
                                 decision_only=config.export.decision_only, input_steps=steps)
  except ValueError as e:
    raise errors.ConfigError(f'config.export: {e}') from None

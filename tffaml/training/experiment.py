"""Maps a config onto the library's builders; all choices validated first.

Every error names the config key (as its flag, `config.x.y`) and the value.
"""

import dataclasses
import enum
import math
from typing import Callable, Mapping, Optional, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import errors
from tffaml import features
from tffaml.data import federated_data
from tffaml.data import loading
from tffaml.data import partition
from tffaml.data import schema as schema_lib
from tffaml.data import shards
from tffaml.data import transactions
from tffaml.export import saved_model
from tffaml.federated import aggregators
from tffaml.federated import client_data
from tffaml.federated import dp_sgd
from tffaml.federated import processes
from tffaml.federated import quantiles
from tffaml.models import canaries as canaries_lib
from tffaml.models import rarity
from tffaml.models import tabular
from tffaml.privacy import accounting
from tffaml.training import poisoning

parse_enum = errors.parse_enum


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


_POSITIVE = ('> 0', lambda v: v > 0)
_NON_NEGATIVE = ('>= 0', lambda v: v >= 0)
_AT_LEAST_ONE = ('>= 1', lambda v: v >= 1)
_FRACTION = ('in (0, 1)', lambda v: 0 < v < 1)
_PROBABILITY = ('in [0, 1]', lambda v: 0 <= v <= 1)
_MOMENTUM = ('in [0, 1)', lambda v: 0 <= v < 1)
_TRIM = ('in [0, 0.5)', lambda v: 0 <= v < 0.5)

# Every numeric config value with a range, checked before a run writes
# anything. Keys a config does not have are skipped; None is allowed where
# the config's default is a placeholder (e.g. aggregator.zeroing_norm).
_RANGES = {
    'data.max_rows': _NON_NEGATIVE, 'data.min_rows': _NON_NEGATIVE,
    'data.min_positives': _NON_NEGATIVE, 'data.num_institutions': _AT_LEAST_ONE,
    'data.alpha': _POSITIVE, 'data.test_fraction': _FRACTION, 'data.max_banks': _NON_NEGATIVE,
    'features.min_category_count': _AT_LEAST_ONE,
    'model.embedding_dim': _NON_NEGATIVE, 'model.threshold': _PROBABILITY,
    'model.positive_weight': _POSITIVE, 'model.focal_gamma': _NON_NEGATIVE,
    'federated.rounds': _AT_LEAST_ONE, 'federated.client_epochs': _AT_LEAST_ONE,
    'federated.batch_size': _AT_LEAST_ONE, 'federated.eval_batch_size': _AT_LEAST_ONE,
    'federated.clients_per_round': _NON_NEGATIVE, 'federated.eval_every': _NON_NEGATIVE,
    'federated.client_learning_rate': _POSITIVE, 'federated.server_learning_rate': _POSITIVE,
    'federated.client_momentum': _MOMENTUM, 'federated.server_momentum': _MOMENTUM,
    'federated.proximal_strength': _NON_NEGATIVE, 'federated.weight_averaging': _MOMENTUM,
    'aggregator.noise_multiplier': _NON_NEGATIVE, 'aggregator.clip': _POSITIVE,
    'aggregator.target_unclipped_quantile': _FRACTION, 'aggregator.clip_learning_rate': _NON_NEGATIVE,
    'aggregator.clipped_count_stddev': _NON_NEGATIVE, 'aggregator.zeroing_norm': _POSITIVE,
    'aggregator.trim_fraction': _TRIM,
    'record_dp.noise_multiplier': _NON_NEGATIVE, 'record_dp.clip': _POSITIVE,
    'record_dp.max_rows_per_unit': _NON_NEGATIVE, 'record_dp.sampling_rate': ('in (0, 1]', lambda v: 0 < v <= 1),
    'privacy.delta': _FRACTION, 'privacy.target_epsilon': _POSITIVE,
    'export.score_decimals': _NON_NEGATIVE,
    'attack.count': _NON_NEGATIVE, 'attack.boost_factor': _NON_NEGATIVE,
    'reference.centralized_epochs': _NON_NEGATIVE, 'reference.learning_rate': _POSITIVE,
}
_MISSING = object()


def _lookup(config, key: str):
  value = config
  for part in key.split('.'):
    if part not in value:
      return _MISSING
    value = value[part]
  return value


def check_values(config: ml_collections.ConfigDict) -> None:
  """Checks every ranged config value, naming the first bad one as `config.x.y`."""
  for key, (expected, ok) in _RANGES.items():
    value = _lookup(config, key)
    if value is _MISSING or value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
      raise errors.ConfigError(f'config.{key} must be {expected}, got {value!r}.')
  units = tuple(config.model.hidden_units)
  if not all(isinstance(u, int) and not isinstance(u, bool) and u >= 1 for u in units):
    raise errors.ConfigError(
        f'config.model.hidden_units must be positive integers (e.g. 64,32), got {units!r}.')
  if config.data.stream and config.reference.centralized_epochs:
    raise errors.ConfigError('config.reference.centralized_epochs pools every row in memory;'
                             ' set it to 0 with config.data.stream.')


@dataclasses.dataclass(frozen=True)
class Cluster:
  """The TFF workers config.runtime names (`tffaml.cluster.runtime.Workers`)."""

  addresses: tuple[str, ...]  # host:port each.
  certificates: str  # scripts/pki.py --cluster's directory; '': in the clear.
  connect_seconds: float


def cluster(config: ml_collections.ConfigDict) -> Optional[Cluster]:
  """config.runtime's workers; None when it names none (the simulation runs in this process)."""
  r = config.runtime
  addresses = tuple(a.strip() for a in r.workers.split(',') if a.strip())
  if not addresses:
    return None
  for address in addresses:
    host, _, port = address.rpartition(':')
    if not host or not port.isdigit():
      raise errors.ConfigError(f'config.runtime.workers: {address!r} is not host:port.')
  if not r.connect_seconds > 0:
    raise errors.ConfigError(f'config.runtime.connect_seconds must be > 0, got {r.connect_seconds!r}.')
  return Cluster(addresses=addresses, certificates=r.certificates, connect_seconds=float(r.connect_seconds))


# Where the data layer's arguments come from, for its errors (errors.named_as).
DATA_KEYS = {
    'stream': 'config.data.stream', 'directory': 'config.data.dir',
    'schema_file': 'config.data.schema_file', 'selection': 'config.data.path',
    'path': 'config.data.path', 'test_fraction': 'config.data.test_fraction',
    'min_rows': 'config.data.min_rows', 'min_positives': 'config.data.min_positives',
    'column': 'config.data.column', 'source': 'config.data.source',
}


def data_source(config: ml_collections.ConfigDict) -> loading.Source:
  return parse_enum(loading.Source, config.data.source, 'data.source')


def data_spec(config: ml_collections.ConfigDict) -> loading.DataSpec:
  """The `data` section as the data layer takes it; each source reads its own keys."""
  d = config.data
  source = data_source(config)
  with errors.named_as(DATA_KEYS):
    if source is loading.Source.AMLWORLD:
      return loading.DataSpec(source=source, stream=d.stream, selection=transactions.Selection(
          path=d.path, test_fraction=d.test_fraction, min_rows=d.min_rows,
          min_positives=d.min_positives, max_banks=d.max_banks))
    if source is loading.Source.CSV_DIR:
      return loading.DataSpec(source=source, stream=d.stream, directory=d.dir, schema_file=d.schema_file)
    if source is loading.Source.FEDERATION:
      return loading.DataSpec(source=source, stream=d.stream, schema_file=d.schema_file)
    if source is loading.Source.AMLWORLD_FEDERATION:
      return loading.DataSpec(source=source, stream=d.stream)
    if source is loading.Source.LENDING_CLUB:
      return loading.DataSpec(
          source=source, stream=d.stream, test_fraction=d.test_fraction, max_rows=d.max_rows,
          partitioning=loading.Partitioning(
              method=parse_enum(partition.Method, d.partition, 'data.partition'), column=d.column,
              min_rows=d.min_rows, min_positives=d.min_positives,
              num_institutions=d.num_institutions, alpha=d.alpha))
  raise ValueError(f'no data spec for {source!r}.')


def agreed_schema(config: ml_collections.ConfigDict) -> schema_lib.Schema:
  """The schema every party of a federation agrees on: AMLworld's, or config.data.schema_file's."""
  if data_source(config) in (loading.Source.AMLWORLD, loading.Source.AMLWORLD_FEDERATION):
    return transactions.SCHEMA
  with errors.named_as(DATA_KEYS):
    if not config.data.schema_file:
      raise errors.InputError('a federation needs the agreed {schema_file}.', blames=('schema_file',))
    return schema_lib.Schema.from_json(config.data.schema_file)


def load_data(config: ml_collections.ConfigDict, *, shard_dir: Optional[str] = None,
              log=print) -> federated_data.FederatedData:
  """The federation `config.data` describes (`loading.load`), errors naming config keys."""
  spec = data_spec(config)
  with errors.named_as(DATA_KEYS):
    data = loading.load(spec, seed=config.seed, shard_dir=shard_dir, log=log)
  if not canary_records(config):
    return data
  holder = canary_holder(config, [i.name for i in data.institutions])
  return dataclasses.replace(data, institutions=tuple(
      audited_institution(config, i, data.schema, holds=k == holder) for k, i in enumerate(data.institutions)))


def canary_holder(config: ml_collections.ConfigDict, names: Sequence[str]) -> int:
  """The index of the institution holding a canary audit's canaries (config.canary_audit)."""
  name = config.canary_audit.institution
  if not name:
    return 0
  if name not in names:
    raise errors.ConfigError(f'config.canary_audit.institution={name!r} is none of the institutions'
                             f' ({", ".join(names)}).')
  return list(names).index(name)


def audited_institution(config: ml_collections.ConfigDict, institution, schema, *, holds: bool):
  """`institution` as a canary audit trains it: its rows marked real, and the canaries if it `holds` them."""
  a = config.canary_audit
  train = (canaries_lib.with_canaries(institution.train, schema, canaries_lib.coins(a.seed, a.canaries))
           if holds else canaries_lib.mark_real(institution.train))
  return federated_data.Institution(institution.name, train, canaries_lib.mark_real(institution.test))


def training_schema(config: ml_collections.ConfigDict, schema):
  """The schema of the rows the model trains on: `schema`, and a canary audit's column."""
  return canaries_lib.training_schema(schema) if canary_records(config) else schema


def canary_records(config: ml_collections.ConfigDict) -> int:
  """Canary records a canary audit adds (config.canary_audit): under record-level DP only.

  A client-level audit's canaries are institutions, added by the coordinator.
  """
  return config.canary_audit.canaries if config.record_dp.enabled else 0


def feature_space(config: ml_collections.ConfigDict, data,
                  noise: Optional[features.StatisticsNoise] = None, *,
                  ask: Optional[features.Ask] = None) -> features.FeatureSpace:
  """The federated feature statistics with config.features, errors naming config keys.

  `ask`: how the institutions answer when their rows are not in `data` (a
  federation's nodes); by default `data`'s institutions answer here.
  """
  with errors.named_as({'min_category_count': 'config.features.min_category_count'}):
    if ask is None:
      if canary_records(config):  # The statistics describe the real rows.
        data = dataclasses.replace(data, institutions=tuple(federated_data.Institution(
            i.name, canaries_lib.real_rows(i.train), i.test) for i in data.institutions))
      return features.compute_feature_space(
          data, min_category_count=config.features.min_category_count, noise=noise)
    return features.federated_feature_space(
        data.schema, ask, institutions=len(data.institutions),
        min_category_count=config.features.min_category_count, noise=noise)


def parse_choices(config: ml_collections.ConfigDict) -> Choices:
  check_values(config)
  f = config.federated
  choices = Choices(
      model=parse_enum(tabular.ModelType, config.model.name, 'model.name'),
      loss=parse_enum(tabular.LossType, config.model.loss, 'model.loss'),
      algorithm=parse_enum(processes.Algorithm, f.algorithm, 'federated.algorithm'),
      weighting=parse_enum(processes.Weighting, f.weighting, 'federated.weighting'),
      client_optimizer=parse_enum(processes.OptimizerType, f.client_optimizer, 'federated.client_optimizer'),
      server_optimizer=parse_enum(processes.OptimizerType, f.server_optimizer, 'federated.server_optimizer'),
      aggregator=parse_enum(aggregators.AggregatorType, config.aggregator.type, 'aggregator.type'),
      sampling=parse_enum(accounting.Sampling, f.sampling, 'federated.sampling'),
      accountant=parse_enum(accounting.Accountant, config.privacy.accountant, 'privacy.accountant'),
      record_dp_mode=parse_enum(accounting.RecordDpMode, config.record_dp.mode, 'record_dp.mode'),
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
    data_spec(config)  # A bad data section is refused before any work.
  else:
    data_source(config)  # The rows are the workers': only the source's kind matters here.
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


def privacy_plan(
    config, choices: Choices, *, institution_units: Sequence[int], cohort: int, unit_column: str = '',
    columns: tuple[int, int] = (0, 0), rows: int = 0, noise: Optional[Mapping[str, float]] = None,
) -> accounting.PrivacyPlan:
  """The run's DP mechanisms, with the noise calibrated to any target ε.

  Args:
    config: The experiment config.
    choices: Its parsed choices.
    institution_units: Privacy units (rows, or distinct `unit_column`
      values) in each institution's training rows.
    cohort: Institutions per round.
    unit_column: The schema's unit column; '' when the unit is a row.
    columns: The schema's (numeric, categorical) feature columns, whose
      statistics are DP with record-level DP.
    rows: Training rows in the federation (0: one per unit), which set
      distributed DP-SGD's default sampling rate.
    noise: The noise multipliers already calibrated for this federation
      (`PrivacyPlan.noise_multipliers()`, e.g. the coordinator's): used
      as they are, without calibrating again (`check_noise` verifies them).

  Returns:
    The plan.
  """
  a, r, p, f = config.aggregator, config.record_dp, config.privacy, config.federated
  calibrating = p.target_epsilon is not None and noise is None
  noise = dict(noise or {})
  client = record = None
  if choices.aggregator.is_dp:
    client = accounting.ClientLevelDp(
        noise_multiplier=noise.get('client', a.noise_multiplier), institutions=len(institution_units),
        clients_per_round=cohort, sampling=choices.sampling,
        clipping=clipping_description(config, choices))
  if r.enabled:
    if choices.record_dp_mode is accounting.RecordDpMode.LOCAL and f.batch_size > min(institution_units):
      raise errors.ConfigError(
          f'config.federated.batch_size={f.batch_size} is DP-SGD\'s expected batch'
          f' and exceeds the smallest institution ({min(institution_units)} privacy units).')
    unit = 'record (one row of an institution)'
    if unit_column:
      cap = f', at most {r.max_rows_per_unit} rows a round' if r.max_rows_per_unit else ''
      unit = f'{unit_column} (all rows sharing one {unit_column!r} value{cap})'
    record = _record_mechanism(
        config, choices, noise_multiplier=1.0 if calibrating else noise.get('record', r.noise_multiplier),
        units=tuple(int(n) for n in institution_units), unit=unit, unit_name=unit_column or 'record',
        rows=rows or sum(institution_units))
  if (record or client) and p.delta * min(institution_units) >= 1:
    raise errors.ConfigError(
        f'config.privacy.delta={p.delta:g} is not below 1/{min(institution_units)} (the smallest'
        ' institution\'s privacy units): a mechanism could then publish a unit outright.'
        f' Set config.privacy.delta <= {1 / (10 * min(institution_units)):.2g}.')
  statistics = _statistics_mechanism(config, columns, institutions=len(institution_units),
                                     units_have_rows=bool(unit_column))
  target = dict(rounds=f.rounds, target_epsilon=p.target_epsilon, delta=p.delta,
                accountant=choices.accountant)
  if calibrating and record is not None:
    _check_statistics_budget(statistics, target_epsilon=p.target_epsilon, delta=p.delta,
                             accountant=choices.accountant)
    record = dataclasses.replace(record, noise_multiplier=accounting.calibrate_record_noise(
        record, statistics=statistics, **target))
  if record is not None and r.clip is None:  # ε does not depend on the clip.
    record = dataclasses.replace(record, clip=clip_rule(
        row_gradient_norm(choices.model, columns), noise_multiplier=record.noise_multiplier,
        expected_batch_size=record.expected_batch_size))
  if calibrating and record is None:
    client = dataclasses.replace(
        client, noise_multiplier=accounting.calibrate_client_noise(client, **target))
  return accounting.PrivacyPlan(client=client, record=record, delta=p.delta,
                                accountant=choices.accountant, statistics=statistics,
                                exact_alert_threshold=config.model.alert_budget > 0 and statistics is None)


def _check_statistics_budget(statistics: Optional[accounting.FeatureStatisticsDp], *,
                             target_epsilon: float, delta: float, accountant: accounting.Accountant) -> None:
  """Refuses DP statistics that alone spend the target ε: no training noise could then meet it."""
  if statistics is None:
    return
  spent = accounting.epsilon(statistics.event(), accounting.accountant_delta(delta, statistics),
                             accountant=accountant)
  if spent >= target_epsilon:
    raise errors.ConfigError(
        f'config.features.noise_multiplier={statistics.noise_multiplier:g}: the feature statistics alone'
        f' spend ε = {spent:.3g}, not below config.privacy.target_epsilon={target_epsilon:g}, so no'
        ' training noise can meet the target. Raise config.features.noise_multiplier (the default'
        ' is 14) or the target.')


def _statistics_mechanism(config, columns: tuple[int, int], *, institutions: int,
                          units_have_rows: bool) -> Optional[accounting.FeatureStatisticsDp]:
  """DP feature statistics: with record-level DP, unless config.features.noise_multiplier is None."""
  z = config.features.noise_multiplier
  if not config.record_dp.enabled or z is None:
    return None
  return accounting.FeatureStatisticsDp(
      noise_multiplier=z, numeric=columns[0], categorical=columns[1], institutions=institutions,
      alert_passes=len(quantiles.BINS) if config.model.alert_budget > 0 else 0,
      alert_rows=quantiles.UNIT_ROW_CAP if units_have_rows else 1)


def _record_mechanism(config, choices: Choices, *, noise_multiplier: float, units: tuple[int, ...],
                      unit: str, unit_name: str, rows: int):
  r, f = config.record_dp, config.federated
  clip = r.clip if r.clip is not None else 1.0  # Set by clip_rule once the noise is known.
  if choices.record_dp_mode is accounting.RecordDpMode.LOCAL:
    return accounting.RecordLevelDp(
        noise_multiplier=noise_multiplier, clip=clip, expected_batch_size=f.batch_size,
        epochs=f.client_epochs, units=units, unit=unit, unit_name=unit_name)
  if choices.record_dp_mode is accounting.RecordDpMode.DISTRIBUTED:
    if not 0 <= r.tolerated_dropouts < len(units):
      raise errors.ConfigError(f'config.record_dp.tolerated_dropouts={r.tolerated_dropouts!r} must be in'
                               f' [0, {len(units) - 1}]: fewer than the federation\'s {len(units)} institutions.')
    return accounting.DistributedRecordDp(
        noise_multiplier=noise_multiplier, clip=clip, units=units,
        sampling_rate=r.sampling_rate if r.sampling_rate is not None else sampling_rate_rule(rows),
        unit=unit, unit_name=unit_name, dropouts=r.tolerated_dropouts)
  raise ValueError(f'no record-level mechanism for {choices.record_dp_mode!r}.')


# Distributed DP-SGD's default sampling rate, and its cap on a round's sample.
# For a fixed ε and number of steps the noise on the averaged gradient,
# σ/(q·N), hardly changes for q >= 0.2 (σ grows with q), and is bigger below
# it; the cap bounds the per-row gradients a round computes (rows, not units:
# an account's transactions are one unit but a gradient each, and 150,000
# sampled rows a round made 1M transactions take over 17 minutes a round).
SAMPLING_RATE = 0.2
MAX_SAMPLED_ROWS = 20_000


# DP-SGD's clip trades bias for noise. A logistic model's per-row gradient is
# (p - y) * (x, 1) with |p - y| < 1 and |x|^2 about one per feature column
# (numerics standardised and clipped, categoricals one-hot): a clip of
# sqrt(columns + 1) bounds it without cutting, while a clip of 1 cuts nearly
# every row to a unit direction, as if misclassified (biased), but keeps all
# of each row's share of the signal against the noise. Which wins depends on
# the noise on the mean gradient, σ / (expected batch), in units of the clip:
# on the default lenders (0.0044) the clip of 1 lost 0.02-0.05 AUC even with
# no noise at all; on the small public tables (HMDA 0.018, credit_data 0.011)
# sqrt(columns + 1) lost 0.03-0.09 to the clip of 1. LOW_NOISE lies between,
# set from single runs that one noise draw moves by 0.03: a first guess.
# Server SGD steps at most MAX_STEP a round, whatever the clip.
LOW_NOISE = 0.005
MAX_STEP = 5.0


def row_gradient_norm(model: tabular.ModelType, columns: tuple[int, int]) -> float:
  """The size of one row's gradient the clip rule keeps whole under low noise.

  The rarity model's is below sqrt(2) whatever the data (softmax minus a
  one-hot); the others are sized as logistic regression's, sqrt(numeric +
  categorical + 1) (see above).
  """
  if model is tabular.ModelType.RARITY:
    return math.sqrt(2.0)
  if model in (tabular.ModelType.LOGISTIC, tabular.ModelType.MLP, tabular.ModelType.AUTOENCODER):
    return math.sqrt(columns[0] + columns[1] + 1)
  raise ValueError(f'no gradient size for {model!r}.')


def clip_rule(row_norm: float, *, noise_multiplier: float, expected_batch_size: float) -> float:
  """DP-SGD's per-unit clip: `row_norm` (`row_gradient_norm`) when σ / batch <= LOW_NOISE, else 1."""
  if noise_multiplier / expected_batch_size <= LOW_NOISE:
    return row_norm
  return 1.0


# DP-SGD's excess risk grows as weights / (ε · units) (Bassily, Smith and
# Thakurta 2014). On the public tables of tffaml.training.robustness, those at
# or below 0.013 (the default data: 0.006) lost at most 0.04 AUC to ε = 1 per
# record; Caravan (0.020) and attrition (0.040) lost 0.09 and 0.11. The
# threshold was set after those held-out runs: it warns, it changes nothing.
CROWDED = 0.015


def crowding_note(plan: accounting.PrivacyPlan, *, weights: int, epsilon: Optional[float]) -> Optional[str]:
  """A notice, before training, that record-level DP will likely cost much on data this small for the model."""
  if plan.record is None or not epsilon:
    return None
  units = sum(plan.record.units)
  ratio = weights / (epsilon * units)
  if ratio < CROWDED:
    return None
  return (f'{units:,} {plan.record.unit_name}s train {weights} weights at ε = {epsilon:g}: weights /'
          f' (ε · units) = {ratio:.3f}, at or above {CROWDED}, where ε = 1 per record cost public tables'
          ' 0.09 to 0.11 AUC. Expect a large cost: fewer feature columns, more rows or a larger'
          ' config.privacy.target_epsilon help; compare with the same federation without DP'
          ' (configs/csv.py:no_dp) before relying on the model.')


def server_learning_rate(config, plan: accounting.PrivacyPlan) -> float:
  """config.federated.server_learning_rate; None: MAX_STEP / clip under record-level DP, else 1."""
  rate = config.federated.server_learning_rate
  if rate is not None:
    return rate
  return MAX_STEP / plan.record.clip if plan.record is not None else 1.0


def sampling_rate_rule(rows: int) -> float:
  """q from the federation's size alone: min(0.2, 20000 / training rows)."""
  return min(SAMPLING_RATE, MAX_SAMPLED_ROWS / rows)


def clients_per_round(config: ml_collections.ConfigDict, sampling: accounting.Sampling, num_institutions: int) -> int:
  """Institutions per round (expected, for Poisson); all when sampling=full."""
  if sampling is accounting.Sampling.FULL:
    return num_institutions
  requested = config.federated.clients_per_round
  if not 1 <= requested <= num_institutions:
    raise errors.ConfigError(
        f'config.federated.clients_per_round={requested} must be in'
        f' [1, {num_institutions}] (the number of institutions) with'
        f' sampling={sampling.value!r}.'
    )
  return requested


def build_aggregator(
    config, choices: Choices, plan: accounting.PrivacyPlan, *, cohort: int, noise_seed: int
) -> aggregators.Factory:
  a = config.aggregator
  return aggregators.configure_aggregator(
      aggregator_type=choices.aggregator,
      weighted=choices.weighting is processes.Weighting.EXAMPLES,
      clients_per_round=cohort,
      noise_multiplier=plan.client.noise_multiplier if plan.client else a.noise_multiplier,
      clip=a.clip,
      target_unclipped_quantile=a.target_unclipped_quantile,
      clip_learning_rate=a.clip_learning_rate,
      clipped_count_stddev=a.clipped_count_stddev,
      noise_seed=noise_seed,
      zeroing_norm=a.zeroing_norm,
      trim_fraction=a.trim_fraction,
  )


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
  attack_type = parse_enum(poisoning.AttackType, a.type, 'attack.type')
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


def loss_fn(config, choices: Choices) -> tabular.PerExampleLoss:
  return tabular.per_example_loss(
      choices.loss, positive_weight=config.model.positive_weight, focal_gamma=config.model.focal_gamma)


def keras_model_fn(config, choices: Choices, space) -> Callable[[], tf.keras.Model]:
  """Builds the config's Keras model on the federated feature statistics `space` (audited, in a canary audit)."""
  build = lambda: tabular.build_model(
      model_type=choices.model, feature_space=space,
      hidden_units=tuple(config.model.hidden_units),
      embedding_dim=config.model.embedding_dim, seed=config.seed)
  if canary_records(config):
    return canaries_lib.canary_model(build, canary_records(config))
  return build


def initial_weights(keras_model: Callable[[], tf.keras.Model]) -> tff.learning.models.ModelWeights:
  """The model's initial weights (seeded by the model's builder, so every party makes the same)."""
  return tff.learning.models.ModelWeights.from_model(keras_model())


def model_fn(config, choices: Choices, keras_model: Callable[[], tf.keras.Model], element_spec):
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


def build_train_process(config, choices: Choices, plan: accounting.PrivacyPlan, *, work: ClientWork,
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


def build_training(config, choices: Choices, plan: accounting.PrivacyPlan, space, schema, *,
                   side: Side, cohort: int = 0, noise_seed: int = 0, boosting: bool = False) -> Training:
  """The models and training of `config` on feature space `space`, for `side`.

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
  keras_model = keras_model_fn(config, choices, space)
  model = model_fn(config, choices, keras_model, client_data.element_spec(training_schema(config, schema)))
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


def _optimizers(config, choices: Choices, plan: accounting.PrivacyPlan) -> dict:
  f = config.federated
  return dict(
      client_optimizer=processes.build_optimizer(
          choices.client_optimizer, learning_rate=f.client_learning_rate,
          momentum=f.client_momentum),
      server_optimizer=processes.build_optimizer(
          choices.server_optimizer, learning_rate=server_learning_rate(config, plan),
          momentum=f.server_momentum),
  )


def build_train_parts(config, choices: Choices, plan: accounting.PrivacyPlan, *, work: ClientWork,
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


def clipping_description(config, choices: Choices) -> str:
  a = config.aggregator
  if choices.aggregator is aggregators.AggregatorType.GAUSSIAN_FIXED:
    return f'fixed clip {a.clip:g}'
  if choices.aggregator is aggregators.AggregatorType.GAUSSIAN_ADAPTIVE:
    return (f'adaptive clip from {a.clip:g} to the'
            f' {a.target_unclipped_quantile:g} quantile of update norms')
  return f'aggregator {choices.aggregator.value}'


def plan_for_config(config) -> tuple[accounting.PrivacyPlan, accounting.PrivacyStatement]:
  """The privacy plan of a config and its statement if it ran to the end.

  Loads the data only for the institutions' sizes. The statement assumes
  every institution joins every round: the worst case of any cohort
  sampling for the record-level guarantee.
  """
  choices = parse_choices(config)
  data = load_data(config)
  cohort = clients_per_round(config, choices.sampling, len(data.institutions))
  plan = privacy_plan_for_data(config, choices, data, cohort=cohort)
  rounds = config.federated.rounds
  return plan, plan.statement(rounds=rounds, participation=[rounds] * len(data.institutions))


def privacy_plan_for_data(config, choices: Choices, data, *, cohort: int) -> accounting.PrivacyPlan:
  """`privacy_plan` with the units counted in `data`'s training rows."""
  return privacy_plan_for_census(config, choices, data.schema, census(data), cohort=cohort)


def census(data: federated_data.FederatedData) -> list[dict]:
  """Per institution: its name, training rows and DP units (what the privacy plan is sized by)."""
  return [{'institution': i.name, 'train_rows': len(i.train), 'units': int(dp_sgd.unit_codes(i.train).max()) + 1}
          for i in data.institutions]


def privacy_plan_for_census(config, choices: Choices, schema, sizes: Sequence[dict], *,
                            cohort: int, noise: Optional[Mapping[str, float]] = None) -> accounting.PrivacyPlan:
  """`privacy_plan` for institutions of `sizes` (`census`) sharing `schema`."""
  return privacy_plan(
      config, choices, cohort=cohort, unit_column=schema.unit,
      columns=(len(schema.numeric), len(schema.categorical)),
      institution_units=[s['units'] for s in sizes], rows=sum(s['train_rows'] for s in sizes),
      noise=noise)


def check_noise(config, plan: accounting.PrivacyPlan, institution: int) -> None:
  """Refuses a plan whose noise is below what the config promises `institution`.

  One accountant evaluation, where calibrating is a search: what a node
  runs on the noise the coordinator calibrated. Its own record-level ε
  (every round joined) must not exceed config.privacy.target_epsilon; with
  no target, the noise must be the config's.

  Raises:
    errors.RunFailed: the noise is too small (naming the ε it would give).
  """
  p, rounds = config.privacy, config.federated.rounds
  if p.target_epsilon is None:
    expected = {}
    if plan.record is not None:
      expected['record'] = config.record_dp.noise_multiplier
    if plan.client is not None:
      expected['client'] = config.aggregator.noise_multiplier
    if plan.noise_multipliers() != expected:
      raise errors.RunFailed(f'the plan\'s noise multipliers {plan.noise_multipliers()} are not the'
                             f' config\'s {expected}.')
    return
  if plan.record is None:
    return  # Client-level noise is added by the coordinator, which the statement says it trusts.
  participation = [rounds if i == institution else 0 for i in range(len(plan.record.units))]
  value = plan.epsilons(rounds=rounds, participation=participation)['record']
  if value > p.target_epsilon * (1 + 1e-9):
    raise errors.RunFailed(
        f'the plan\'s record-level noise multiplier {plan.record.noise_multiplier:.6g} gives this'
        f' institution ε = {value:.4g} after {rounds} rounds, above config.privacy.target_epsilon='
        f'{p.target_epsilon:g}.')


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
  f, schema = config.federated, training_schema(config, schema)
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

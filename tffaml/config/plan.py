"""The privacy plan a config asks for: its mechanisms, noise calibration, clip and sampling rules."""

import dataclasses
import math
from typing import Mapping, Optional, Sequence

import ml_collections

from tffaml import errors
from tffaml.config import checks as config_checks
from tffaml.config import data as config_data
from tffaml.data import federated_data
from tffaml.federated import aggregators
from tffaml.federated import dp_sgd
from tffaml.federated import quantiles
from tffaml.models import tabular
from tffaml.privacy import accounting


def privacy_plan(
    config, choices: config_checks.Choices, *, institution_units: Sequence[int], cohort: int, unit_column: str = '',
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
  public = config_data.public_corpus(config)
  return accounting.PrivacyPlan(client=client, record=record, delta=p.delta,
                                accountant=choices.accountant, statistics=statistics,
                                exact_alert_threshold=(config.model.alert_budget > 0 and statistics is None
                                                       and public is None),
                                public_corpus=public.path if public is not None else '',
                                public_alert_threshold=public is not None and config.model.alert_budget > 0)


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
  if not config.record_dp.enabled or z is None or config_data.public_corpus(config) is not None:
    return None  # With a public corpus they come from it, exactly (tffaml.training.public).
  return accounting.FeatureStatisticsDp(
      noise_multiplier=z, numeric=columns[0], categorical=columns[1], institutions=institutions,
      alert_passes=len(quantiles.BINS) if config.model.alert_budget > 0 else 0,
      alert_rows=quantiles.UNIT_ROW_CAP if units_have_rows else 1)


def _record_mechanism(config, choices: config_checks.Choices, *, noise_multiplier: float, units: tuple[int, ...],
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
# Thakurta 2014). On the public tables of tffaml.studies.robustness, those at
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


def clipping_description(config, choices: config_checks.Choices) -> str:
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
  choices = config_checks.parse_choices(config)
  data = config_data.load_data(config)
  cohort = clients_per_round(config, choices.sampling, len(data.institutions))
  plan = privacy_plan_for_data(config, choices, data, cohort=cohort)
  rounds = config.federated.rounds
  return plan, plan.statement(rounds=rounds, participation=[rounds] * len(data.institutions))


def privacy_plan_for_data(config, choices: config_checks.Choices, data, *, cohort: int) -> accounting.PrivacyPlan:
  """`privacy_plan` with the units counted in `data`'s training rows."""
  return privacy_plan_for_census(config, choices, data.schema, census(data), cohort=cohort)


def census(data: federated_data.FederatedData) -> list[dict]:
  """Per institution: its name, training rows and DP units (what the privacy plan is sized by)."""
  return [{'institution': i.name, 'train_rows': len(i.train), 'units': int(dp_sgd.unit_codes(i.train).max()) + 1}
          for i in data.institutions]


def privacy_plan_for_census(config, choices: config_checks.Choices, schema, sizes: Sequence[dict], *,
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

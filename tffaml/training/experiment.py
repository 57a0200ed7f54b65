"""Maps a config onto the library's builders; all choices validated first.

Every error names the config key (as its flag, `config.x.y`) and the value.
"""

import dataclasses
import enum
from typing import TypeVar

import ml_collections

from tffaml.federated import aggregators
from tffaml.federated import processes
from tffaml.models import tabular
from tffaml.privacy import accounting

E = TypeVar('E', bound=enum.Enum)


def parse_enum(enum_cls: type[E], value: str, key: str) -> E:
  try:
    return enum_cls(value)
  except ValueError:
    raise ValueError(
        f'config.{key}={value!r} is not one of {[m.value for m in enum_cls]}.'
    ) from None


@dataclasses.dataclass(frozen=True)
class Choices:
  """The config's enumerated choices, parsed."""

  model: tabular.ModelType
  algorithm: processes.Algorithm
  weighting: processes.Weighting
  client_optimizer: processes.OptimizerType
  server_optimizer: processes.OptimizerType
  aggregator: aggregators.AggregatorType
  sampling: accounting.Sampling


def parse_choices(config: ml_collections.ConfigDict) -> Choices:
  f = config.federated
  choices = Choices(
      model=parse_enum(tabular.ModelType, config.model.name, 'model.name'),
      algorithm=parse_enum(processes.Algorithm, f.algorithm, 'federated.algorithm'),
      weighting=parse_enum(processes.Weighting, f.weighting, 'federated.weighting'),
      client_optimizer=parse_enum(processes.OptimizerType, f.client_optimizer, 'federated.client_optimizer'),
      server_optimizer=parse_enum(processes.OptimizerType, f.server_optimizer, 'federated.server_optimizer'),
      aggregator=parse_enum(aggregators.AggregatorType, config.aggregator.type, 'aggregator.type'),
      sampling=parse_enum(accounting.Sampling, f.sampling, 'federated.sampling'),
  )
  for key in ('rounds', 'client_epochs', 'batch_size'):
    if f[key] < 1:
      raise ValueError(f'config.federated.{key} must be >= 1, got {f[key]}.')
  if choices.aggregator.is_dp and not config.aggregator.noise_multiplier > 0:
    raise ValueError(
        f'config.aggregator.type={config.aggregator.type!r} needs'
        f' config.aggregator.noise_multiplier > 0, got {config.aggregator.noise_multiplier}.'
    )
  if not 0.0 < config.privacy.delta < 1.0:
    raise ValueError(f'config.privacy.delta must be in (0, 1), got {config.privacy.delta}.')
  return choices


def clients_per_round(config: ml_collections.ConfigDict, sampling: accounting.Sampling, num_institutions: int) -> int:
  """Institutions per round (expected, for Poisson); all when sampling=full."""
  if sampling is accounting.Sampling.FULL:
    return num_institutions
  requested = config.federated.clients_per_round
  if not 1 <= requested <= num_institutions:
    raise ValueError(
        f'config.federated.clients_per_round={requested} must be in'
        f' [1, {num_institutions}] (the number of institutions) with'
        f' sampling={sampling.value!r}.'
    )
  return requested


def build_aggregator(config, choices: Choices, *, cohort: int, noise_seed: int) -> aggregators.Factory:
  a = config.aggregator
  return aggregators.configure_aggregator(
      aggregator_type=choices.aggregator,
      weighted=choices.weighting is processes.Weighting.EXAMPLES,
      clients_per_round=cohort,
      noise_multiplier=a.noise_multiplier,
      clip=a.clip,
      target_unclipped_quantile=a.target_unclipped_quantile,
      clip_learning_rate=a.clip_learning_rate,
      clipped_count_stddev=a.clipped_count_stddev,
      noise_seed=noise_seed,
  )


def build_train_process(config, choices: Choices, *, model_fn, aggregator):
  f = config.federated
  return processes.build_train_process(
      model_fn=model_fn,
      algorithm=choices.algorithm,
      weighting=choices.weighting,
      client_optimizer=processes.build_optimizer(
          choices.client_optimizer, learning_rate=f.client_learning_rate,
          momentum=f.client_momentum),
      server_optimizer=processes.build_optimizer(
          choices.server_optimizer, learning_rate=f.server_learning_rate,
          momentum=f.server_momentum),
      aggregator=aggregator,
      proximal_strength=f.proximal_strength,
  )


def clipping_description(config, choices: Choices) -> str:
  a = config.aggregator
  if choices.aggregator is aggregators.AggregatorType.GAUSSIAN_FIXED:
    return f'fixed clip {a.clip:g}'
  if choices.aggregator is aggregators.AggregatorType.GAUSSIAN_ADAPTIVE:
    return (f'adaptive clip from {a.clip:g} to the'
            f' {a.target_unclipped_quantile:g} quantile of update norms')
  return f'aggregator {choices.aggregator.value}'

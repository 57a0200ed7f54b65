"""Model-update aggregators: plain, client-level DP, and robust.

`build` maps an `AggregatorType` and its `Params` onto a TFF aggregation
factory, through the builder each type registers in `BUILDERS`. The DP types
protect each *institution's* whole contribution in a round (client-level
DP): updates are clipped to an L2 norm and Gaussian noise is added to their
sum (McMahan et al. 2018, arXiv:1710.06963). They average institutions
uniformly, so they pair with uniform weighting only: weighting by example
count would let one institution's data size leak and break the sensitivity
bound.
"""

import dataclasses
import enum
import logging
from typing import Callable, Optional, Union

import tensorflow_federated as tff
import tensorflow_privacy as tfp

from tffaml import errors
from tffaml.federated import dp_queries
from tffaml.federated import robust

Factory = Union[
    tff.aggregators.UnweightedAggregationFactory,
    tff.aggregators.WeightedAggregationFactory,
]


class AggregatorType(enum.Enum):
  MEAN = 'mean'
  GAUSSIAN_FIXED = 'gaussian_fixed'
  GAUSSIAN_ADAPTIVE = 'gaussian_adaptive'
  ROBUST = 'robust'  # Adaptive norm clipping and zeroing, no noise.
  # tff.learning.secure_aggregator: the robust aggregator's clipping and
  # zeroing, summed with secure-sum intrinsics. Simulation runs those as
  # plain sums (see tffaml.runtime); a platform with secure aggregation would
  # show the coordinator only the sum.
  SECURE = 'secure'
  # Poisoning defences (tffaml.federated.robust): fixed clipping and zeroing,
  # coordinate-wise median and trimmed mean.
  CLIPPING = 'clipping'
  MEDIAN = 'median'
  TRIMMED_MEAN = 'trimmed_mean'

  @property
  def is_dp(self) -> bool:
    return self in (AggregatorType.GAUSSIAN_FIXED, AggregatorType.GAUSSIAN_ADAPTIVE)

  @property
  def needs_each_update(self) -> bool:
    """Reads each institution's update, not only their sum: secure aggregation cannot hide them.

    MEAN needs the sum alone; GAUSSIAN_FIXED too, once each node clips its own
    update (the coordinator then adds the noise to the sum). The adaptive and
    robust types estimate norms or order statistics from every update.
    """
    return self not in (AggregatorType.MEAN, AggregatorType.GAUSSIAN_FIXED)

  @property
  def weighs_institutions(self) -> bool:
    """Has a form weighted by example counts (DP and the robust statistics count each once)."""
    return not self.is_dp and self not in (AggregatorType.MEDIAN, AggregatorType.TRIMMED_MEAN)


def _check_positive(value: float, name: str) -> None:
  if not value > 0:
    raise ValueError(f'{name} must be > 0, got {value}.')


def gaussian_fixed(
    *,
    noise_multiplier: float,
    clients_per_round: float,
    clip: float,
    noise_seed: int,
) -> tff.aggregators.UnweightedAggregationFactory:
  """Fixed L2 clipping to `clip`, noise stddev `noise_multiplier * clip`.

  Type signature of `create(value_type).next`:
  `(<state@SERVER, {value_type}@CLIENTS> -> <state, mean@SERVER, measurements>)`.
  The noised sum is divided by `clients_per_round`.

  Args:
    noise_multiplier: Noise stddev in units of `clip` (>= 0).
    clients_per_round: Expected number of institutions per round (> 0).
    clip: L2 norm each institution's update is clipped to (> 0).
    noise_seed: Key of the noise generator (see `dp_queries`).

  Returns:
    An unweighted aggregation factory.
  """
  if noise_multiplier < 0:
    raise ValueError(f'noise_multiplier must be >= 0, got {noise_multiplier}.')
  _check_positive(clients_per_round, 'clients_per_round')
  _check_positive(clip, 'clip')
  query = tfp.NormalizedQuery(
      dp_queries.SeededGaussianSumQuery(
          clip, clip * noise_multiplier,
          noise_seed=noise_seed, stream=dp_queries.VALUE_STREAM,
      ),
      denominator=float(clients_per_round),
  )
  return tff.aggregators.DifferentiallyPrivateFactory(query)


def default_clipped_count_stddev(
    noise_multiplier: float, clients_per_round: float
) -> float:
  """TFF's default (Andrew et al.: clients / 20), raised to the noise level.

  Adaptive clipping splits the privacy budget: the update noise multiplier
  becomes (z^-2 - (2 s)^-2)^-1/2 for clip-count stddev s, which needs
  z < 2 s. TFF's default s = 0.05 * clients fails that with few institutions
  (z = 1 needs 10+ per round); s = z keeps the update noise at 1.155 z.
  """
  return max(0.05 * clients_per_round, noise_multiplier)


def gaussian_adaptive(
    *,
    noise_multiplier: float,
    clients_per_round: float,
    initial_clip: float,
    target_unclipped_quantile: float,
    clip_learning_rate: float,
    noise_seed: int,
    clipped_count_stddev: Optional[float] = None,
) -> tff.aggregators.UnweightedAggregationFactory:
  """Adaptive clipping to a private quantile of update norms, Gaussian noise.

  Andrew et al. 2021, "Differentially Private Learning with Adaptive
  Clipping" (arXiv:1905.03871). `noise_multiplier` is the total: the clip
  estimate's noise is paid out of it (see `default_clipped_count_stddev`), so
  privacy accounting uses `noise_multiplier` as given.

  Args:
    noise_multiplier: Total noise multiplier (> 0).
    clients_per_round: Expected number of institutions per round (> 0).
    initial_clip: Initial L2 clip (> 0).
    target_unclipped_quantile: Fraction of updates left unclipped, in (0, 1).
    clip_learning_rate: Geometric learning rate of the clip (> 0).
    noise_seed: Key of the noise generator (see `dp_queries`).
    clipped_count_stddev: Noise on the clipped count; default above.

  Returns:
    An unweighted aggregation factory.
  """
  from tensorflow_federated.python.aggregators import differential_privacy  # pylint: disable=g-import-not-at-top

  for name, value in (('noise_multiplier', noise_multiplier), ('clients_per_round', clients_per_round),
                      ('initial_clip', initial_clip), ('clip_learning_rate', clip_learning_rate)):
    _check_positive(value, name)
  if not 0.0 < target_unclipped_quantile < 1.0:
    raise ValueError(f'target_unclipped_quantile must be in (0, 1), got {target_unclipped_quantile}.')
  if clipped_count_stddev is None:
    clipped_count_stddev = default_clipped_count_stddev(noise_multiplier, clients_per_round)
  # TFF's own split of the budget, with its error naming both values.
  value_noise_multiplier, clipped_count_stddev = differential_privacy.adaptive_clip_noise_params(
      noise_multiplier, clients_per_round, clipped_count_stddev)
  logging.info(
      'Adaptive clipping: noise multiplier %s -> %s on updates, clipped count'
      ' stddev %s.', noise_multiplier, value_noise_multiplier, clipped_count_stddev,
  )
  query = tfp.NormalizedQuery(
      dp_queries.SeededQuantileAdaptiveClipSumQuery(
          initial_l2_norm_clip=initial_clip,
          noise_multiplier=value_noise_multiplier,
          target_unclipped_quantile=target_unclipped_quantile,
          learning_rate=clip_learning_rate,
          clipped_count_stddev=clipped_count_stddev,
          expected_num_records=clients_per_round,
          noise_seed=noise_seed,
      ),
      denominator=float(clients_per_round),
  )
  return tff.aggregators.DifferentiallyPrivateFactory(query)


def _check_weighting(aggregator_type: AggregatorType, weighted: bool) -> None:
  """Refuses a weighted aggregation that `aggregator_type` cannot give."""
  if weighted and aggregator_type.is_dp:
    raise ValueError(f'aggregator {aggregator_type.value!r} gives client-level DP only with'
                     ' uniform weighting (weighted=False).')
  if weighted and not aggregator_type.weighs_institutions:
    raise ValueError(f'aggregator {aggregator_type.value!r} counts every institution once;'
                     ' it has no weighted form (weighted=False).')


@dataclasses.dataclass(frozen=True)
class Params:
  """What an aggregator is built from; each type's builder reads the fields it needs.

  Attributes:
    weighted: Whether institutions are weighted by example count. DP types
      require `False`.
    clients_per_round: Expected institutions per round (DP normalisation).
    noise_multiplier: DP noise multiplier.
    clip: DP clip (fixed), or initial clip (adaptive); `clipping`'s clip.
    target_unclipped_quantile: Adaptive clipping's target quantile.
    clip_learning_rate: Adaptive clipping's learning rate.
    clipped_count_stddev: Adaptive clipping's count noise (default: see
      `default_clipped_count_stddev`).
    noise_seed: Key of the DP noise generator.
    zeroing_norm: `clipping`: updates above this norm are dropped (default
      10 * clip).
    trim_fraction: `trimmed_mean`: fraction trimmed at each end.
  """

  weighted: bool
  clients_per_round: float
  noise_multiplier: float = 0.0
  clip: float = 1.0
  target_unclipped_quantile: float = 0.5
  clip_learning_rate: float = 0.2
  clipped_count_stddev: Optional[float] = None
  noise_seed: int = 0
  zeroing_norm: Optional[float] = None
  trim_fraction: float = 0.2


Builder = Callable[[Params], Factory]


def build(aggregator_type: AggregatorType, params: Params) -> Factory:
  """The aggregation factory for `aggregator_type`: weighted when `params.weighted`, else unweighted."""
  _check_weighting(aggregator_type, params.weighted)
  return errors.registered(BUILDERS, aggregator_type, 'tffaml.federated.aggregators.BUILDERS')(params)


def configure_aggregator(*, aggregator_type: AggregatorType, **params) -> Factory:
  """`build(aggregator_type, Params(**params))`: the fields of `Params` as keywords."""
  return build(aggregator_type, Params(**params))


def _mean(p: Params) -> Factory:
  return tff.aggregators.MeanFactory() if p.weighted else tff.aggregators.UnweightedMeanFactory()


def _robust(p: Params) -> Factory:
  return tff.learning.robust_aggregator(zeroing=True, clipping=True, weighted=p.weighted)


def _secure(p: Params) -> Factory:
  return tff.learning.secure_aggregator(zeroing=True, clipping=True, weighted=p.weighted)


def _clipping(p: Params) -> Factory:
  return robust.fixed_clipping_and_zeroing(clip=p.clip, zeroing_norm=p.zeroing_norm or 10 * p.clip,
                                           weighted=p.weighted)


def _median(p: Params) -> Factory:
  del p  # No parameters.
  return robust.median()


def _trimmed_mean(p: Params) -> Factory:
  return robust.trimmed_mean(p.trim_fraction)


def _gaussian_fixed(p: Params) -> Factory:
  return gaussian_fixed(noise_multiplier=p.noise_multiplier, clients_per_round=p.clients_per_round,
                        clip=p.clip, noise_seed=p.noise_seed)


def _gaussian_adaptive(p: Params) -> Factory:
  return gaussian_adaptive(
      noise_multiplier=p.noise_multiplier, clients_per_round=p.clients_per_round, initial_clip=p.clip,
      target_unclipped_quantile=p.target_unclipped_quantile, clip_learning_rate=p.clip_learning_rate,
      clipped_count_stddev=p.clipped_count_stddev, noise_seed=p.noise_seed)


# Each AggregatorType's builder (tests/federated/aggregators_test.py holds
# that every member has one).
BUILDERS: dict[AggregatorType, Builder] = {
    AggregatorType.MEAN: _mean,
    AggregatorType.GAUSSIAN_FIXED: _gaussian_fixed,
    AggregatorType.GAUSSIAN_ADAPTIVE: _gaussian_adaptive,
    AggregatorType.ROBUST: _robust,
    AggregatorType.SECURE: _secure,
    AggregatorType.CLIPPING: _clipping,
    AggregatorType.MEDIAN: _median,
    AggregatorType.TRIMMED_MEAN: _trimmed_mean,
}

"""The config's numeric ranges and its workers' addresses, checked without TensorFlow.

The scripts run these checks as soon as their flags parse, before they
import TensorFlow and TFF (`tffaml.cli.run`'s `check`): a mistyped value is
refused in a second. `checks.parse_choices` runs them again, for callers
that are not scripts.
"""

import dataclasses
import os
from typing import Optional

import ml_collections

from tffaml import errors


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
    'model.positive_weight': _POSITIVE, 'model.prior_positive_rate': _FRACTION, 'model.focal_gamma': _NON_NEGATIVE,
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
    'public.epochs': _NON_NEGATIVE, 'public.batch_size': _AT_LEAST_ONE, 'public.learning_rate': _POSITIVE,
    'personalize.epochs': _NON_NEGATIVE, 'personalize.learning_rate': _POSITIVE,
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
  if 'personalize' in config and config.personalize.get('trees') and not config.personalize.epochs:
    raise errors.ConfigError('config.personalize.trees reads each institution\'s personalized copy;'
                             ' set config.personalize.epochs > 0 (3 in configs/aml.py:public) or trees=False.')
  if config.data.stream and config.reference.centralized_epochs:
    raise errors.ConfigError('config.reference.centralized_epochs pools every row in memory;'
                             ' set it to 0 with config.data.stream.')


# The config.data key holding each source's file or folder (by
# config.data.source): a public corpus is read by the same source, from
# config.public.path instead (tffaml.training.public).
PUBLIC_DATA_KEYS = {'amlworld': 'path', 'csv_dir': 'dir'}


def check_public(config: ml_collections.ConfigDict) -> None:
  """Refuses a public corpus the run cannot read as one (no file is read, only its path)."""
  path = config.public.path if 'public' in config else ''
  if not path:
    return
  key = PUBLIC_DATA_KEYS.get(config.data.source)
  if key is None:
    raise errors.ConfigError(
        f'config.public.path is read as config.data.path (amlworld) or config.data.dir (csv_dir), not for'
        f' config.data.source={config.data.source!r}: set config.public.path=\'\'.')
  own = config.data[key]
  if own and os.path.realpath(own) == os.path.realpath(path):
    raise errors.ConfigError(
        f'config.public.path={path!r} is config.data.{key}: the public corpus must differ from the'
        ' rows the federation trains and is evaluated on (e.g. scripts/generate_transactions.py with another'
        ' --seed, bank count, typologies, --days and --amount_scale).')
  if not os.path.exists(path):
    raise errors.ConfigError(f'config.public.path={path!r} does not exist: give the public corpus\'s'
                             f' {"file" if key == "path" else "folder"}, or \'\' for none.')
  if config.canary_audit.canaries:
    raise errors.ConfigError(
        'config.public.path with a canary audit is not built: the audit measures the DP-SGD mechanism,'
        ' which a public start does not change; audit with config.public.path=\'\'.')


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

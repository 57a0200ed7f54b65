"""`features.answer`, as TensorFlow graphs a TFF worker runs on the files it holds.

A worker of a multi-machine simulation runs graphs, not Python: each
question of the federated feature statistics (`features.Request`) becomes a
no-argument TF computation that reads one institution's training file (named
relative to the worker's directory) and returns what `features.answer`
returns for those rows. Only the answers leave the worker; under DP, the
coordinator adds the noise (see `computation`).
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import features
from tffaml.data import schema as schema_lib
from tffaml.data import shards

# Lines decoded at a time: the answers are sums over chunks (and a running
# count of each category value), so a worker holds one chunk of one file, not
# the file: whole files held a 10M-row worker at 5.7 GB.
_CHUNK_ROWS = 1 << 16


def _chunks(path: str, schema: schema_lib.Schema) -> tf.data.Dataset:
  """The file's feature columns in chunks (float64 numeric, as `shards.read_frame` gives them)."""
  return shards.dataset(path, schema, batch_size=_CHUNK_ROWS, numbers=tf.float64).map(lambda columns, _: columns)


def _summed(chunks: tf.data.Dataset, answer) -> collections.OrderedDict:
  """`answer` (rows -> fixed-shape counts and sums) of the whole file: summed over its chunks."""
  empty = collections.OrderedDict((c, tf.zeros([0], spec.dtype)) for c, spec in chunks.element_spec.items())
  return chunks.reduce(answer(empty), lambda total, rows: tf.nest.map_structure(tf.add, total, answer(rows)))


def _candidates(chunks: tf.data.Dataset, schema: schema_lib.Schema, min_count: int) -> collections.OrderedDict:
  """Each categorical column's values seen at least `min_count` times, counted chunk by chunk."""
  def add(seen, rows):
    out = collections.OrderedDict()
    for column in schema.categorical:
      values, counts = seen[column]
      merged, index = tf.unique(tf.concat([values, rows[column]], 0))
      weights = tf.concat([counts, tf.ones_like(rows[column], tf.int64)], 0)
      out[column] = (merged, tf.math.unsorted_segment_sum(weights, index, tf.size(merged)))
    return out

  none = collections.OrderedDict((c, (tf.zeros([0], tf.string), tf.zeros([0], tf.int64))) for c in schema.categorical)
  seen = chunks.reduce(none, add)
  return collections.OrderedDict((c, tf.boolean_mask(values, counts >= min_count))
                                 for c, (values, counts) in seen.items())


def _histograms(rows, schema: schema_lib.Schema, edges: np.ndarray) -> collections.OrderedDict:
  bins = len(edges) + 1
  edges = tf.constant(edges, tf.float64)
  counts = [tf.math.bincount(tf.cast(tf.searchsorted(edges, rows[c], side='right'), tf.int32),
                             minlength=bins, maxlength=bins, dtype=tf.float64)
            for c in schema.numeric]
  return collections.OrderedDict(counts=tf.stack(counts) if counts else tf.zeros([0, bins], tf.float64))


def _category_counts(rows, schema: schema_lib.Schema, candidates: dict) -> tf.Tensor:
  counts = []
  for column in schema.categorical:
    values, _, value_counts = tf.unique_with_counts(rows[column])
    wanted = tf.constant(np.asarray(candidates[column], dtype=object), tf.string, shape=[len(candidates[column])])
    matches = tf.equal(wanted[:, None], values[None, :])
    counts.append(tf.reduce_sum(tf.where(matches, tf.cast(value_counts, tf.float64)[None, :], 0.0), axis=1))
  return tf.concat(counts, 0) if counts else tf.zeros([0], tf.float64)


def _statistics(rows, schema: schema_lib.Schema, params: dict) -> collections.OrderedDict:
  size = len(schema.numeric)
  if size:
    numeric = tf.stack([rows[c] for c in schema.numeric], axis=1)
    lower = np.array([-np.inf if v is None else v for v in params['lower']], np.float64)
    upper = np.array([np.inf if v is None else v for v in params['upper']], np.float64)
    numeric = tf.minimum(tf.maximum(numeric, lower), upper)
    count = tf.fill([size], tf.cast(tf.shape(numeric)[0], tf.float64))
    total, squares = tf.reduce_sum(numeric, 0), tf.reduce_sum(tf.square(numeric), 0)
  else:
    count = total = squares = tf.zeros([0], tf.float64)
  return collections.OrderedDict(count=count, sum=total, sum_of_squares=squares,
                                 category_counts=_category_counts(rows, schema, params['candidates']))


def _bucket_counts(rows, schema: schema_lib.Schema, buckets: int) -> tf.Tensor:
  """`features.bucket_counts`: rows per hashed slot, column after column (the model's hash)."""
  counts = [tf.math.bincount(tf.cast(tf.strings.to_hash_bucket_fast(rows[c], buckets), tf.int32),
                             minlength=buckets, maxlength=buckets, dtype=tf.float64)
            for c in schema.categorical]
  return tf.concat(counts, 0) if counts else tf.zeros([0], tf.float64)


def _fine_counts(rows, schema: schema_lib.Schema, params: dict) -> collections.OrderedDict:
  counts = []
  for column, (lower, upper, scale) in zip(schema.numeric, params['ranges']):
    edges, _ = features.fine_edges(lower, upper, scale)
    values = tf.clip_by_value(rows[column], lower, upper)
    bins = tf.clip_by_value(tf.searchsorted(tf.constant(edges, tf.float64), values, side='right') - 1,
                            0, features.FINE_BINS - 1)
    counts.append(tf.math.bincount(tf.cast(bins, tf.int32), minlength=features.FINE_BINS,
                                   maxlength=features.FINE_BINS, dtype=tf.float64))
  return collections.OrderedDict(
      fine=tf.stack(counts) if counts else tf.zeros([0, features.FINE_BINS], tf.float64),
      category_counts=_bucket_counts(rows, schema, params['hash_buckets']))


def computation(path: str, schema: schema_lib.Schema, request: features.Request,
                params: dict) -> tff.Computation:
  """`( -> answer)`: the exact answer to `request` about the rows in `path`, computed where the file is.

  Under DP (`params['noise_share']`) the worker answers without noise, each
  row its own unit (`features.answer` counts a unit's first row); the
  coordinator adds each institution's share (`features.noised`), so the
  noise seed stays with it.
  """
  dp = params.get('noise_share') is not None
  if dp and schema.unit:
    raise ValueError(f'DP statistics on TFF workers count rows as units; {schema.unit!r} groups them.')
  if dp and request is features.Request.CANDIDATES:  # Raw values: DP statistics count hashed slots.
    raise ValueError('under DP statistics no worker proposes its category values.')

  @tff.tensorflow.computation
  def answer():
    chunks = _chunks(path, schema)
    if request is features.Request.CANDIDATES:
      return _candidates(chunks, schema, params['min_count'])
    if request is features.Request.HISTOGRAMS:
      edges = features.RANGE_EDGES if dp else features.HISTOGRAM_EDGES
      return _summed(chunks, lambda rows: _histograms(rows, schema, edges))
    if request is features.Request.STATISTICS:
      return _summed(chunks, lambda rows: _statistics(rows, schema, params))
    if request is features.Request.FINE_COUNTS:
      return _summed(chunks, lambda rows: _fine_counts(rows, schema, params))
    raise ValueError(f'no TF answer to {request!r}.')

  return answer


def as_answer(request: features.Request, value) -> dict:
  """A computation's result in `features.answer`'s form (candidates as sorted str lists)."""
  if request is features.Request.CANDIDATES:
    return collections.OrderedDict(
        (c, sorted(v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).tolist()))
        for c, values in value.items())
  return collections.OrderedDict((k, np.asarray(v, np.float64)) for k, v in value.items())

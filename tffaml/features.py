"""Feature statistics computed without pooling, baked into Keras layers.

Each institution summarises its own training rows: per numeric column the
count, sum and sum of squares; per categorical column the count of each
value. Only these summaries leave the institution, summed across
institutions by a TFF `federated_sum` (the aggregation a secure-sum platform
would run; in simulation TFF executes it as a plain sum). Means and variances
follow from the sums; a categorical value enters the vocabulary when it is
seen at least `min_category_count` times in the federation.

Without DP, which values exist must be known before their counts can be
summed: each institution proposes the values it holds at least
`min_category_count` times (a k-anonymity threshold, not DP), and the union
of the proposals is what is counted.

One participant's extreme values (a data error, or a hostile participant)
must not set everyone's scale: numeric statistics are computed on values
clipped to a range found first from a federated histogram (fixed bins on a
signed log scale, summed like the statistics). The range drops the
max(`MIN_TRIMMED`, `TRIM_FRACTION` of the rows) most extreme values at each
end, to the edge of the next bin; the model clips its inputs to the same
range, so no served or trained value lies outside what the statistics saw.

With record-level DP the statistics are DP too (`StatisticsNoise`, accounted
as `accounting.FeatureStatisticsDp`): each unit contributes one row, every
summed count carries Gaussian noise added in shares by the institutions,
and everything else is computed from the noisy counts. Two releases: a
histogram on half-decade bins gives each numeric column's range (bins whose
noisy count clears a threshold that an empty bin passes with probability
`SPURIOUS_BIN` over all bins); a histogram of `FINE_BINS` bins inside that
range gives its mean and variance, released with each categorical column's
counts over `HASH_BUCKETS` hashed slots. No category value leaves an
institution under DP, not even to say it exists: each counts its values into
the slots of a public hash (`tf.strings.to_hash_bucket_fast`), and the
vocabulary is the slots whose noisy count clears `vocabulary_threshold`
(`HashedSlots`); the model hashes its input with the same function, so a
value maps to its slot's index, or to the out-of-vocabulary index.

The resulting `FeatureSpace` becomes Keras preprocessing layers
(`Standardise`, `StringLookup`), so models, and the exported SavedModel,
take raw feature values.
"""

import collections
import dataclasses
import enum
import math
import statistics
from typing import Callable, Optional

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_federated as tff

from tffaml.data import federated_data
from tffaml.data import schema as schema_lib


TRIM_FRACTION = 0.001  # Of the federation's rows, clipped at each end...
MIN_TRIMMED = 3  # ...and at least this many.
# Bin edges: 0 and ±10^(k/8), from 1e-30 to beyond float32's largest number.
# Python's scalar pow, not numpy's: numpy's vectorized pow rounds differently on CPUs with
# AVX-512 (10^-30 became 9.999999999999999e-31), and every party must bin alike.
_MAGNITUDES = np.array([10.0 ** (k / 8) for k in range(-30 * 8, 39 * 8 + 1)])
HISTOGRAM_EDGES = np.concatenate([-_MAGNITUDES[::-1], _MAGNITUDES])
# DP range bins: 0 and ±10^(k/2) from 1e-6 to 1e12 (coarse, so rows fill them
# past the noise); values beyond fall in the outermost bins.
_HALF_DECADES = np.array([10.0 ** (k / 2) for k in range(-12, 25)])
RANGE_EDGES = np.concatenate([-_HALF_DECADES[::-1], _HALF_DECADES])
SPURIOUS_BIN = 0.01  # Chance that noise alone makes any empty range bin count.
FINE_BINS = 16  # Inside the range, evenly spaced in asinh(x / (max |bound| / 1000)).
# Hashed slots of each categorical column under DP statistics: public and
# fixed, so the counts are a Gaussian mechanism over a domain no row chooses.
# Values that share a slot share its index; with 1,024 slots, 20 frequent
# values of a column all get slots of their own with probability 0.83. (A
# config field, config.features.hash_buckets, would set it per run.)
HASH_BUCKETS = 1024


class HashedSlots(tuple):
  """A DP vocabulary: the hashed slots (ints, sorted) of `buckets` whose noisy count cleared the threshold.

  A tuple, so that it stands where a vocabulary of values does; the
  consumers that look values up (`category_lookup`, `category_index`) hash
  the value first.
  """

  buckets: int

  def __new__(cls, slots, buckets: int):
    value = super().__new__(cls, sorted(int(s) for s in slots))
    value.buckets = int(buckets)
    return value

  def __reduce__(self):
    return HashedSlots, (tuple(self), self.buckets)


@dataclasses.dataclass(frozen=True)
class StatisticsNoise:
  """DP statistics: the noise on every summed count, the vocabulary's threshold, the seed.

  From `accounting.FeatureStatisticsDp`; the seed is the run's noise seed,
  so a resumed run computes the same statistics.
  """

  stddev: float
  vocabulary_threshold: float
  seed: int


@dataclasses.dataclass(frozen=True)
class FeatureSpace:
  """What preprocessing needs to know of every feature.

  Attributes:
    schema: The table's schema.
    mean: Numeric column -> mean over all institutions' training rows.
    variance: Numeric column -> population variance over the same rows.
    vocabulary: Categorical column -> known values, sorted; under DP
      statistics, its `HashedSlots`.
    lower: Numeric column -> the value below which inputs are clipped
      (None: not clipped); see the module docstring.
    upper: Numeric column -> the value above which inputs are clipped.
  """

  schema: schema_lib.Schema
  mean: dict[str, float]
  variance: dict[str, float]
  vocabulary: dict[str, tuple[str, ...]]
  lower: dict[str, Optional[float]] = dataclasses.field(default_factory=dict)
  upper: dict[str, Optional[float]] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict:
    value = {
        'mean': self.mean,
        'variance': self.variance,
        'vocabulary': {k: list(v) for k, v in self.vocabulary.items()},
        'lower': self.lower,
        'upper': self.upper,
    }
    hashed = {k: v.buckets for k, v in self.vocabulary.items() if isinstance(v, HashedSlots)}
    if hashed:  # Column -> its slots; absent: vocabularies of values (exact statistics).
      value['hash_buckets'] = hashed
    return value

  @classmethod
  def from_dict(cls, value: dict, schema: schema_lib.Schema) -> 'FeatureSpace':
    hashed = value.get('hash_buckets', {})
    return cls(
        schema=schema,
        mean=dict(value['mean']),
        variance=dict(value['variance']),
        vocabulary={k: HashedSlots(v, hashed[k]) if k in hashed else tuple(v)
                    for k, v in value['vocabulary'].items()},
        lower=dict(value.get('lower', {})),  # Exports before clipping have none.
        upper=dict(value.get('upper', {})),
    )


def hashed(values, buckets: int) -> np.ndarray:
  """Each string's slot of `buckets`: the hash the model computes (`tf.keras.layers.Hashing`)."""
  values = np.asarray(values, dtype=object).astype(str)
  if not values.size:
    return np.zeros(0, np.int64)
  return tf.strings.to_hash_bucket_fast(tf.constant(values, tf.string), buckets).numpy()


def category_index(vocabulary: tuple, values) -> np.ndarray:
  """Each value's index as the model looks it up: 1 + its position in `vocabulary`, 0 when unknown."""
  keys = hashed(values, vocabulary.buckets) if isinstance(vocabulary, HashedSlots) else np.asarray(values, object)
  index = {v: k + 1 for k, v in enumerate(vocabulary)}
  return np.array([index.get(k, 0) for k in keys.tolist()], np.int64)


class HashedLookup(tf.keras.layers.Layer):
  """value -> 1 + the position of its hashed slot in `HashedSlots`, 0 when the slot is not in them."""

  def __init__(self, slots: HashedSlots, **kwargs):
    super().__init__(**kwargs)
    self.hashing = tf.keras.layers.Hashing(slots.buckets)  # No salt: tf.strings.to_hash_bucket_fast.
    self.lookup = tf.keras.layers.IntegerLookup(vocabulary=np.array(slots, np.int64), num_oov_indices=1)

  def call(self, values):
    return self.lookup(self.hashing(values))


class Standardise(tf.keras.layers.Layer):
  """Numeric columns -> [rows, columns]: each clipped to its range, then standardised.

  One layer for all columns, not a `Normalization` layer each: Keras spends
  about 10 ms building each layer, and every model build (TFF makes several
  per computation, a node per request kind) paid it per column. The values
  are bit for bit `Normalization`'s, `(x - mean) / max(sqrt(variance), ε)`
  in float32, after the same clip; a column without a range is not clipped
  (±inf bounds), one with a single bound is clipped at ±`FLOAT32_MAX` on the
  other side, as before.
  """

  def __init__(self, *, lower, upper, mean, variance, **kwargs):
    super().__init__(**kwargs)
    self.lower, self.upper, self.mean, self.variance = (
        np.asarray(v, np.float32) for v in (lower, upper, mean, variance))

  @classmethod
  def for_space(cls, space: 'FeatureSpace', **kwargs) -> 'Standardise':
    """The layer for `space`'s numeric columns, in the schema's order."""
    columns = space.schema.numeric

    def bound(column: str, bounds: dict, sign: float) -> float:
      if space.lower.get(column) is None and space.upper.get(column) is None:
        return sign * np.inf  # No range: not clipped.
      value = bounds.get(column)
      return sign * schema_lib.FLOAT32_MAX if value is None else value

    return cls(lower=[bound(c, space.lower, -1.0) for c in columns],
               upper=[bound(c, space.upper, 1.0) for c in columns],
               mean=[space.mean[c] for c in columns], variance=[space.variance[c] for c in columns], **kwargs)

  def get_config(self) -> dict:  # Keras clones a model (a personalized copy) from its layers' configs.
    return {**super().get_config(), 'lower': self.lower.tolist(), 'upper': self.upper.tolist(),
            'mean': self.mean.tolist(), 'variance': self.variance.tolist()}

  def call(self, values):
    if not isinstance(values, (list, tuple)):  # One column: Keras calls a clone with it unwrapped.
      values = [values]
    stacked = tf.stack([tf.cast(v, tf.float32) for v in values], axis=-1)
    clipped = tf.clip_by_value(stacked, self.lower, self.upper)
    return (clipped - self.mean) / tf.maximum(tf.sqrt(self.variance), tf.keras.backend.epsilon())


def category_lookup(vocabulary: tuple, name: str) -> tf.keras.layers.Layer:
  """A layer giving each value its index in `vocabulary`, as `category_index` does (0: out of vocabulary)."""
  if isinstance(vocabulary, HashedSlots):
    return HashedLookup(vocabulary, name=name)
  return tf.keras.layers.StringLookup(vocabulary=list(vocabulary), num_oov_indices=1, name=name)


def _candidate_values(
    frame: pd.DataFrame, column: str, min_count: int
) -> set[str]:
  counts = frame[column].value_counts()
  return set(counts[counts >= min_count].index)


def local_histograms(frame: pd.DataFrame, schema: schema_lib.Schema,
                     edges: np.ndarray = HISTOGRAM_EDGES) -> np.ndarray:
  """Counts of one institution's numeric values in the bins `edges` delimit: [columns, bins]."""
  bins = len(edges) + 1
  return np.stack([
      np.bincount(np.searchsorted(edges, frame[c].to_numpy(np.float64), side='right'),
                  minlength=bins).astype(np.float64)
      for c in schema.numeric]) if schema.numeric else np.zeros((0, bins))


def clip_range(counts: np.ndarray) -> tuple[Optional[float], Optional[float]]:
  """(lower, upper) clip of one column from its federated histogram; None: unbounded.

  Drops max(MIN_TRIMMED, TRIM_FRACTION * rows) values at each end: each
  bound is the outer edge of the bin holding the next value in.
  """
  rows = int(counts.sum())
  trimmed = max(MIN_TRIMMED, math.ceil(TRIM_FRACTION * rows))
  if rows - 1 - trimmed <= trimmed:
    return None, None  # Too few rows to tell an extreme from the rest.
  cumulative = np.cumsum(counts)
  low_bin, high_bin = np.searchsorted(cumulative, [trimmed, rows - 1 - trimmed], side='right')
  edges = HISTOGRAM_EDGES
  lower = float(edges[low_bin - 1]) if low_bin > 0 else None
  upper = float(edges[high_bin]) if high_bin < len(edges) else None
  return lower, upper


def local_statistics(
    frame: pd.DataFrame,
    schema: schema_lib.Schema,
    candidates: dict[str, list[str]],
    *,
    lower: Optional[np.ndarray] = None,
    upper: Optional[np.ndarray] = None,
) -> collections.OrderedDict:
  """One institution's summary of its rows (numeric values clipped): the only thing it sends."""
  numeric = frame[list(schema.numeric)].to_numpy(np.float64)
  if lower is not None:
    numeric = np.clip(numeric, lower, upper)
  return collections.OrderedDict(
      count=np.full(len(schema.numeric), len(frame), np.float64),
      sum=numeric.sum(axis=0),
      sum_of_squares=np.square(numeric).sum(axis=0),
      category_counts=category_counts(frame, schema, candidates),
  )


def category_counts(frame: pd.DataFrame, schema: schema_lib.Schema,
                    candidates: dict[str, list[str]]) -> np.ndarray:
  """How often each candidate value occurs, column after column."""
  counts = [frame[c].value_counts().reindex(candidates[c], fill_value=0).to_numpy()
            for c in schema.categorical]
  return np.concatenate(counts).astype(np.float64) if counts else np.zeros(0, np.float64)


def bucket_counts(frame: pd.DataFrame, schema: schema_lib.Schema, buckets: int) -> np.ndarray:
  """How many rows fall in each hashed slot, column after column: [categorical * buckets].

  The DP statistics' category counts. A row adds 1 to one slot of each
  column, as it added 1 to one value's count before slots: the L2
  sensitivity `accounting.FeatureStatisticsDp` accounts for (√columns per
  release, one row per unit) is unchanged, and the slots are public, so
  the counts are a Gaussian mechanism whose threshold is post-processing.
  """
  counts = [np.bincount(hashed(frame[c].to_numpy(), buckets), minlength=buckets)
            for c in schema.categorical]
  return np.concatenate(counts).astype(np.float64) if counts else np.zeros(0, np.float64)


def build_federated_sum(
    client_statistics_type: tff.types.StructType,
) -> tff.Computation:
  """`({statistics}@CLIENTS -> statistics@SERVER)`: sums client summaries."""

  @tff.federated_computation(
      tff.FederatedType(client_statistics_type, tff.CLIENTS)
  )
  def federated_sum(statistics):
    return tff.federated_sum(statistics)

  return federated_sum


class Request(enum.Enum):
  """What the statistics ask of each institution's training rows: nothing else reads them.

  Named, with plain parameters, so that an institution on its own machine
  answers with its own code (`answer`); the answers are summed (except
  CANDIDATES, whose union is taken).
  """

  CANDIDATES = 'candidates'  # {column: values it holds >= min_count times}; never under DP.
  HISTOGRAMS = 'histograms'  # counts [columns, bins] on HISTOGRAM_EDGES, or RANGE_EDGES under DP.
  STATISTICS = 'statistics'  # count, sum, sum of squares (clipped to the ranges), category counts.
  FINE_COUNTS = 'fine_counts'  # Under DP: FINE_BINS counts inside each range, hashed slots' counts.


# (request, parameters) -> one answer per institution, in the federation's order.
Ask = Callable[[Request, dict], list]


def answer(frame: pd.DataFrame, schema: schema_lib.Schema, request: Request, params: dict, *,
           noise_key: Optional[tuple[int, int]] = None) -> collections.OrderedDict:
  """One institution's answer to `request` about its training rows `frame`.

  Under DP (`params['noise_share']`), each unit counts once (its first row)
  and the institution adds its share N(0, noise_share²) to every count,
  drawn from `noise_key` = (its noise seed, its index) and the release.
  """
  dp = params.get('noise_share') is not None
  if dp:
    frame = _one_row_per_unit(frame)
  if request is Request.CANDIDATES:
    if dp:  # Raw values, which no noise can cover: DP statistics count hashed slots instead.
      raise ValueError('under DP statistics no institution proposes its category values.')
    return collections.OrderedDict((c, sorted(_candidate_values(frame, c, params['min_count'])))
                                   for c in schema.categorical)
  if request is Request.HISTOGRAMS:
    value = collections.OrderedDict(counts=local_histograms(
        frame, schema, RANGE_EDGES if dp else HISTOGRAM_EDGES))
  elif request is Request.STATISTICS:
    value = local_statistics(frame, schema, params['candidates'],
                             lower=_bounds(params['lower'], -np.inf), upper=_bounds(params['upper'], np.inf))
  elif request is Request.FINE_COUNTS:
    value = collections.OrderedDict(
        fine=_fine_counts(frame, schema, params['ranges']),
        category_counts=bucket_counts(frame, schema, params['hash_buckets']))
  else:
    raise ValueError(f'no answer to {request!r}.')
  return noised(value, params['noise_share'], noise_key, params['release']) if dp else value


def _bounds(values: list, unbounded: float) -> np.ndarray:
  return np.array([unbounded if v is None else v for v in values], np.float64)


def noised(value: collections.OrderedDict, share: float, noise_key: Optional[tuple[int, int]],
            release: int) -> collections.OrderedDict:
  if noise_key is None:
    raise ValueError('DP statistics need a noise_key (the noise seed and the institution index).')
  rng = np.random.default_rng([noise_key[0], release, noise_key[1]])
  return collections.OrderedDict((k, v + rng.normal(0.0, share, v.shape)) for k, v in value.items())


def _fine_counts(frame: pd.DataFrame, schema: schema_lib.Schema, ranges: list) -> np.ndarray:
  counts = []
  for column, (lower, upper, scale) in zip(schema.numeric, ranges):
    edges, _ = fine_edges(lower, upper, scale)
    values = np.clip(frame[column].to_numpy(np.float64), lower, upper)
    bins = np.clip(np.searchsorted(edges, values, side='right') - 1, 0, FINE_BINS - 1)
    counts.append(np.bincount(bins, minlength=FINE_BINS).astype(np.float64))
  return np.stack(counts) if counts else np.zeros((0, FINE_BINS))


def local_ask(data: federated_data.FederatedData, noise_seed: Optional[int] = None) -> Ask:
  """`Ask` answered in this process by each institution of `data` (the simulation)."""
  def ask(request: Request, params: dict) -> list:
    return [answer(i.train, data.schema, request, params, noise_key=(noise_seed, index))
            for index, i in enumerate(data.institutions)]
  return ask


def compute_feature_space(
    data: federated_data.FederatedData, *, min_category_count: int,
    noise: Optional[StatisticsNoise] = None,
) -> FeatureSpace:
  """Federated means, variances and vocabularies of `data`'s training rows; DP with `noise`."""
  return federated_feature_space(
      data.schema, local_ask(data, noise.seed if noise else None), institutions=len(data.institutions),
      min_category_count=min_category_count, noise=noise)


def federated_feature_space(
    schema: schema_lib.Schema, ask: Ask, *, institutions: int, min_category_count: int,
    noise: Optional[StatisticsNoise] = None,
) -> FeatureSpace:
  """The feature space from the answers of `institutions` institutions to `ask`; DP with `noise`.

  Under DP the institutions add the noise (`answer`): `noise.seed` is not used here.
  """
  if min_category_count < 1:
    raise ValueError(f'min_category_count must be >= 1, got {min_category_count}.')
  if noise is not None:
    share = noise.stddev / math.sqrt(institutions)
    return _dp_feature_space(schema, ask, share, min_category_count=min_category_count, noise=noise)
  proposals = ask(Request.CANDIDATES, {'min_count': min_category_count})
  candidates = {c: sorted(set().union(*(p[c] for p in proposals))) for c in schema.categorical}
  lower, upper = _federated_clip_ranges(schema, ask)
  total = _federated_total(ask(Request.STATISTICS, {'candidates': candidates, 'lower': lower,
                                                    'upper': upper}))
  count = total['count']
  mean = total['sum'] / count
  variance = np.maximum(total['sum_of_squares'] / count - np.square(mean), 0.0)
  vocabulary = _vocabularies(schema, candidates, total['category_counts'], min_category_count)
  for column, values in vocabulary.items():
    if not values:
      raise schema_lib.DataError(
          f'column {column!r}: no value is seen {min_category_count} times at'
          ' any institution; lower {min_category_count}.', blames=('min_category_count',))
  return _space(schema, mean.tolist(), variance.tolist(), vocabulary, lower, upper)


def _space(schema, mean, variance, vocabulary, lower, upper) -> FeatureSpace:
  return FeatureSpace(
      schema=schema,
      mean=dict(zip(schema.numeric, mean)),
      variance=dict(zip(schema.numeric, variance)),
      vocabulary=vocabulary,
      lower=dict(zip(schema.numeric, lower)),
      upper=dict(zip(schema.numeric, upper)),
  )


def _vocabularies(schema, candidates: dict, counts: np.ndarray, threshold: float) -> dict:
  """Each column's candidates whose (summed, perhaps noisy) count reaches `threshold`."""
  vocabulary, offset = {}, 0
  for column in schema.categorical:
    size = len(candidates[column])
    column_counts = counts[offset:offset + size]
    offset += size
    vocabulary[column] = tuple(
        v for v, n in zip(candidates[column], column_counts) if n >= threshold)
  return vocabulary


def _one_row_per_unit(frame: pd.DataFrame) -> pd.DataFrame:
  """A unit's first row: DP statistics bound each unit's contribution to one count a column."""
  if schema_lib.UNIT_COLUMN in frame:
    return frame.drop_duplicates(schema_lib.UNIT_COLUMN, keep='first')
  return frame


def dp_range(counts: np.ndarray, threshold: float) -> tuple[float, float, float]:
  """(lower, upper, scale) of one column from the range bins that clear `threshold`.

  The bounds are those bins' outer edges; the scale, the smallest magnitude
  at which one of them starts (zero's bin aside), is where the column's
  values stop being "near zero". When no bin clears, the fullest bin alone
  (a choice from noisy counts only).
  """
  kept = np.flatnonzero(counts >= threshold)
  if not kept.size:
    kept = np.array([int(np.argmax(counts))])
  edges = RANGE_EDGES
  lower = float(edges[max(kept.min() - 1, 0)])
  upper = max(float(edges[min(kept.max(), len(edges) - 1)]), lower + 1.0)
  inner = np.abs(np.concatenate([edges[np.clip(kept - 1, 0, len(edges) - 1)],
                                 edges[np.clip(kept, 0, len(edges) - 1)]]))
  inner = inner[inner > _HALF_DECADES[0]]
  floor = max(abs(lower), abs(upper)) * 1e-6
  return lower, upper, max(float(inner.min()) if inner.size else floor, floor)


def fine_edges(lower: float, upper: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
  """(edges, midpoints) of FINE_BINS bins on [lower, upper], even in asinh(x / scale).

  Evenly spaced below `scale` and logarithmic above it: one rule for ratios,
  ages and heavy-tailed incomes.
  """
  t = np.linspace(np.arcsinh(lower / scale), np.arcsinh(upper / scale), FINE_BINS + 1)
  return scale * np.sinh(t), scale * np.sinh((t[:-1] + t[1:]) / 2)


def moments(counts: np.ndarray, midpoints: np.ndarray, lower: float, upper: float) -> tuple[float, float]:
  """Mean and variance from noisy bin counts (negative counts read as 0).

  With no count left: the range's middle and a quarter of its width. The
  variance is at least (width / (4 * FINE_BINS))², so one full bin still
  scales its column sensibly.
  """
  weights = np.maximum(counts, 0.0)
  width = upper - lower
  if weights.sum() < 1.0:
    return (lower + upper) / 2, (width / 4) ** 2
  mean = float(weights @ midpoints / weights.sum())
  variance = float(weights @ np.square(midpoints - mean) / weights.sum())
  return mean, max(variance, (width / (4 * FINE_BINS)) ** 2)


# Under DP each request is one release, numbered (its noise is drawn from the
# number); the alert threshold's passes follow (quantiles.FIRST_RELEASE).
# Release 0 was the candidate values, sent without noise; no longer asked.
DP_RELEASES = {Request.HISTOGRAMS: 1, Request.FINE_COUNTS: 2}


def _dp_params(request: Request, share: float, **params) -> dict:
  """`request`'s parameters under DP: its release number and each institution's noise share."""
  return {**params, 'noise_share': share, 'release': DP_RELEASES[request]}


def _dp_ranges(schema, ask: Ask, share: float, noise: StatisticsNoise) -> list[tuple[float, float, float]]:
  """Release 1: noisy half-decade histograms of every numeric column -> (lower, upper, scale)s."""
  if not schema.numeric:
    return []
  total = _federated_total(ask(Request.HISTOGRAMS, _dp_params(Request.HISTOGRAMS, share)))['counts']
  tail = SPURIOUS_BIN / total.size
  threshold = noise.stddev * statistics.NormalDist().inv_cdf(1.0 - tail)
  return [dp_range(counts, threshold) for counts in total]


def _dp_feature_space(schema, ask: Ask, share: float, *, min_category_count: int,
                      noise: StatisticsNoise) -> FeatureSpace:
  """Release 2: fine histograms inside the ranges and the hashed slots' counts, noised.

  Each of the K institutions adds N(0, σ²/K) to its counts, so their sum
  carries N(0, σ²). No value is proposed: the slots are `HASH_BUCKETS`
  public ones per column, and a slot enters the vocabulary when its noisy
  count clears the threshold.
  """
  ranges = _dp_ranges(schema, ask, share, noise)
  lower, upper = [r[0] for r in ranges], [r[1] for r in ranges]
  total = _federated_total(ask(Request.FINE_COUNTS, _dp_params(
      Request.FINE_COUNTS, share, ranges=ranges, hash_buckets=HASH_BUCKETS)))
  stats = [moments(counts, fine_edges(*r)[1], lo, hi)
           for counts, r, lo, hi in zip(total['fine'], ranges, lower, upper)]
  slots = {c: list(range(HASH_BUCKETS)) for c in schema.categorical}
  vocabulary = _vocabularies(schema, slots, total['category_counts'],
                             max(noise.vocabulary_threshold, min_category_count))
  vocabulary = {c: HashedSlots(v, HASH_BUCKETS) for c, v in vocabulary.items()}
  return _space(schema, [m for m, _ in stats], [v for _, v in stats], vocabulary, lower, upper)


def _federated_total(client_values: list) -> collections.OrderedDict:
  """The sum over institutions of their summaries (a TFF `federated_sum`)."""
  value_type = tff.types.to_type(collections.OrderedDict(
      (k, tff.TensorType(np.float64, np.shape(v))) for k, v in client_values[0].items()))
  return build_federated_sum(value_type)(client_values)


def _federated_clip_ranges(schema, ask: Ask) -> tuple[list, list]:
  """Per numeric column, (lowers, uppers) from the summed histograms (see `clip_range`)."""
  if not schema.numeric:
    return [], []
  total = _federated_total(ask(Request.HISTOGRAMS, {}))['counts']
  ranges = [clip_range(counts) for counts in total]
  return [lo for lo, _ in ranges], [hi for _, hi in ranges]


def keras_inputs(schema: schema_lib.Schema) -> dict[str, tf.keras.Input]:
  """One scalar input per raw feature: float32 numeric, string categorical."""
  inputs = {c: tf.keras.Input(shape=(), dtype=tf.float32, name=c) for c in schema.numeric}
  inputs.update(
      {c: tf.keras.Input(shape=(), dtype=tf.string, name=c) for c in schema.categorical}
  )
  return inputs


def encode(
    inputs: dict[str, tf.Tensor],
    space: FeatureSpace,
    *,
    embedding_dim: int,
) -> tf.Tensor:
  """Raw features -> one dense vector per row.

  Numeric columns are standardised with the federated mean and variance.
  Categorical columns are looked up in the federated vocabulary (unseen values
  share one out-of-vocabulary index; under DP statistics a value's hashed
  slot is looked up, `category_lookup`) and embedded in `embedding_dim`
  dimensions, or one-hot encoded when `embedding_dim` is 0.

  Args:
    inputs: The tensors of `keras_inputs(space.schema)`.
    space: Statistics of the features.
    embedding_dim: Size of categorical embeddings; 0 for one-hot.

  Returns:
    A float32 tensor of shape [batch, encoded width].
  """
  parts = [Standardise.for_space(space, name='standardise')([inputs[c] for c in space.schema.numeric])] \
      if space.schema.numeric else []
  for column in space.schema.categorical:
    vocabulary = list(space.vocabulary[column])
    if not vocabulary:  # No value cleared the DP threshold: the column carries nothing.
      continue
    ids = category_lookup(space.vocabulary[column], f'lookup_{column}')(inputs[column])
    if embedding_dim:
      embedded = tf.keras.layers.Embedding(
          len(vocabulary) + 1, embedding_dim, name=f'embed_{column}'
      )(ids)
    else:
      # Ids as [rows, 1]: Keras reads a rank-1 input whose last size is 1 (a
      # batch of one row, as DP-SGD's per-row gradients use) as one sample.
      embedded = tf.keras.layers.CategoryEncoding(
          len(vocabulary) + 1, output_mode='one_hot', name=f'one_hot_{column}'
      )(tf.expand_dims(ids, -1))
    parts.append(embedded)
  if len(parts) == 1:  # Keras's Concatenate refuses a single input (numeric columns only).
    return tf.keras.layers.Identity(name='encoded_features')(parts[0])
  return tf.keras.layers.Concatenate(name='encoded_features')(parts)

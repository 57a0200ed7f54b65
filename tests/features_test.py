import dataclasses
import json

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_federated as tff

from tests import helpers
from tffaml import features
from tffaml.data import csv_dir
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib


class FeatureStatisticsTest(tf.test.TestCase):

  def test_federated_sum_type_signature(self):
    stats_type = tff.types.to_type({'count': tff.TensorType(np.float64, [2])})
    computation = features.build_federated_sum(stats_type)
    self.assertEqual(
        str(computation.type_signature),
        '({<count=float64[2]>}@CLIENTS -> <count=float64[2]>@SERVER)')

  def test_matches_pooled_statistics_without_pooling(self):
    data_dir, _ = helpers.write_federation(self.create_tempdir().full_path)
    data = csv_dir.load(data_dir, schema_lib.Schema.from_dict(helpers.SCHEMA))
    space = features.compute_feature_space(data, min_category_count=1)
    pooled = data.pooled('train')
    for column in ('amount', 'rate'):
      clipped = pooled[column].clip(space.lower[column], space.upper[column])
      self.assertAllClose(space.mean[column], clipped.mean())
      self.assertAllClose(space.variance[column], clipped.var(ddof=0))
      # Only the MIN_TRIMMED most extreme values at each end can be clipped.
      self.assertLessEqual((pooled[column] > space.upper[column]).sum(), features.MIN_TRIMMED)
      self.assertLessEqual((pooled[column] < space.lower[column]).sum(), features.MIN_TRIMMED)
    self.assertEqual(space.vocabulary['grade'], ('A', 'B', 'C'))

  def test_one_participants_extreme_value_does_not_set_the_scale(self):
    data_dir, _ = helpers.write_federation(self.create_tempdir().full_path)
    data = csv_dir.load(data_dir, schema_lib.Schema.from_dict(helpers.SCHEMA))
    clean = features.compute_feature_space(data, min_category_count=1)
    data.institutions[1].train.loc[5, 'amount'] = 1e30  # Valid float32, absurd.
    poisoned = features.compute_feature_space(data, min_category_count=1)
    self.assertLess(poisoned.upper['amount'], 1e5)
    self.assertAllClose(poisoned.mean['amount'], clean.mean['amount'], rtol=0.02)
    self.assertAllClose(poisoned.variance['amount'], clean.variance['amount'], rtol=0.05)

  def test_clip_range_by_hand(self):
    edges = features.HISTOGRAM_EDGES
    counts = np.zeros(len(edges) + 1)
    bin_of = lambda x: int(np.searchsorted(edges, x, side='right'))
    counts[bin_of(0.0)] += 10  # Ten zeros, ten ones, one 1e20.
    counts[bin_of(1.0)] += 10
    counts[bin_of(1e20)] += 1
    lower, upper = features.clip_range(counts)
    # 3 trimmed at each end: the 4th smallest is 0, the 4th largest is 1.
    self.assertEqual(lower, -1e-30)  # The zero bin's lower edge.
    self.assertAllClose(upper, 10 ** (1 / 8))  # The edge above the bin of 1.
    self.assertEqual(features.clip_range(counts[:] * 0 + (np.arange(len(counts)) == bin_of(1.0)) * 6),
                     (None, None))  # 6 rows: too few to trim 3 at each end.

  def test_rare_values_stay_out_of_vocabulary(self):
    data_dir, _ = helpers.write_federation(self.create_tempdir().full_path)
    data = csv_dir.load(data_dir, schema_lib.Schema.from_dict(helpers.SCHEMA))
    data.institutions[0].train.loc[0, 'grade'] = 'RARE'
    space = features.compute_feature_space(data, min_category_count=2)
    self.assertNotIn('RARE', space.vocabulary['grade'])


class RequestTest(tf.test.TestCase):

  def test_every_request_is_answered_from_the_rows(self):
    frame = pd.DataFrame({'amount': [1.0, 20.0, 300.0], 'rate': [5.0, 6.0, 7.0],
                          'grade': ['A', 'A', 'B'], 'default': [0, 1, 0]})
    schema = schema_lib.Schema.from_dict(helpers.SCHEMA)
    params = {
        features.Request.CANDIDATES: {'min_count': 2},
        features.Request.HISTOGRAMS: {},
        features.Request.STATISTICS: {'candidates': {'grade': ['A', 'B']}, 'lower': [None, None],
                                      'upper': [100.0, None]},
        features.Request.FINE_COUNTS: {'ranges': [(0.0, 1000.0, 1.0), (0.0, 10.0, 1.0)], 'hash_buckets': 8},
    }
    answers = {r: features.answer(frame, schema, r, params[r]) for r in features.Request}
    self.assertEqual(answers[features.Request.CANDIDATES], {'grade': ['A']})
    self.assertEqual(answers[features.Request.HISTOGRAMS]['counts'].sum(), 6)  # 2 columns x 3 rows.
    statistics = answers[features.Request.STATISTICS]
    self.assertAllClose(statistics['sum'], [121.0, 18.0])  # 300 clipped to 100.
    self.assertAllClose(statistics['category_counts'], [2, 1])
    self.assertAllClose(answers[features.Request.FINE_COUNTS]['fine'].sum(axis=1), [3, 3])
    slots = answers[features.Request.FINE_COUNTS]['category_counts']  # 8 hashed slots of 'grade'.
    self.assertEqual((slots.shape, slots[features.hashed(['A'], 8)[0]]), ((8,), 2.0))

  def test_dp_answers_carry_the_institutions_noise_share(self):
    frame = pd.DataFrame({'amount': [1.0, 2.0], 'rate': [5.0, 6.0], 'grade': ['A', 'B'],
                          'default': [0, 1]})
    schema = schema_lib.Schema.from_dict(helpers.SCHEMA)
    exact = features.answer(frame, schema, features.Request.HISTOGRAMS, {})
    noisy = [features.answer(frame, schema, features.Request.HISTOGRAMS,
                             {'noise_share': 1.0, 'release': 1}, noise_key=(7, index))['counts']
             for index in (0, 0, 1)]
    self.assertAllEqual(noisy[0], noisy[1])  # Same seed, institution and release.
    self.assertNotAllClose(noisy[0], noisy[2])
    self.assertAllClose(np.round(noisy[0]).sum(), exact['counts'].sum(), atol=60)
    with self.assertRaisesRegex(ValueError, 'noise_key'):
      features.answer(frame, schema, features.Request.HISTOGRAMS, {'noise_share': 1.0, 'release': 1})


def _federation(frames):
  schema = schema_lib.Schema(label='y', positive='1', numeric=('income',), categorical=('region',))
  return federated_data.FederatedData(schema=schema, institutions=tuple(
      federated_data.Institution(name=f'bank_{i}', train=f, test=f)
      for i, f in enumerate(frames)))


def _slots(*values):
  """The DP vocabulary of `values`: their hashed slots."""
  return features.HashedSlots(set(features.hashed(values, features.HASH_BUCKETS).tolist()), features.HASH_BUCKETS)


def _frame(rng, rows: int, regions):
  return pd.DataFrame({'income': rng.lognormal(10.0, 0.5, rows), 'region': rng.choice(regions, rows),
                       schema_lib.LABEL_COLUMN: rng.integers(0, 2, rows)})


class DpFeatureStatisticsTest(tf.test.TestCase):

  def test_range_from_the_bins_that_clear_the_threshold(self):
    edges = features.RANGE_EDGES
    counts = np.zeros(len(edges) + 1)
    bin_of = lambda x: int(np.searchsorted(edges, x, side='right'))
    counts[bin_of(2.0)], counts[bin_of(50.0)], counts[bin_of(1e9)] = 100, 80, 20
    # 2.0 lies in [10^0, 10^0.5), 50 in [10^1.5, 10^2); the lone 1e9 bin stays under 30.
    # The scale: the smallest magnitude at which a kept bin starts.
    self.assertAllClose(features.dp_range(counts, threshold=30), (1.0, 100.0, 1.0))
    # Nothing clears: the fullest bin alone.
    self.assertAllClose(features.dp_range(counts, threshold=1000), (1.0, 10 ** 0.5, 1.0))
    counts[bin_of(0.0)] = 100  # With zeros kept, the scale is still where the values start.
    self.assertAllClose(features.dp_range(counts, threshold=30), (-1e-6, 100.0, 1.0))

  def test_fine_bins_span_the_range_logarithmically_over_heavy_tails(self):
    edges, middles = features.fine_edges(1e5, 1e6, 1e3)
    self.assertLen(edges, features.FINE_BINS + 1)
    self.assertAllClose([edges[0], edges[-1]], [1e5, 1e6])
    self.assertTrue(np.all(np.diff(edges) > 0) and np.all((middles > edges[:-1]) & (middles < edges[1:])))
    ratios = edges[1:] / edges[:-1]  # Far above the scale asinh is a log: equal ratios.
    self.assertAllClose(ratios, np.full_like(ratios, 10 ** (1 / features.FINE_BINS)), rtol=1e-3)
    edges, _ = features.fine_edges(0.0, 1e-3, 1.0)  # Far below it, linear: equal widths.
    self.assertAllClose(np.diff(edges), np.full(features.FINE_BINS, 1e-3 / features.FINE_BINS),
                        rtol=1e-3)

  def test_moments_by_hand(self):
    middles = np.array([1.0, 2.0, 3.0, 4.0])
    # Weights 0, 3, 1, 0 (the -5 reads as 0): mean 2.25, variance (3 * 0.0625 + 0.5625) / 4.
    mean, variance = features.moments(np.array([-5.0, 3.0, 1.0, 0.0]), middles, 0.5, 4.5)
    self.assertAllClose([mean, variance], [2.25, 0.1875])
    # Nothing left: the middle of the range and a quarter of its width.
    self.assertAllClose(features.moments(np.array([-1.0, 0.5, 0.0, 0.0]), middles, 0.5, 4.5),
                        (2.5, 1.0))

  def test_noisy_statistics_track_the_pooled_ones(self):
    rng = np.random.default_rng(0)
    data = _federation([_frame(rng, 6000, ['north', 'south']) for _ in range(3)])
    noise = features.StatisticsNoise(stddev=30.0, vocabulary_threshold=200.0, seed=7)
    space = features.compute_feature_space(data, min_category_count=5, noise=noise)
    income = data.pooled('train')['income'].clip(space.lower['income'], space.upper['income'])
    self.assertAllClose(space.mean['income'], income.mean(), rtol=0.05)
    self.assertAllClose(np.sqrt(space.variance['income']), income.std(), rtol=0.15)
    self.assertLessEqual(space.lower['income'], np.quantile(income, 0.01))
    self.assertGreaterEqual(space.upper['income'], np.quantile(income, 0.99))
    self.assertEqual(space.vocabulary['region'], _slots('north', 'south'))
    again = features.compute_feature_space(data, min_category_count=5, noise=noise)
    self.assertEqual(again, space)  # The seed fixes the noise: a resumed run agrees.
    other = features.compute_feature_space(
        data, min_category_count=5, noise=dataclasses.replace(noise, seed=8))
    self.assertNotEqual(other.mean['income'], space.mean['income'])

  def test_a_value_few_units_hold_stays_out_however_many_rows(self):
    rng = np.random.default_rng(1)
    frames = [_frame(rng, 3000, ['north', 'south']) for _ in range(2)]
    frames[0][schema_lib.UNIT_COLUMN] = np.arange(3000)
    frames[0].loc[:999, 'region'] = 'rare'  # 1000 rows, but all of one unit:
    frames[0].loc[:999, schema_lib.UNIT_COLUMN] = 0
    noise = features.StatisticsNoise(stddev=1.0, vocabulary_threshold=50.0, seed=0)
    space = features.compute_feature_space(_federation(frames), min_category_count=1, noise=noise)
    self.assertEqual(space.vocabulary['region'], _slots('north', 'south'))
    exact = features.compute_feature_space(_federation(frames), min_category_count=1)
    self.assertIn('rare', exact.vocabulary['region'])  # Without DP rows count, not units.

  def test_a_column_with_no_published_value_is_left_out_of_the_model(self):
    rng = np.random.default_rng(2)
    data = _federation([_frame(rng, 200, ['north', 'south']) for _ in range(2)])
    noise = features.StatisticsNoise(stddev=5.0, vocabulary_threshold=1e6, seed=0)
    space = features.compute_feature_space(data, min_category_count=1, noise=noise)
    self.assertEqual(space.vocabulary['region'], ())
    encoded = features.encode(features.keras_inputs(data.schema), space, embedding_dim=0)
    self.assertEqual(encoded.shape[-1], 1)  # Income only.


class HashedSlotsTest(tf.test.TestCase):
  """Under DP statistics no raw category value leaves an institution (issue 34)."""

  RARE = 'Acme Widgets Ltd (employer)'

  def _federation(self):
    rng = np.random.default_rng(3)
    frames = [_frame(rng, 2000, ['north', 'south']) for _ in range(3)]
    frames[1].loc[7, 'region'] = self.RARE  # One row of one institution.
    return _federation(frames)

  def test_no_raw_value_reaches_the_coordinator_or_the_vocabulary(self):
    data, sent = self._federation(), []
    ask = features.local_ask(data, noise_seed=5)

    def recording(request, params):
      replies = ask(request, params)
      sent.append((request, params, replies))
      return replies
    noise = features.StatisticsNoise(stddev=3.0, vocabulary_threshold=30.0, seed=5)
    space = features.federated_feature_space(data.schema, recording, institutions=3, min_category_count=1,
                                             noise=noise)
    self.assertNotIn(features.Request.CANDIDATES, [r for r, _, _ in sent])
    for request, params, replies in sent:  # Only numbers: no string of any institution's rows.
      for reply in replies:
        for value in reply.values():
          self.assertEqual(np.asarray(value).dtype, np.float64, request)
      self.assertNotIn('north', repr(params))
    self.assertNotIn(self.RARE, json.dumps(space.to_dict()))
    self.assertEqual(space.vocabulary['region'], _slots('north', 'south'))
    self.assertEqual(features.FeatureSpace.from_dict(space.to_dict(), data.schema).vocabulary, space.vocabulary)
    # Asked for its values under DP, an institution refuses (a node answers with this function).
    with self.assertRaisesRegex(ValueError, 'no institution proposes its category values'):
      features.answer(data.institutions[1].train, data.schema, features.Request.CANDIDATES,
                      {'min_count': 1, 'noise_share': 1.0, 'release': 0}, noise_key=(5, 1))
    # Without DP the values are proposed as before (a k-anonymity threshold, no privacy claim).
    exact = features.compute_feature_space(data, min_category_count=1)
    self.assertEqual(exact.vocabulary['region'], tuple(sorted(['north', 'south', self.RARE])))

  def test_the_model_looks_up_a_values_slot_as_the_statistics_counted_it(self):
    data = self._federation()
    noise = features.StatisticsNoise(stddev=3.0, vocabulary_threshold=30.0, seed=5)
    space = features.compute_feature_space(data, min_category_count=1, noise=noise)
    vocabulary = space.vocabulary['region']
    values = ['north', 'south', 'never seen', self.RARE]
    expected = features.category_index(vocabulary, values)
    # Frequent values: an index each; the rare and the unseen: out of vocabulary, as their slots are.
    self.assertEqual(expected.tolist(), [1 + vocabulary.index(s) for s in features.hashed(values[:2], vocabulary.buckets)] + [0, 0])
    layer = features.category_lookup(vocabulary, 'lookup_region')
    self.assertAllEqual(layer(tf.constant(values)).numpy(), expected)
    self.assertAllEqual(features.category_lookup(('a', 'b'), 'raw')(tf.constant(['b', 'z'])).numpy(),
                        features.category_index(('a', 'b'), ['b', 'z']))


if __name__ == '__main__':
  tf.test.main()


class StandardiseTest(tf.test.TestCase):
  """The numeric columns' one layer: what a `Normalization` layer per column, after the clip, gives."""

  def test_each_column_clipped_to_its_range_then_standardised_by_hand(self):
    schema = schema_lib.Schema(label='y', positive='1', numeric=('both', 'low', 'high', 'free', 'flat'),
                               categorical=())
    space = features.FeatureSpace(
        schema=schema, mean={'both': 1.5, 'low': -2.0, 'high': 10.0, 'free': 0.25, 'flat': 3.0},
        variance={'both': 4.0, 'low': 0.25, 'high': 100.0, 'free': 1.0, 'flat': 0.0}, vocabulary={},
        lower={'both': -1.0, 'low': 0.0, 'high': None, 'free': None}, upper={'both': 2.0, 'low': None, 'high': 20.0})
    big = schema_lib.FLOAT32_MAX
    values = {c: np.array([-5.0, 1.0, 50.0, np.inf, -np.inf, np.nan], np.float32) for c in schema.numeric}
    out = features.Standardise.for_space(space)([tf.constant(values[c]) for c in schema.numeric]).numpy()
    expected = np.stack([
        (np.array([-1.0, 1.0, 2.0, 2.0, -1.0, np.nan]) - 1.5) / 2.0,  # Clipped to [-1, 2].
        (np.array([0.0, 1.0, 50.0, big, 0.0, np.nan]) + 2.0) / 0.5,  # Below only: the float32 range above.
        (np.array([-5.0, 1.0, 20.0, 20.0, -big, np.nan]) - 10.0) / 10.0,
        np.array([-5.25, 0.75, 49.75, np.inf, -np.inf, np.nan]),  # No range: not clipped.
        (values['flat'] - 3.0) / tf.keras.backend.epsilon(),  # A constant column: divided by ε, as Keras does.
    ], axis=-1).astype(np.float32)
    self.assertAllClose(out, expected, rtol=1e-6)
    self.assertAllEqual(np.isnan(out), np.isnan(expected))

  def test_bit_for_bit_the_per_column_layers_it_replaces(self):
    data_dir, _ = helpers.write_federation(self.create_tempdir().full_path)
    data = csv_dir.load(data_dir, schema_lib.Schema.from_dict(helpers.SCHEMA))
    space = features.compute_feature_space(data, min_category_count=1)
    rows = data.pooled('test')
    columns = [tf.constant(rows[c].to_numpy(np.float32)) for c in space.schema.numeric]
    per_column = [tf.keras.layers.Normalization(axis=None, mean=space.mean[c], variance=space.variance[c])(
        tf.clip_by_value(v, space.lower[c], space.upper[c])) for c, v in zip(space.schema.numeric, columns)]
    layer = features.Standardise.for_space(space)
    self.assertAllEqual(layer(columns), tf.stack(per_column, axis=-1))
    self.assertAllEqual(layer.from_config(layer.get_config())(columns), layer(columns))  # How Keras clones it.

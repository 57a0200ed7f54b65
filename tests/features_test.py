import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tests import helpers
from tffaml import features
from tffaml.data import csv_dir
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


if __name__ == '__main__':
  tf.test.main()

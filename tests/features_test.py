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
      self.assertAllClose(space.mean[column], pooled[column].mean())
      self.assertAllClose(space.variance[column], pooled[column].var(ddof=0))
    self.assertEqual(space.vocabulary['grade'], ('A', 'B', 'C'))

  def test_rare_values_stay_out_of_vocabulary(self):
    data_dir, _ = helpers.write_federation(self.create_tempdir().full_path)
    data = csv_dir.load(data_dir, schema_lib.Schema.from_dict(helpers.SCHEMA))
    data.institutions[0].train.loc[0, 'grade'] = 'RARE'
    space = features.compute_feature_space(data, min_category_count=2)
    self.assertNotIn('RARE', space.vocabulary['grade'])


if __name__ == '__main__':
  tf.test.main()

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tffaml.data import partition


class PartitionTest(tf.test.TestCase, parameterized.TestCase):

  def _assert_partition_of(self, parts, num_rows):
    rows = np.concatenate(list(parts.values()))
    self.assertAllEqual(np.sort(rows), np.arange(num_rows))

  def test_iid_sizes(self):
    parts = partition.iid(103, 10, np.random.default_rng(0))
    self._assert_partition_of(parts, 103)
    self.assertEqual(sorted({len(p) for p in parts.values()}), [10, 11])

  def test_dirichlet_is_deterministic_and_skews_labels(self):
    labels = np.repeat([0, 1], 500)
    a = partition.dirichlet_label_skew(labels, 5, 0.1, np.random.default_rng(3))
    b = partition.dirichlet_label_skew(labels, 5, 0.1, np.random.default_rng(3))
    self._assert_partition_of(a, 1000)
    for name in a:
      self.assertAllEqual(a[name], b[name])
    positive_share = [labels[p].mean() for p in a.values() if len(p)]
    self.assertGreater(max(positive_share) - min(positive_share), 0.5)

  def test_quantity_skew(self):
    parts = partition.quantity_skew(1000, 4, 0.3, np.random.default_rng(1))
    self._assert_partition_of(parts, 1000)
    sizes = sorted(len(p) for p in parts.values())
    self.assertGreater(sizes[-1], 2 * sizes[0])

  def test_by_column_merges_small_groups_within_their_group(self):
    values = ['big'] * 10 + ['s1'] * 3 + ['s2'] * 3 + ['t1'] * 2
    labels = np.array([1, 0] * 9)
    parts = partition.by_column(values, labels, min_rows=5, min_positives=2,
                                group_of={'s1': 'S', 's2': 'S', 't1': 'S'})
    self._assert_partition_of(parts, 18)
    self.assertEqual(sorted(parts), ['S (s1+s2+t1)', 'big'])

  def test_bad_count(self):
    with self.assertRaisesRegex(ValueError, r'num_institutions must be in \[1, 5\], got 6'):
      partition.iid(5, 6, np.random.default_rng(0))



class LoadingDispatchTest(tf.test.TestCase):

  def test_every_partition_method_gives_a_federation(self):
    from tffaml.data import loading  # pylint: disable=g-import-not-at-top
    for method in partition.Method:
      spec = loading.DataSpec(
          source=loading.Source.LENDING_CLUB, max_rows=3000,
          partitioning=loading.Partitioning(method=method, num_institutions=4, min_rows=400,
                                            min_positives=10))
      data = loading.load(spec, seed=0)
      self.assertGreaterEqual(len(data.institutions), 2, method)
      self.assertEqual(sum(s['train_rows'] + s['test_rows'] for s in data.summary()), 3000, method)

  def test_every_source_loads_or_is_refused_by_its_config_key(self):
    from configs import loan_risk  # pylint: disable=g-import-not-at-top
    from tffaml import errors  # pylint: disable=g-import-not-at-top
    from tffaml.data import loading  # pylint: disable=g-import-not-at-top
    from tffaml.config import data as config_data
    refusals = {
        loading.Source.LENDING_CLUB: ('column', 'nope', "config.data.column='nope' is not a column"),
        loading.Source.CSV_DIR: ('dir', '', 'needs config.data.dir and config.data.schema_file'),
        loading.Source.AMLWORLD: ('path', '', 'config.data.path must name an AMLworld'),
        loading.Source.FEDERATION: ('schema_file', 'schema.json', 'rows are at the institutions'),
        loading.Source.AMLWORLD_FEDERATION: ('path', '', 'rows are at the institutions'),
    }
    self.assertCountEqual(refusals, list(loading.Source))
    for source, (key, value, message) in refusals.items():
      config = loan_risk.get_config('smoke')
      config.data.source, config.data.max_rows = source.value, 3000
      config.data[key] = value
      with self.assertRaisesRegex(errors.InputError, message):
        config_data.load_data(config, log=lambda _: None)

if __name__ == '__main__':
  tf.test.main()

import os

from absl.testing import parameterized
import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.data import shards
from tffaml.federated import client_data

SCHEMA = schema_lib.Schema(label='y', positive='1', numeric=('x', 'z'), categorical=('c',), unit='account')
LABEL, UNIT = schema_lib.LABEL_COLUMN, schema_lib.UNIT_COLUMN


def frame(rows: int, offset: int = 0) -> pd.DataFrame:
  i = np.arange(offset, offset + rows)
  return pd.DataFrame({
      'x': np.float64(np.float32(i / 3.0)),  # float32 values, as models see them...
      'z': i * 1e-3,  # ...and float64 ones, stored as float32.
      'c': np.where(i % 3 == 0, 'a, quoted "one"', 'NA'),  # A comma, quotes, pandas' NA word.
      LABEL: (i % 4 == 0).astype(np.int64),
      UNIT: [f'acct{k % 5}' for k in i],
  })


def as_rows(dataset):
  return [(tuple(features['x'].numpy().tolist()), label.numpy()[:, 0].tolist())
          for features, label in dataset]


class ShardsTest(tf.test.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.bank = federated_data.Institution('bank_1', frame(40), frame(8, offset=100))
    self.stored = shards.store(self.bank, SCHEMA, self.dir)

  def test_stored_rows_read_back_exactly_and_in_their_order(self):
    # What feature statistics and samplers see, with config.data.stream on and off.
    pd.testing.assert_frame_equal(self.stored.test, self.bank.test)
    pd.testing.assert_frame_equal(self.stored.train, self.bank.train)  # 1e-3 is not a float32: kept.
    # The file holds the training rows in a random order, the same at every store.
    in_file = shards.read_frame(self.stored.train_path, SCHEMA)
    self.assertNotEqual(in_file['x'].tolist(), self.bank.train['x'].tolist())
    pd.testing.assert_frame_equal(in_file.iloc[shards.train_lines(self.stored)].reset_index(drop=True),
                                  self.bank.train)
    again = shards.store(self.bank, SCHEMA, self.create_tempdir().full_path)
    pd.testing.assert_frame_equal(shards.read_frame(again.train_path, SCHEMA), in_file)
    self.assertEqual(self.stored.counts, {'train_rows': 40, 'train_positives': 10,
                                          'test_rows': 8, 'test_positives': 2})

  def test_streamed_numbers_are_the_float32_of_the_rows_in_memory(self):
    # 1 + 2^-24 lies halfway between two float32s: its 17 digits, parsed straight
    # to float32, round up; the value in memory rounds (to even) down.
    rows = frame(4).assign(z=[1 + 2.0**-24, 0.1, 1e-3, 12.34])
    stored = shards.store(federated_data.Institution('bank_2', rows, rows), SCHEMA, self.dir)
    (features, _), = shards.dataset(stored.test_path, SCHEMA, batch_size=4)
    self.assertAllEqual(features['z'], client_data.feature_tensors(rows, SCHEMA)['z'])
    self.assertEqual(features['z'][0], 1.0)

  def test_stream_has_the_in_memory_batches_structure_and_rows(self):
    streamed = client_data.institution_dataset(self.stored, 'train', SCHEMA, batch_size=16)
    in_file = shards.read_frame(self.stored.train_path, SCHEMA)
    in_memory = client_data.to_dataset(in_file, SCHEMA, batch_size=16)
    self.assertEqual(streamed.element_spec, in_memory.element_spec)
    self.assertEqual(as_rows(streamed), as_rows(in_memory))  # Unshuffled: file order.
    self.assertEqual([len(y) for _, y in as_rows(streamed)], [16, 16, 8])

  def test_seeded_shuffle_is_deterministic_and_covers_every_row_each_epoch(self):
    stream = lambda seed: as_rows(client_data.institution_dataset(
        self.stored, 'train', SCHEMA, batch_size=40, epochs=2, shuffle_seed=seed))
    first = stream(7)
    self.assertEqual(first, stream(7))
    self.assertNotEqual(first, stream(8))
    self.assertLen(first, 2)
    self.assertNotEqual(first[0][0], first[1][0])  # Each epoch reshuffled...
    for x, _ in first:  # ...and holds every row once.
      self.assertCountEqual(x, np.float32(np.arange(40) / 3.0).tolist())

  def test_federation_of_stored_institutions_uses_their_counts(self):
    data = federated_data.FederatedData(SCHEMA, (self.stored,))
    self.assertEqual(data.summary(), [{'institution': 'bank_1', **self.stored.counts}])

  def test_one_class_is_refused_before_storing(self):
    one_class = frame(8).assign(**{LABEL: 0})
    with self.assertRaisesRegex(schema_lib.DataError, "'bank_2' train split: holds only negative"):
      federated_data.check_institution(federated_data.Institution('bank_2', one_class, frame(4)))

  def test_manifest_is_reused_only_for_the_same_key(self):
    shards.write_manifest(self.dir, {'path': 'a.csv', 'bytes': 10}, [self.stored])
    reused = shards.read_manifest(self.dir, {'path': 'a.csv', 'bytes': 10})
    self.assertEqual(reused, [self.stored])
    self.assertIsNone(shards.read_manifest(self.dir, {'path': 'a.csv', 'bytes': 11}))
    os.remove(self.stored.test_path)  # A missing file: rebuild, do not fail later.
    self.assertIsNone(shards.read_manifest(self.dir, {'path': 'a.csv', 'bytes': 10}))


if __name__ == '__main__':
  tf.test.main()

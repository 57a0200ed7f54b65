import math
import os

import numpy as np
import pandas as pd
import tensorflow as tf

from tests.data import amlworld_test
from tffaml.data import schema as schema_lib
from tffaml.data import shards
from tffaml.data import transaction_generator
from tffaml.data import transactions


def raw(**overrides):
  fields = {
      'timestamp': ['2024/02/29 13:05', '1999/12/31 23:59'],  # A Thursday, a Friday.
      'payment_currency': ['US Dollar', 'Euro'],
      'receiving_currency': ['US Dollar', 'US Dollar'],
      'payment_format': ['Wire', 'ACH'],
      'direction': ['outgoing', 'incoming'],
      'amount_paid': [9500.0, 250.0],
      'amount_received': [9500.0, 0.0],
  }
  fields.update({a: [0.0, math.e - 1] for a in transactions.account_aggregates.AGGREGATES})
  fields.update(overrides)
  return {k: tf.constant(v) for k, v in fields.items()}


class DeriveTest(tf.test.TestCase):

  def test_hand_computed(self):
    features = {k: v.numpy() for k, v in transactions.derive(raw()).items()}
    self.assertCountEqual(features, transactions.SCHEMA.features)
    self.assertEqual(features['weekday'].tolist(), [b'3', b'4'])
    self.assertAllClose(features['hour_sin'], [math.sin(2 * math.pi * 13 / 24), math.sin(2 * math.pi * 23 / 24)])
    self.assertAllClose(features['log_amount_paid'], np.log1p([9500.0, 250.0]))
    self.assertAllEqual(features['currency_mismatch'], [0.0, 1.0])
    self.assertAllEqual(features['round_amount'], [1.0, 0.0])  # 9,500 is a multiple of 100.
    self.assertAllEqual(features['near_threshold'], [1.0, 0.0])
    self.assertAllClose(features['log1p_sender_out_count_1d'], [0.0, 1.0])
    self.assertEqual(features['direction'].tolist(), [b'outgoing', b'incoming'])

  def test_weekday_over_four_centuries(self):
    days = np.arange(np.datetime64('1900-01-01'), np.datetime64('2300-01-01'), 997)
    stamps = [str(d).replace('-', '/') + ' 00:00' for d in days]
    n = len(stamps)
    fields = {k: tf.repeat(v[:1], n) for k, v in raw().items()}
    fields['timestamp'] = tf.constant(stamps)
    weekday = transactions.derive(fields)['weekday'].numpy().astype(int)
    expected = [d.astype('datetime64[D]').item().weekday() for d in days]
    self.assertEqual(weekday.tolist(), expected)


class LoadTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.path = os.path.join(tf.compat.v1.test.get_temp_dir(), 'transactions.csv')
    transaction_generator.generate(cls.path, num_banks=6, num_transactions=12_000, seed=0,
                                   laundering_rate=0.01, days=12)

  def config(self, **overrides):
    settings = dict(path=self.path, test_fraction=0.25, min_rows=300, min_positives=2, max_banks=0)
    settings.update(overrides)
    return transactions.Selection(**settings)

  def test_banks_with_temporal_splits(self):
    data = transactions.load(self.config(), log=lambda _: None)
    self.assertGreaterEqual(len(data.institutions), 4)
    for institution in data.institutions:
      self.assertEqual(set(institution.train.columns),
                       set(transactions.SCHEMA.features) | {schema_lib.LABEL_COLUMN, schema_lib.UNIT_COLUMN})
    # Row counts: each bank's rows are those touching it.
    table = transactions.amlworld.read(self.path)
    bank = data.names[0].removeprefix('bank_')
    touching = ((table['from_bank'] == bank) | (table['to_bank'] == bank)).sum()
    self.assertEqual(len(data.institutions[0].train) + len(data.institutions[0].test), touching)

  def test_stored_banks_equal_in_memory_ones_and_are_reused(self):
    in_memory = transactions.load(self.config(), log=lambda _: None)
    shard_dir, logged = self.create_tempdir().full_path, []
    stored = transactions.load(self.config(), shard_dir=shard_dir, log=logged.append)
    self.assertEqual(stored.names, in_memory.names)
    self.assertEqual(stored.summary(), in_memory.summary())
    in_order = lambda f: f.sort_values(list(f.columns)).reset_index(drop=True)
    for a, b in zip(stored.institutions, in_memory.institutions):
      self.assertIsInstance(a, shards.StoredInstitution)
      pd.testing.assert_frame_equal(in_order(a.train), in_order(b.train))  # Stored shuffled.
      pd.testing.assert_frame_equal(a.test, b.test)
    self.assertIn(f'stored {len(stored.names)} banks', logged[-1])
    again = transactions.load(self.config(), shard_dir=shard_dir, log=logged.append)
    self.assertEqual(again.institutions, stored.institutions)
    self.assertIn('reusing', logged[-1])
    # Other settings: made afresh.
    transactions.load(self.config(max_banks=2), shard_dir=shard_dir, log=logged.append)
    self.assertIn('stored 2 banks', logged[-1])

  def test_test_rows_are_later(self):
    table = transactions.amlworld.read(self.path)
    cutoff = table['minute'].min() + 0.75 * (table['minute'].max() - table['minute'].min())
    view = transactions.amlworld.bank_view(table, transactions.amlworld.banks(table)['bank'][0])
    frame = transactions.model_frame(view)
    self.assertLen(frame, len(view.rows))
    self.assertTrue((np.diff(frame['minute']) >= 0).all())
    self.assertGreater((frame['minute'] >= cutoff).sum(), 0)

  def test_members_are_the_banks_load_makes_institutions_of(self):
    # What scripts/federation.py --transactions starts a node for.
    for selection in (self.config(), self.config(max_banks=2)):
      self.assertEqual([f'bank_{b}' for b in transactions.members(selection, log=lambda _: None)],
                       list(transactions.load(selection, log=lambda _: None).names))

  def test_max_banks_and_thresholds(self):
    self.assertLen(transactions.load(self.config(max_banks=2), log=lambda _: None).institutions, 2)
    with self.assertRaisesRegex(schema_lib.DataError, 'no bank has 10000000 training transactions'):
      transactions.load(self.config(min_rows=10_000_000), log=lambda _: None)
    with self.assertRaisesRegex(ValueError, 'path must name'):
      transactions.load(self.config(path=''), log=lambda _: None)


class ServingInputsTest(tf.test.TestCase):

  def test_bank_inferred_or_required(self):
    directory = self.create_tempdir().full_path
    everyone = amlworld_test.write(directory)
    with self.assertRaisesRegex(schema_lib.DataError, 'pass --bank'):
      transactions.serving_inputs(everyone)
    with self.assertRaisesRegex(schema_lib.DataError, r"line 5: neither sender nor receiver is at bank '010'"):
      transactions.serving_inputs(everyone, bank='010')
    own = amlworld_test.write(directory, rows=amlworld_test.ROWS[:3])
    rows, inputs = transactions.serving_inputs(own)  # Every row touches 010.
    self.assertLen(rows, 3)
    self.assertEqual(list(rows.columns), list(transactions.amlworld.HEADER))
    self.assertEqual(inputs['direction'].tolist(), ['internal', 'outgoing', 'incoming'])  # File order.
    self.assertEqual(inputs['receiver_in_count_1d'].tolist(), [1.0, 0.0, 0.0])  # A2 got 5.00 at 00:10.

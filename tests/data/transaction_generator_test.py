import os

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml.data import amlworld
from tffaml.data import transaction_generator as generator


class GeneratorTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tf.compat.v1.test.get_temp_dir()
    cls.path = os.path.join(cls.dir, 'a.csv')
    cls.patterns_path = os.path.join(cls.dir, 'patterns.csv')
    cls.report = generator.generate(
        cls.path, num_banks=8, num_transactions=20_000, seed=3, laundering_rate=0.01, days=10,
        patterns_output=cls.patterns_path)
    cls.table = amlworld.read(cls.path)
    cls.patterns = pd.read_csv(cls.patterns_path, dtype={'from_bank': str, 'to_bank': str})

  def test_amlworld_schema_and_counts(self):
    with open(self.path) as f:
      self.assertEqual(f.readline().strip(), ','.join(amlworld.HEADER))
    self.assertLen(self.table, 20_000)
    self.assertEqual(self.table['is_laundering'].sum(), self.report.laundering)
    self.assertBetween(self.report.laundering, 200, 260)  # 1%, whole patterns.
    self.assertTrue((np.diff(self.table['minute']) >= 0).all())  # In time order.
    self.assertEqual(self.table['from_bank'].nunique(), 8)

  def test_every_typology_is_present_and_labeled(self):
    self.assertCountEqual(self.report.patterns, generator.TYPOLOGIES)
    self.assertCountEqual(self.patterns['typology'].unique(), generator.TYPOLOGIES)
    keys = ['timestamp', 'from_account', 'to_account', 'amount_paid']
    laundering = self.table[self.table['is_laundering'] == 1]
    merged = self.patterns[keys + ['typology']].merge(laundering[keys], on=keys, how='left', indicator=True)
    self.assertTrue((merged['_merge'] == 'both').all())
    self.assertLen(self.patterns, len(laundering))

  def test_typologies_have_their_shape(self):
    by_pattern = self.patterns.groupby('pattern')
    for _, rows in by_pattern:
      typology = rows['typology'].iloc[0]
      if typology == 'fan_out':
        self.assertEqual(rows['from_account'].nunique(), 1)
        self.assertGreater(rows['to_account'].nunique(), 2)
      elif typology == 'fan_in':
        self.assertEqual(rows['to_account'].nunique(), 1)
      elif typology == 'cycle':
        self.assertCountEqual(rows['from_account'], rows['to_account'])  # Back to the start.
      elif typology == 'structuring':
        usd = rows['amount_paid'] * rows['payment_currency'].map(generator.CURRENCIES)
        self.assertTrue(((usd > 8_900) & (usd < generator.REPORTING_THRESHOLD + 1)).all(), usd)

  def test_patterns_cross_banks(self):
    crossing = (self.patterns['from_bank'] != self.patterns['to_bank']).mean()
    self.assertGreater(crossing, 0.3)

  def test_same_seed_same_bytes(self):
    again = os.path.join(self.dir, 'b.csv')
    other = os.path.join(self.dir, 'c.csv')
    generator.generate(again, num_banks=8, num_transactions=20_000, seed=3, laundering_rate=0.01, days=10)
    generator.generate(other, num_banks=8, num_transactions=20_000, seed=4, laundering_rate=0.01, days=10)
    read = lambda p: open(p, 'rb').read()
    self.assertEqual(read(again), read(self.path))
    self.assertNotEqual(read(other), read(self.path))

  def test_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, '--num_banks must be >= 2'):
      generator.generate(os.path.join(self.dir, 'x.csv'), num_banks=1, num_transactions=100, seed=0)
    with self.assertRaisesRegex(ValueError, '--num_transactions=20 is too few'):
      generator.generate(os.path.join(self.dir, 'x.csv'), num_banks=3, num_transactions=20, seed=0)
    self.assertFalse(os.path.exists(os.path.join(self.dir, 'x.csv')))

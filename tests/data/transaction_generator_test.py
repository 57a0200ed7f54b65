import os

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml.data import amlworld
from tffaml.data import amlworld_stats
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
    with self.assertRaisesRegex(ValueError, "unknown typologies \\['ring'\\]"):
      generator.generate(os.path.join(self.dir, 'x.csv'), num_banks=3, num_transactions=2000, seed=0,
                         typologies=('fan_out', 'ring'))
    with self.assertRaisesRegex(ValueError, 'amount_scale must be > 0, got 0'):
      generator.generate(os.path.join(self.dir, 'x.csv'), num_banks=3, num_transactions=2000, seed=0,
                         amount_scale=0.0)
    self.assertFalse(os.path.exists(os.path.join(self.dir, 'x.csv')))

  def test_a_public_corpus_unlike_it(self):
    """--amount_scale and --typologies: another corpus for public pretraining (tffaml.training.public)."""
    path, patterns = os.path.join(self.dir, 'public.csv'), os.path.join(self.dir, 'public_patterns.csv')
    kept = generator.TYPOLOGIES[:2]
    generator.generate(path, num_banks=8, num_transactions=20_000, seed=3, laundering_rate=0.01, days=10,
                       amount_scale=3.0, typologies=kept, patterns_output=patterns)
    table = amlworld.read(path)
    typologies = pd.read_csv(patterns)['typology'].unique()
    self.assertCountEqual(set(typologies) - {'integration'}, kept)
    # The same seed draws the same payments, three times larger (amounts are rounded to cents).
    normal = self.table['is_laundering'] == 0
    ratio = np.median(table.loc[table['is_laundering'] == 0, 'amount_paid']) / np.median(
        self.table.loc[normal, 'amount_paid'])
    self.assertBetween(ratio, 2.5, 3.5)


class LiSettingTest(tf.test.TestCase):
  """The harder setting: AMLworld LI's rate, most laundering disguised as normal payments."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = tf.compat.v1.test.get_temp_dir()
    cls.path, cls.patterns_path = os.path.join(cls.dir, 'li.csv'), os.path.join(cls.dir, 'li_patterns.csv')
    cls.report = generator.generate(cls.path, num_banks=8, num_transactions=400_000, seed=5,
                                    setting=generator.Setting.LI, days=20, patterns_output=cls.patterns_path)
    cls.stats = amlworld_stats.describe(cls.path, patterns_path=cls.patterns_path,
                                        usd_per_unit=generator.CURRENCIES)

  def test_rate_and_integration(self):
    self.assertBetween(self.stats['one_in'], 1900, 1990)  # 1 in 1,942, whole patterns.
    self.assertBetween(self.stats['in_patterns'], 0.15, 0.35)
    patterns = pd.read_csv(self.patterns_path, dtype={'from_account': str, 'to_account': str})
    integration = patterns['typology'] == 'integration'
    # Integration payments are made by accounts that received pattern money, after it arrived.
    patterns['minute'] = pd.to_datetime(patterns['timestamp'], format='%Y/%m/%d %H:%M')
    received = patterns[~integration].groupby('to_account')['minute'].min()
    payers = patterns[integration]
    self.assertTrue(set(payers['from_account']) <= set(received.index))
    self.assertTrue((payers['minute'].to_numpy() > received[payers['from_account']].to_numpy()).all())
    # Half pay back into the laundering network.
    network = set(patterns.loc[~integration, 'to_account'])
    self.assertBetween(payers['to_account'].isin(network).mean(), 0.35, 0.75)

  def test_laundering_looks_normal_beside_hi(self):
    # Its own HI file (as GeneratorTest's): classes may run in different processes.
    path = os.path.join(self.create_tempdir().full_path, 'hi.csv')
    generator.generate(path, num_banks=8, num_transactions=20_000, seed=3, laundering_rate=0.01, days=10)
    hi = amlworld_stats.describe(path, usd_per_unit=generator.CURRENCIES)
    # HI's laundering pays far more than normal payments; LI's about the same.
    self.assertGreater(hi['laundering_usd'][0], 10 * hi['normal_usd'][0])
    self.assertLess(self.stats['laundering_usd'][0], 3 * self.stats['normal_usd'][0])
    # LI's laundering uses every format normal payments use, cards included.
    self.assertGreater(self.stats['laundering_formats'].get('Credit Card', 0.0), 0.1)

  def test_table_beside_published(self):
    table = amlworld_stats.table({'li': self.stats})
    self.assertIn('| laundering: one in | 981 | 1,942 |', table)
    self.assertIn('19.3%', table)  # LI-Large's laundering in patterns.
    self.assertRegex(table, r'\| transactions \| 5,000,000 \| 7,000,000 \|  \| 400,000 \|')

  def test_every_setting_has_a_style(self):
    for setting in generator.Setting:
      self.assertIsInstance(generator.style(setting).laundering_rate, float)
    with self.assertRaisesRegex(ValueError, 'unknown setting'):
      generator.style('li')

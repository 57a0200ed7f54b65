import os

import ml_collections
import numpy as np
import tensorflow as tf

from tests import helpers
from tffaml.data import schema as schema_lib
from tffaml.studies import attack_eval
from tffaml.config import checks as config_checks
from tffaml.federated import poisoning

LABEL = schema_lib.LABEL_COLUMN


def _attack_config(**attack):
  config = ml_collections.ConfigDict({'seed': 0, 'attack': dict(
      type='none', institutions='', count=0, boost_factor=0.0, trigger='')})
  config.attack.update(attack)
  return config


class PoisonTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.data = helpers.load_federation()

  def test_label_flip_only_at_the_malicious_and_never_in_test(self):
    attack = config_checks.attack(_attack_config(type='label_flip', institutions='bank_b'), self.data)
    poisoned = poisoning.poison(self.data, attack)
    for clean, dirty in zip(self.data.institutions, poisoned.institutions):
      flipped = clean.name == 'bank_b'
      expected = 1 - clean.train[LABEL] if flipped else clean.train[LABEL]
      self.assertAllEqual(dirty.train[LABEL], expected)
      self.assertIs(dirty.test, clean.test)

  def test_backdoor_adds_triggered_negatives(self):
    attack = config_checks.attack(
        _attack_config(type='backdoor', institutions='bank_a', trigger='rate=99'), self.data)
    train = poisoning.poison(self.data, attack).institutions[0].train
    original = self.data.institutions[0].train
    self.assertLen(train, 2 * len(original))
    triggered = train.iloc[len(original):]
    self.assertTrue((triggered['rate'] == 99).all() and (triggered[LABEL] == 0).all())

  def test_boost_scales_only_the_malicious(self):
    attack = config_checks.attack(_attack_config(type='boost', count=1), self.data)
    self.assertLen(attack.malicious, 1)
    self.assertEqual(attack.boost_factor, 3.0)  # The number of institutions.
    scales = [attack.scale(n) for n in self.data.names]
    self.assertEqual(sorted(scales), [1.0, 1.0, 3.0])

  def test_default_trigger_is_out_of_range(self):
    attack = config_checks.attack(_attack_config(type='backdoor', institutions='bank_c'), self.data)
    column, value = next(iter(attack.trigger.items()))
    self.assertEqual(column, 'amount')
    self.assertGreater(value, 5 * max(i.train['amount'].max() for i in self.data.institutions))

  def test_bad_configs_are_named(self):
    with self.assertRaisesRegex(ValueError, r"config.attack.institutions names \['bank_z'\]"):
      config_checks.attack(_attack_config(type='boost', institutions='bank_z'), self.data)
    with self.assertRaisesRegex(ValueError, r'config.attack.count=3 must be in \[1, 2\]'):
      config_checks.attack(_attack_config(type='boost', count=3), self.data)
    with self.assertRaisesRegex(ValueError, "config.attack.trigger: 'grade' is not a numeric feature"):
      config_checks.attack(_attack_config(type='backdoor', count=1, trigger='grade=1'), self.data)
    with self.assertRaisesRegex(ValueError, "config.attack.type='poison' is not one of"):
      config_checks.attack(_attack_config(type='poison'), self.data)

  def test_malicious_count(self):
    self.assertEqual([poisoning.malicious_count(l, 12) for l in ('1', '10%', '20%')], [1, 2, 3])


class AttackEvalTest(tf.test.TestCase):

  def test_matrix_end_to_end(self):
    root = self.create_tempdir().full_path
    config = helpers.smoke_config(root, rounds=1)  # One round boosts the malicious update already.
    config.aggregator.type, config.aggregator.noise_multiplier = 'mean', 0.0
    config.reference.centralized_epochs = 0
    config.federated.eval_every = 0  # Measured once, at the end: all the table reads.
    table = attack_eval.run(config, output_dir=os.path.join(root, 'eval'), attacks=('boost',),
                            levels=('none', '1'), defences=('mean', 'median'), log=lambda _: None)
    self.assertLen(table, 4)
    self.assertEqual(table['attack'].tolist(), ['none', 'boost', 'none', 'boost'])
    clean = table[table['attack'] == 'none']
    self.assertAllEqual(clean['auc_drop'], [0.0, 0.0])
    attacked = table[table['attack'] == 'boost'].set_index('defence')
    self.assertTrue(np.all(np.isfinite(attacked['auc'])))
    with open(os.path.join(root, 'eval', 'attack_eval.md')) as f:
      markdown = f.read()
    self.assertIn('| boost | 1 (1) |', markdown)

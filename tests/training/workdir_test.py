"""A workdir's lock, leftovers, identity checks and the secret kept out of checkpoints."""

import collections
import os

import numpy as np
import tensorflow as tf

from tffaml.training import workdir

_IDENTITY = workdir.Identity(institutions=(('a', 60, 30), ('b', 60, 30)), record_noise_multiplier=None,
                             client_noise_multiplier=0.8, rounds=3)


class WorkdirTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path

  def test_second_holder_is_refused_with_the_first_ones_pid(self):
    with workdir.lock(self.root):
      with self.assertRaisesRegex(workdir.WorkdirError, rf'in use by another run \(pid {os.getpid()}\)'):
        with workdir.lock(self.root):
          pass
    with workdir.lock(self.root):  # Released at the end of the block.
      pass

  def test_leftovers_of_a_killed_run_are_removed_and_nothing_else(self):
    leftovers = ['.export.tmp-abc/saved_model.pb', 'checkpoints/program_state_3_temp1234/x',
                 '.metrics.json.tmp-x1', 'results/.metrics.csv.tmp-q']
    kept = ['export/saved_model.pb', 'checkpoints/program_state_2/x', 'metrics.json', 'results/metrics.csv']
    for name in leftovers + kept:
      os.makedirs(os.path.dirname(os.path.join(self.root, name)), exist_ok=True)
      open(os.path.join(self.root, name), 'w').close()
    removed = workdir.remove_stale_temporaries(self.root)
    self.assertLen(removed, 4)
    for name in leftovers:
      self.assertFalse(os.path.exists(os.path.join(self.root, name)), name)
    for name in kept:
      self.assertTrue(os.path.exists(os.path.join(self.root, name)), name)

  def test_workdir_inside_the_data_directory_is_refused(self):
    data_dir = os.path.join(self.root, 'data')
    with self.assertRaisesRegex(workdir.WorkdirError, 'inside config.data.dir'):
      workdir.check_outside(os.path.join(data_dir, 'run'), data_dir)
    workdir.check_outside(os.path.join(self.root, 'data_run'), data_dir)  # A sibling is fine.

  def _check(self, current, *, checkpoint_round=2, rounds=3, target_epsilon=None):
    workdir.write_identity(self.root, _IDENTITY)
    workdir.check_identity(self.root, current, checkpoint_round=checkpoint_round, rounds=rounds,
                           target_epsilon=target_epsilon)

  def test_same_run_resumes_and_fixed_noise_may_train_longer(self):
    self._check(_IDENTITY)
    self._check(_IDENTITY, rounds=9)  # Same noise: the ledger's ε simply grows.

  def test_changed_data_is_refused(self):
    added = workdir.Identity(**{**_IDENTITY.to_dict(), 'institutions': (('a', 60, 30), ('b', 60, 30), ('c', 5, 5))})
    with self.assertRaisesRegex(workdir.WorkdirError, r'the data changed .*\(c added\)'):
      self._check(added)
    fewer_rows = workdir.Identity(**{**_IDENTITY.to_dict(), 'institutions': (('a', 60, 30), ('b', 59, 30))})
    with self.assertRaisesRegex(workdir.WorkdirError, r'b: 60/30 -> 59/30 train/test rows'):
      self._check(fewer_rows)

  def test_fewer_rounds_than_trained_is_refused(self):
    with self.assertRaisesRegex(workdir.WorkdirError, r'config.federated.rounds=2 is fewer than the 3 rounds'):
      self._check(_IDENTITY, checkpoint_round=3, rounds=2)

  def test_recalibrated_noise_is_refused_naming_the_rounds(self):
    recalibrated = workdir.Identity(**{**_IDENTITY.to_dict(), 'client_noise_multiplier': 1.4, 'rounds': 9})
    with self.assertRaisesRegex(
        workdir.WorkdirError,
        r'config.federated.rounds=9: the noise .* calibrated for config.privacy.target_epsilon=5.0'
        r' over 3 rounds.*client-level noise multiplier of 1.4 where its checkpoints used 0.8'):
      self._check(recalibrated, rounds=9, target_epsilon=5.0)

  def test_checkpoints_without_identity_are_refused(self):
    with self.assertRaisesRegex(workdir.WorkdirError, 'cannot be checked'):
      workdir.check_identity(self.root, _IDENTITY, checkpoint_round=1, rounds=3, target_epsilon=None)

  def test_secret_seed_is_private_and_stable_and_a_configured_one_wins(self):
    seed = workdir.noise_seed(self.root, None, lambda: 123456789)
    self.assertEqual(seed, 123456789)
    path = os.path.join(self.root, workdir.SECRET_DIR, workdir.NOISE_SEED_FILE)
    self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
    self.assertEqual(workdir.noise_seed(self.root, None, lambda: 1), 123456789)  # Not redrawn.
    self.assertEqual(workdir.noise_seed(self.root, 7, lambda: 1), 7)

  def test_redact_removes_only_the_seed_and_restore_puts_it_back(self):
    state = collections.OrderedDict(
        model=[np.ones(3)],
        aggregator=collections.OrderedDict(
            sum_state=collections.OrderedDict(noise_key=np.array([987654321, 0]), noise_round=np.int64(4)),
            count_state=collections.OrderedDict(noise_key=np.array([987654321, 1]))))
    redacted = workdir.redact(state)
    self.assertAllEqual(redacted['aggregator']['sum_state']['noise_key'], [0, 0])
    self.assertAllEqual(redacted['aggregator']['count_state']['noise_key'], [0, 1])
    self.assertEqual(redacted['aggregator']['sum_state']['noise_round'], 4)
    self.assertAllEqual(redacted['model'][0], np.ones(3))
    restored = workdir.restore(redacted, 987654321)
    self.assertAllEqual(restored['aggregator']['count_state']['noise_key'], [987654321, 1])


if __name__ == '__main__':
  tf.test.main()

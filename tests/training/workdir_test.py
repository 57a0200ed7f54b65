"""A workdir's lock, leftovers, identity checks and the secret kept out of checkpoints."""

import collections
import errno
import glob
import os
import subprocess
import tempfile
from unittest import mock

import numpy as np
import pandas as pd
import tensorflow as tf

from tests import helpers
from tffaml import io
from tffaml.training import program
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
                 '.metrics.json.tmp-x1', 'results/.metrics.csv.tmp-q', 'results/metrics.csv_temp4321']
    kept = ['export/saved_model.pb', 'checkpoints/program_state_2/x', 'metrics.json', 'results/metrics.csv']
    for name in leftovers + kept:
      os.makedirs(os.path.dirname(os.path.join(self.root, name)), exist_ok=True)
      open(os.path.join(self.root, name), 'w').close()
    removed = workdir.remove_stale_temporaries(self.root)
    self.assertLen(removed, 5)
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


def _tmpfs(test: tf.test.TestCase, options: str) -> str:
  """A tmpfs mounted for the test (unmounted after it): a real read-only or small disk."""
  path = test.create_tempdir().full_path
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', path], capture_output=True,
                        check=False)
  if done.returncode:
    test.skipTest('mounting a tmpfs needs root with CAP_SYS_ADMIN; the injected tests cover the messages')
  test.addCleanup(subprocess.run, ['umount', '-l', path], check=False)
  return path


class UnwritableWorkdirTest(tf.test.TestCase):
  """A workdir that is a file, read-only or full: one line naming it, before any work."""

  def test_a_file_or_a_file_in_the_path_is_refused(self):
    path = self.create_tempfile('run').full_path
    with self.assertRaisesRegex(workdir.WorkdirError, f'--workdir={path} is a file, not a directory; name a'):
      with workdir.lock(path):
        pass
    with self.assertRaisesRegex(workdir.WorkdirError, 'has a file, not a directory, in its path'):
      with workdir.lock(os.path.join(path, 'sub')):
        pass

  def test_a_read_only_mount_is_refused(self):
    mount = _tmpfs(self, 'ro,size=1m')  # Real: as root, permission bits would not stop a write.
    for root in (mount, os.path.join(mount, 'new')):
      with self.assertRaisesRegex(workdir.WorkdirError, f'--workdir={root} is on a read-only file system;'):
        with workdir.lock(root):
          pass

  def test_the_os_refusing_the_probe_is_one_line_and_leaves_nothing(self):
    # Without a mount: the OS's answers injected where the probe creates and syncs its file.
    root = self.create_tempdir().full_path
    for target, attribute, number, message in ((tempfile, 'mkstemp', errno.EROFS, 'is on a read-only file system'),
                                    (os, 'fsync', errno.ENOSPC, 'no space left on its device'),
                                    (tempfile, 'mkstemp', errno.EACCES, r'cannot be written \(Permission denied\)')):
      error = OSError(number, os.strerror(number), root)
      with mock.patch.object(target, attribute, side_effect=error):
        with self.assertRaisesRegex(workdir.WorkdirError, message):
          with workdir.lock(root):
            self.fail('locked an unwritable workdir')
      self.assertEqual(os.listdir(root), [])  # Neither the probe nor a lock file.


class FullDiskTest(tf.test.TestCase):
  """A disk that fills mid-run ends it in one line; the same command then resumes."""

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.config = helpers.smoke_config(self.root, rounds=2)

  def _resumes_and_finishes(self, run_dir: str) -> int:
    """Reruns the same command; returns the round it resumed after (0: none was checkpointed)."""
    names = os.listdir(os.path.join(run_dir, 'checkpoints'))
    last = max((int(n.split('_')[-1]) for n in names if n.split('_')[-1].isdigit()), default=0)
    lines = []
    result = program.run(self.config, run_dir, log=lines.append)
    if last:
      self.assertIn(f'resuming {run_dir} after round {last}', lines)
    self.assertEqual(pd.read_csv(result.paths.metrics_csv)['round'].tolist(), [1, 2])
    self.assertTrue(os.path.isfile(os.path.join(result.paths.export, 'saved_model.pb')))
    self.assertEqual(glob.glob(os.path.join(run_dir, '**', '*tmp-*'), recursive=True), [])
    return last

  def test_full_at_a_checkpoint_is_one_line_and_the_same_command_resumes(self):
    run_dir = os.path.join(self.root, 'run')
    save = tf.saved_model.save

    def full_at_round_2(module, path, **kwargs):  # TF's error, after it made its temporary directory.
      if 'program_state_2' in path:
        raise tf.errors.ResourceExhaustedError(
            None, None, f'{path}/variables/variables.data-00000-of-00001.tempstate1; No space left on device')
      return save(module, path, **kwargs)

    with mock.patch.object(tf.saved_model, 'save', full_at_round_2):
      with self.assertRaisesRegex(
          workdir.WorkdirError, rf'^no space left on the device of {run_dir}/checkpoints/program_state_2_temp'
          rf'\d+/variables/\S+ \(--workdir={run_dir}\); free space and run the same command again: it'
          ' resumes from the last checkpoint.$'):
        program.run(self.config, run_dir, log=lambda _: None)
    self.assertEqual(self._resumes_and_finishes(run_dir), 1)

  def test_full_at_the_export_resumes_to_finish(self):
    run_dir = os.path.join(self.root, 'run')
    write_text = io.write_text

    def full_at_metrics(path, text):  # The OS's error, inside the atomic write.
      if path.endswith('metrics.json'):
        with io.atomic_path(path) as tmp:
          raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
      write_text(path, text)

    with mock.patch.object(io, 'write_text', full_at_metrics):
      with self.assertRaisesRegex(workdir.WorkdirError, rf'no space left on the device of {run_dir}/\.metrics'
                                  r'\.json\.tmp-\S+ .*free space and run the same command again'):
        program.run(self.config, run_dir, log=lambda _: None)
    self.assertFalse(os.path.exists(os.path.join(run_dir, 'export')))
    self.assertEqual(self._resumes_and_finishes(run_dir), 2)  # Rounds done: straight to the export.
    self.assertTrue(os.path.isfile(os.path.join(run_dir, 'metrics.json')))

  def test_a_real_full_disk_mid_run_then_freed_resumes(self):
    run_dir = os.path.join(_tmpfs(self, 'size=4m'), 'run')
    ballast = os.path.join(os.path.dirname(run_dir), 'ballast')

    def fill_after_round_1(line: str) -> None:
      if line.startswith('round 1/'):
        with open(ballast, 'wb', buffering=0) as f:
          try:
            while True:
              f.write(bytes(65536))
          except OSError as e:
            self.assertEqual(e.errno, errno.ENOSPC)

    with self.assertRaisesRegex(workdir.WorkdirError, f'no space left on the device of {run_dir}.*'
                                'free space and run the same command again'):
      program.run(self.config, run_dir, log=fill_after_round_1)
    os.remove(ballast)
    self._resumes_and_finishes(run_dir)  # From whichever round was the last checkpointed.


if __name__ == '__main__':
  tf.test.main()

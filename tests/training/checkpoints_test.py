import asyncio
import collections
import os
import shutil

import numpy as np
import tensorflow as tf

from tffaml import errors
from tffaml.security import encryption
from tffaml.training import checkpoints


def _state(value: float):
  return [collections.OrderedDict(w=np.full((2, 3), value, np.float32), step=np.int64(value)), 7,
          np.array([1, 2], np.int64)]


class EncryptedProgramStateManagerTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.key = encryption.load_key(key_file=encryption.generate_key(os.path.join(self.dir, 'key')))
    self.root = os.path.join(self.dir, 'checkpoints')

  def test_round_trip_keeps_the_latest_two(self):
    manager = checkpoints.state_manager(self.root, self.key)
    for version in (1, 2, 3):
      asyncio.run(manager.save(_state(version), version))
    self.assertEqual(asyncio.run(manager.get_versions()), [2, 3])
    loaded, version = asyncio.run(manager.load_latest(_state(0)))
    self.assertEqual(version, 3)
    tf.nest.map_structure(self.assertAllEqual, loaded, _state(3))

  def test_a_file_moved_to_another_round_or_altered_does_not_authenticate(self):
    manager = checkpoints.state_manager(self.root, self.key)
    asyncio.run(manager.save(_state(1), 1))
    asyncio.run(manager.save(_state(2), 2))
    # Rolling back: round 1's state passed off as round 2's.
    shutil.copy(os.path.join(self.root, 'state_1.sealed'), os.path.join(self.root, 'state_2.sealed'))
    with self.assertRaisesRegex(encryption.DecryptionError, 'state_2.sealed: does not authenticate'):
      asyncio.run(manager.load(2, _state(0)))
    with open(os.path.join(self.root, 'state_1.sealed'), 'r+b') as f:
      f.seek(-3, os.SEEK_END)
      f.write(b'xyz')
    with self.assertRaisesRegex(encryption.DecryptionError, 'state_1.sealed: does not authenticate'):
      asyncio.run(manager.load(1, _state(0)))

  def test_checkpoints_of_the_other_kind_are_refused(self):
    asyncio.run(checkpoints.state_manager(self.root, self.key).save(_state(1), 1))
    with self.assertRaisesRegex(errors.InputError, 'the checkpoints are encrypted'):
      checkpoints.state_manager(self.root, None)
    plain = os.path.join(self.dir, 'plain')
    asyncio.run(checkpoints.state_manager(plain, None).save(_state(1), 1))
    with self.assertRaisesRegex(errors.InputError, 'started without encrypted checkpoints'):
      checkpoints.state_manager(plain, self.key)


if __name__ == '__main__':
  tf.test.main()

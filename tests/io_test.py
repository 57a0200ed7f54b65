import os
import stat

import tensorflow as tf

from tffaml import io


class AtomicPathTest(tf.test.TestCase):

  def test_file_gets_the_usual_permissions_and_keys_can_be_private(self):
    root = self.create_tempdir().full_path
    path = os.path.join(root, 'out.txt')
    io.write_text(path, 'x')
    mask = os.umask(0)
    os.umask(mask)
    self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o666 & ~mask)
    secret = os.path.join(root, 'key')
    with io.atomic_path(secret) as tmp:
      os.chmod(tmp, 0o600)
      with open(tmp, 'w') as f:
        f.write('k')
    self.assertEqual(stat.S_IMODE(os.stat(secret).st_mode), 0o600)

  def test_failure_leaves_the_old_file(self):
    path = os.path.join(self.create_tempdir().full_path, 'out.txt')
    io.write_text(path, 'old')
    with self.assertRaises(RuntimeError):
      with io.atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
          f.write('half')
        raise RuntimeError('killed')
    with open(path) as f:
      self.assertEqual(f.read(), 'old')
    self.assertEqual(os.listdir(os.path.dirname(path)), ['out.txt'])

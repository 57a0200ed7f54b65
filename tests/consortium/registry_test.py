"""scripts/keys.py's registry changes: the folder and the SuperLink's list move together, or not at all."""

import os

import tensorflow as tf

from tffaml.consortium import registry
from tffaml.security import credentials


class RegistryTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.files = credentials.write_federation(os.path.join(self.dir, 'pki'), hosts=['127.0.0.1'],
                                              institutions=['bank_a', 'bank_b'])
    self.nodes, self.list = self.files.nodes, self.files.authorized_nodes

  def _listed(self) -> list[bytes]:
    with open(self.list, 'rb') as f:
      return f.read().split()

  def _key(self, name: str) -> str:
    return credentials.write_node_key(os.path.join(self.dir, 'host_' + name), name)[1]

  def test_admit_rotate_revoke_change_the_folder_and_the_list_together(self):
    live = registry.LiveKeys(self.nodes)
    old_a = live['bank_a']
    registry.admit(self.nodes, self.list, 'bank_c', self._key('bank_c'))
    self.assertEqual(sorted(live), ['bank_a', 'bank_b', 'bank_c'])
    registry.rotate(self.nodes, self.list, 'bank_a', new_a := self._key('bank_a'))
    self.assertNotEqual(live['bank_a'], old_a)
    kept = registry.revoke(self.nodes, self.list, 'bank_b')
    self.assertEqual(sorted(live), ['bank_a', 'bank_c'])
    self.assertTrue(os.path.exists(kept))
    with open(new_a, 'rb') as f:
      self.assertIn(f.read().split()[1], self._listed())
    self.assertLen(self._listed(), 2 * 2)  # Two keys, each 'ecdsa-sha2-nistp384 <base64>'.
    self.assertLen(os.listdir(os.path.join(self.nodes, 'revoked')), 2)  # bank_a's old key, bank_b's.

  def test_refusals_leave_the_registry_as_it_was(self):
    before = self._listed()
    with self.assertRaisesRegex(registry.RegistryError, 'already registered; to replace its key use rotate'):
      registry.admit(self.nodes, self.list, 'bank_a', self._key('bank_a'))
    with self.assertRaisesRegex(registry.RegistryError, 'already registered; each institution needs its own'):
      registry.admit(self.nodes, self.list, 'bank_c', os.path.join(self.nodes, 'bank_b.pub'))
    with self.assertRaisesRegex(registry.RegistryError, 'not registered; admit it first'):
      registry.rotate(self.nodes, self.list, 'bank_z', self._key('bank_z'))
    with self.assertRaisesRegex(credentials.errors.InputError, 'not an OpenSSH public key'):
      registry.rotate(self.nodes, self.list, 'bank_a', os.path.join(self.nodes, 'bank_a'))  # Its private key.
    with self.assertRaisesRegex(registry.RegistryError, 'give the institution'):
      registry.revoke(self.nodes, self.list, '../bank_a')
    self.assertEqual(self._listed(), before)
    self.assertEqual(sorted(registry.read_keys(self.nodes)), ['bank_a', 'bank_b'])
    self.assertFalse(os.path.exists(os.path.join(self.nodes, 'revoked')) and
                     os.listdir(os.path.join(self.nodes, 'revoked')))


if __name__ == '__main__':
  tf.test.main()

"""The SuperLink's key list, reloaded live, on Flower's own in-memory state (no processes)."""

import os
import time

from absl.testing import absltest

from tffaml.consortium import registry
from tffaml.consortium import superlink
from tffaml.security import credentials


class KeyListTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    files = credentials.write_federation(os.path.join(self.dir, 'pki'), hosts=['127.0.0.1'],
                                         institutions=['bank_a', 'bank_b'])
    self.nodes, self.path = files.nodes, files.authorized_nodes
    # Not superlink._flower(): it makes TensorFlow unimportable in this process, for later tests too.
    from flwr.server.superlink.state import state_factory  # pylint: disable=g-import-not-at-top
    self.state = superlink._state_class(state_factory.InMemoryState)()  # pylint: disable=protected-access
    self.state.store_node_public_keys(superlink.read_key_list(self.path))
    self.logged = []
    self.keys = superlink.KeyList(self.path, self.state, self.logged.append)

  def _key(self, institution: str) -> bytes:
    return superlink.read_key_list(os.path.join(self.nodes, f'{institution}.pub'))

  def test_an_admitted_key_counts_at_the_next_refresh_not_a_second_later(self):
    _, public = credentials.write_node_key(os.path.join(self.dir, 'bank_c_host'), 'bank_c')
    registry.admit(self.nodes, self.path, 'bank_c', public)
    (new,) = superlink.read_key_list(public)
    self.assertNotIn(new, self.state.get_node_public_keys())
    self.keys.refresh()  # What the interceptor does before refusing a key it does not know.
    self.assertIn(new, self.state.get_node_public_keys())
    self.assertLen(self.state.get_node_public_keys(), 3)
    self.assertIn(f'admitted [\'{superlink.fingerprint(new)}\'], revoked []', self.logged[-1])
    self.keys.refresh()  # Unchanged: nothing reread, nothing logged.
    self.assertLen(self.logged, 1)

  def test_a_revoked_key_loses_its_node_id(self):
    (old,) = self._key('bank_b')
    node_id = self.state.create_node(ping_interval=30.0, public_key=old)
    self.assertIn(node_id, self.state.node_ids)
    registry.revoke(self.nodes, self.path, 'bank_b')
    self.keys.refresh()
    self.assertNotIn(old, self.state.get_node_public_keys())
    self.assertNotIn(node_id, self.state.node_ids)
    self.assertIsNone(self.state.get_node_id(old))

  def test_a_broken_list_keeps_the_current_keys(self):
    before = set(self.state.get_node_public_keys())
    time.sleep(0.01)  # A new modification time even on coarse clocks.
    with open(self.path, 'a', encoding='utf-8') as f:
      f.write('ecdsa-sha2-nistp384 not-a-key\n')
    self.keys.refresh()
    self.assertEqual(set(self.state.get_node_public_keys()), before)
    self.assertIn('not reloaded', self.logged[-1])


if __name__ == '__main__':
  absltest.main()

"""Flower 1.12's TLS and node authentication, with our credentials and our cryptography.

flwr 1.12.0 asks for cryptography < 43; the project overrides it with its own
(>= 50). These tests start a real SuperLink and SuperNodes on localhost and
check the admission path we rely on: a listed node is admitted over TLS, an
unlisted key is refused, and a plaintext client gets no session.
"""

import os
import signal
import socket
import stat
import subprocess
import sys
import time

import tensorflow as tf

from tffaml import errors
from tffaml.federation import credentials

_BIN = os.path.dirname(sys.executable)
_ADMITTED = 'AuthenticateServerInterceptor: Created node_id='


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# A deadline, not a speed check: each Flower process imports TensorFlow (flwr's
# TensorBoard helper does) and takes about 17 s to start on an idle core, far
# longer beside the rest of the suite.
def _wait_for(path: str, text: str, timeout: float = 240.0) -> bool:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    with open(path, errors='replace') as f:
      if text in f.read():
        return True
    time.sleep(0.25)
  return False


class CredentialsTest(tf.test.TestCase):

  def test_private_files_are_private_and_nothing_is_overwritten(self):
    out = self.create_tempdir().full_path
    tls = credentials.write_tls(out, hosts=['127.0.0.1', 'localhost'])
    private, public = credentials.write_node_key(out, 'bank_a')
    for path in (tls.ca_key, tls.key, private):
      self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
    with open(public) as f:
      self.assertStartsWith(f.read(), 'ecdsa-sha2-nistp384 ')
    with self.assertRaisesRegex(FileExistsError, 'never overwritten'):
      credentials.write_node_key(out, 'bank_a')
    with self.assertRaisesRegex(FileExistsError, 'never overwritten'):
      credentials.write_tls(out, hosts=['localhost'])
    with self.assertRaisesRegex(errors.InputError, 'not an OpenSSH public key'):
      credentials.write_authorized_nodes(os.path.join(out, 'nodes.csv'), [private])
    self.assertFalse(os.path.exists(os.path.join(out, 'nodes.csv')))


class NodeAuthenticationTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.processes = []

  def tearDown(self):
    for process in self.processes:  # Flower's nodes wait on after a refusal: stop them all.
      if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    for process in self.processes:
      try:
        process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    super().tearDown()

  def _start(self, name: str, *args: str) -> str:
    log = os.path.join(self.dir, f'{name}.log')
    with open(log, 'w') as f:
      self.processes.append(subprocess.Popen(
          [os.path.join(_BIN, args[0]), *args[1:]], stdout=f, stderr=subprocess.STDOUT,
          cwd=self.dir, start_new_session=True))
    return log

  def test_only_listed_nodes_are_admitted_and_only_over_tls(self):
    tls = credentials.write_tls(self.dir, hosts=['127.0.0.1'])
    link_key, link_pub = credentials.write_node_key(self.dir, 'superlink')
    listed, unlisted = (credentials.write_node_key(self.dir, n) for n in ('bank_a', 'bank_b'))
    nodes = credentials.write_authorized_nodes(os.path.join(self.dir, 'nodes.csv'), [listed[1]])
    fleet = f'127.0.0.1:{_free_port()}'
    link = self._start(
        'superlink', 'flower-superlink', '--ssl-ca-certfile', tls.ca_certificate,
        '--ssl-certfile', tls.certificate, '--ssl-keyfile', tls.key, '--auth-list-public-keys', nodes,
        '--auth-superlink-private-key', link_key, '--auth-superlink-public-key', link_pub,
        '--fleet-api-address', fleet, '--driver-api-address', f'127.0.0.1:{_free_port()}',
        '--database', ':flwr-in-memory-state:')
    self.assertTrue(_wait_for(link, 'Node authentication enabled with 1 known public keys'),
                    open(link).read())
    self.assertTrue(_wait_for(link, 'Starting Fleet API'), open(link).read())
    node = lambda name, keys: self._start(
        name, 'flower-supernode', '--root-certificates', tls.ca_certificate, '--superlink', fleet,
        '--auth-supernode-private-key', keys[0], '--auth-supernode-public-key', keys[1],
        '--max-retries', '1')
    # Each Flower process takes seconds to start: all three nodes start at once.
    refused = node('bank_b', unlisted)
    plaintext = self._start('plaintext', 'flower-supernode', '--insecure', '--superlink', fleet,
                            '--max-retries', '1')
    node('bank_a', listed)
    self.assertTrue(_wait_for(refused, 'Access denied'), open(refused).read())
    self.assertTrue(_wait_for(link, 'Handshake failed'), open(link).read())
    self.assertTrue(_wait_for(link, _ADMITTED), open(link).read())
    time.sleep(1.0)
    with open(link) as f:
      self.assertEqual(f.read().count(_ADMITTED), 1)  # bank_a only.
    with open(plaintext) as f:
      self.assertNotIn('node_id', f.read())


if __name__ == '__main__':
  tf.test.main()

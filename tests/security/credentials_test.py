"""A federation's credentials: the CA, the SuperLink's certificate, node keys and the admitted list."""

import datetime
import ipaddress
import os
import stat

from absl.testing import absltest
from cryptography import exceptions as cryptography_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from tffaml import errors
from tffaml.security import credentials


def _certificate(path: str) -> x509.Certificate:
  with open(path, 'rb') as f:
    return x509.load_pem_x509_certificate(f.read())


def _private_key(path: str):
  with open(path, 'rb') as f:
    data = f.read()
  if data.startswith(b'-----BEGIN OPENSSH'):
    return serialization.load_ssh_private_key(data, password=None)
  return serialization.load_pem_private_key(data, password=None)


def _public_bytes(key) -> bytes:
  return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _mode(path: str) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


class TlsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def test_the_ca_signs_the_servers_certificate_for_exactly_the_hosts_asked(self):
    files = credentials.write_tls(self.dir, hosts=['coordinator.example', '10.0.0.5', '::1'], days=30)
    ca, server = _certificate(files.ca_certificate), _certificate(files.certificate)
    ca.verify_directly_issued_by(ca)  # Self-signed.
    server.verify_directly_issued_by(ca)
    self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    self.assertFalse(server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    self.assertEqual(san.get_values_for_type(x509.DNSName), ['coordinator.example'])
    self.assertEqual(san.get_values_for_type(x509.IPAddress),
                     [ipaddress.ip_address('10.0.0.5'), ipaddress.ip_address('::1')])
    self.assertLen(list(san), 3)
    self.assertEqual(server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, 'coordinator.example')
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    self.assertEqual(lifetime, datetime.timedelta(days=30, minutes=5))  # Valid from 5 minutes ago (clock skew).
    self.assertLess(server.not_valid_before_utc, datetime.datetime.now(datetime.timezone.utc))

  def test_each_key_belongs_to_its_certificate_and_is_on_the_curve(self):
    files = credentials.write_tls(self.dir, hosts=['localhost'])
    for key_path, certificate_path in ((files.ca_key, files.ca_certificate), (files.key, files.certificate)):
      key = _private_key(key_path)
      self.assertIsInstance(key.curve, credentials.CURVE)
      self.assertEqual(_public_bytes(key.public_key()), _public_bytes(_certificate(certificate_path).public_key()))

  def test_another_cas_certificate_does_not_verify(self):
    ours = credentials.write_tls(os.path.join(self.dir, 'ours'), hosts=['localhost'])
    theirs = credentials.write_tls(os.path.join(self.dir, 'theirs'), hosts=['localhost'])
    # Same subject names, other keys: only the signature tells them apart.
    self.assertEqual(_certificate(ours.ca_certificate).subject, _certificate(theirs.ca_certificate).subject)
    with self.assertRaises(cryptography_exceptions.InvalidSignature):
      _certificate(theirs.certificate).verify_directly_issued_by(_certificate(ours.ca_certificate))

  def test_private_files_are_private_and_public_ones_readable(self):
    files = credentials.write_tls(self.dir, hosts=['127.0.0.1', 'localhost'])
    private, public = credentials.write_node_key(self.dir, 'bank_a')
    for path in (files.ca_key, files.key, private):
      self.assertEqual(_mode(path), 0o600, path)
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (files.ca_certificate, files.certificate, public):
      self.assertEqual(_mode(path), 0o666 & ~umask, path)  # As any file the user writes.

  def test_nothing_is_overwritten_and_nothing_half_written(self):
    with open(os.path.join(self.dir, 'server.key'), 'w') as f:
      f.write('precious')
    with self.assertRaisesRegex(FileExistsError, 'server.key exists; credentials are never overwritten'):
      credentials.write_tls(self.dir, hosts=['localhost'])
    self.assertEqual(os.listdir(self.dir), ['server.key'])  # No CA without its server certificate.
    with self.assertRaisesRegex(ValueError, 'hosts must name the coordinator'):
      credentials.write_tls(os.path.join(self.dir, 'none'), hosts=[])


class NodeKeysTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def test_a_node_key_is_an_openssh_p384_pair(self):
    private, public = credentials.write_node_key(self.dir, 'bank_a')
    self.assertEqual((private, public), (os.path.join(self.dir, 'bank_a'), os.path.join(self.dir, 'bank_a.pub')))
    with open(public) as f:
      self.assertStartsWith(f.read(), 'ecdsa-sha2-nistp384 ')
    key = _private_key(private)
    self.assertIsInstance(key.curve, credentials.CURVE)
    with open(public, 'rb') as f:
      self.assertEqual(_public_bytes(serialization.load_ssh_public_key(f.read())), _public_bytes(key.public_key()))
    with self.assertRaisesRegex(FileExistsError, 'never overwritten'):
      credentials.write_node_key(self.dir, 'bank_a')

  def test_the_admitted_list_has_one_public_key_a_line(self):
    keys = [credentials.write_node_key(self.dir, name)[1] for name in ('bank_a', 'bank_b')]
    listed = credentials.write_authorized_nodes(os.path.join(self.dir, 'nodes.csv'), keys)
    with open(listed, 'rb') as f:
      lines = f.read().splitlines()
    expected = []
    for key in keys:
      with open(key, 'rb') as f:
        expected.append(f.read().strip())
    self.assertEqual(lines, expected)

  def test_only_p384_public_keys_are_admitted(self):
    private, _ = credentials.write_node_key(self.dir, 'bank_a')
    others = {
        'p256.pub': ec.generate_private_key(ec.SECP256R1()).public_key(),
        'ed25519.pub': ed25519.Ed25519PrivateKey.generate().public_key(),
    }
    paths = {private: 'not an OpenSSH public key.*never a private one'}
    for name, key in others.items():
      path = os.path.join(self.dir, name)
      with open(path, 'wb') as f:
        f.write(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
      paths[path] = 'not a secp384r1 EC key'
    nodes = os.path.join(self.dir, 'nodes.csv')
    for path, message in paths.items():
      with self.subTest(os.path.basename(path)), self.assertRaisesRegex(errors.InputError, f'^{path}: {message}'):
        credentials.write_authorized_nodes(nodes, [path])
      self.assertFalse(os.path.exists(nodes))


class FederationTest(absltest.TestCase):

  def test_a_federations_files_are_found_again_and_a_missing_one_is_named(self):
    out = os.path.join(self.create_tempdir().full_path, 'pki')
    written = credentials.write_federation(out, hosts=['127.0.0.1'], institutions=['bank_a', 'bank_b'])
    self.assertEqual(credentials.federation_files(out), written)
    self.assertCountEqual(os.listdir(written.nodes), ['bank_a', 'bank_a.pub', 'bank_b', 'bank_b.pub'])
    with open(written.authorized_nodes) as f:
      self.assertLen(f.read().splitlines(), 2)  # The institutions', not the SuperLink's own key.
    with self.assertRaisesRegex(FileExistsError, 'is not empty; credentials are never overwritten'):
      credentials.write_federation(out, hosts=['127.0.0.1'], institutions=['bank_c'])
    os.remove(written.tls.key)
    with self.assertRaisesRegex(errors.InputError, f'^{out}: missing {written.tls.key}; .*scripts/pki.py'):
      credentials.federation_files(out)


if __name__ == '__main__':
  absltest.main()

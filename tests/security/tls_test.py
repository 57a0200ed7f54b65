"""The TFF cluster's mutual TLS: its certificates, and the proxy's handshake on localhost (no worker)."""

import os
import stat
import tempfile

from absl.testing import absltest
from cryptography import exceptions as cryptography_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import serialization
import grpc
import portpicker

from tffaml import errors
from tffaml.security import credentials
from tffaml.security import tls

_ROLES = ('ca', 'worker', 'coordinator')
_OTHER_SERVICE_CALL = '/grpc.health.v1.Health/Check'  # Not the executor service: the proxy refuses it.


def _certificate(files: tls.ClusterTls, role: str) -> x509.Certificate:
  (data,) = files.read('ca_certificate' if role == 'ca' else f'{role}_certificate')
  return x509.load_pem_x509_certificate(data)


def _san(certificate: x509.Certificate) -> list[str]:
  try:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
  except x509.ExtensionNotFound:
    return []
  return [str(name.value) for name in names]


class CertificatesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def test_the_ca_signs_both_roles_and_only_the_worker_names_hosts(self):
    files = tls.write_cluster_tls(self.dir, hosts=['worker1.lab', '10.0.0.5'])
    ca = _certificate(files, 'ca')
    ca.verify_directly_issued_by(ca)
    self.assertTrue(ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    for role in ('worker', 'coordinator'):
      certificate = _certificate(files, role)
      certificate.verify_directly_issued_by(ca)
      self.assertFalse(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca, role)
      (key,) = files.read(f'{role}_key')
      key = serialization.load_pem_private_key(key, password=None)
      self.assertIsInstance(key.curve, credentials.CURVE)
      self.assertEqual(key.public_key().public_numbers(), certificate.public_key().public_numbers(), role)
    self.assertEqual(_san(_certificate(files, 'worker')), ['worker1.lab', '10.0.0.5'])
    self.assertEqual(_san(_certificate(files, 'coordinator')), [])  # A client: it names no host.

  def test_another_clusters_certificates_do_not_verify(self):
    ours = tls.write_cluster_tls(os.path.join(self.dir, 'ours'), hosts=['localhost'])
    theirs = tls.write_cluster_tls(os.path.join(self.dir, 'theirs'), hosts=['localhost'])
    for role in ('worker', 'coordinator'):
      with self.subTest(role), self.assertRaises(cryptography_exceptions.InvalidSignature):
        _certificate(theirs, role).verify_directly_issued_by(_certificate(ours, 'ca'))

  def test_private_keys_are_private(self):
    files = tls.write_cluster_tls(self.dir, hosts=['localhost'])
    for path in (files.ca_key, files.worker_key, files.coordinator_key):
      self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)

  def test_nothing_is_overwritten_and_nothing_half_written(self):
    with open(os.path.join(self.dir, 'coordinator.key'), 'w') as f:
      f.write('precious')
    with self.assertRaisesRegex(FileExistsError, 'coordinator.key exists; credentials are never overwritten'):
      tls.write_cluster_tls(self.dir, hosts=['localhost'])
    self.assertEqual(os.listdir(self.dir), ['coordinator.key'])
    with self.assertRaisesRegex(ValueError, "hosts must name the workers' machines"):
      tls.write_cluster_tls(os.path.join(self.dir, 'none'), hosts=[])

  def test_a_missing_file_is_named_with_the_fix(self):
    files = tls.ClusterTls(self.dir)
    with self.assertRaisesRegex(errors.InputError, f'^{files.worker_key}: not found; .*scripts/pki.py --cluster'):
      files.read('worker_key')


class ProxyTest(absltest.TestCase):
  """The proxy's TLS, with no worker behind it: a call that passes TLS reaches the proxy's own refusal."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    root = tempfile.mkdtemp()
    cls.files = tls.write_cluster_tls(os.path.join(root, 'tls_test_ours'), hosts=['localhost'])
    cls.stranger = tls.write_cluster_tls(os.path.join(root, 'tls_test_theirs'), hosts=['localhost'])
    cls.port = portpicker.pick_unused_port()
    cls.server = tls.start_proxy(listen=f'localhost:{cls.port}', worker_port=portpicker.pick_unused_port(),
                                 files=cls.files, threads=2)

  @classmethod
  def tearDownClass(cls):
    cls.server.stop(grace=None)
    super().tearDownClass()

  def _call(self, channel: grpc.Channel) -> grpc.StatusCode:
    with channel:
      try:
        channel.unary_unary(_OTHER_SERVICE_CALL)(b'', timeout=10)
      except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK

  def test_the_coordinators_certificate_passes_and_other_services_are_refused(self):
    self.assertEqual(self._call(tls.channel(f'localhost:{self.port}', self.files)),
                     grpc.StatusCode.UNIMPLEMENTED)

  def test_a_client_without_the_clusters_certificate_gets_no_connection(self):
    ca, = self.files.read('ca_certificate')
    key, certificate = self.stranger.read('coordinator_key', 'coordinator_certificate')
    clients = {
        'in the clear': tls.channel(f'localhost:{self.port}', None),
        "another cluster's certificate": tls.channel(f'localhost:{self.port}', self.stranger),
        # Trusting our CA, but signed by another: the proxy requires the client's certificate.
        'right CA, foreign client certificate': grpc.secure_channel(
            f'localhost:{self.port}', grpc.ssl_channel_credentials(ca, key, certificate)),
        'right CA, no client certificate': grpc.secure_channel(
            f'localhost:{self.port}', grpc.ssl_channel_credentials(ca)),
        # The worker's certificate names localhost, not 127.0.0.1.
        'a host the certificate does not name': tls.channel(f'127.0.0.1:{self.port}', self.files),
    }
    for name, client in clients.items():
      with self.subTest(name):
        self.assertEqual(self._call(client), grpc.StatusCode.UNAVAILABLE)


if __name__ == '__main__':
  absltest.main()

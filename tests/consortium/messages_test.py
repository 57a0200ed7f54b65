"""Signed messages: what verifies and what is refused, on hand-built blobs."""

import hashlib
import io
import json
import os

from absl.testing import absltest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric import rsa
import numpy as np

from tests import helpers
from tffaml import errors
from tffaml.consortium import messages
from tffaml.security import credentials

_MESSAGE = messages.Message('train', {'run': 'r1', 'round': 3},
                            (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([7], np.int64)))
_NOT_SIGNED = 'does not verify with its registered key'


def _ec_key():
  return ec.generate_private_key(credentials.CURVE())


def _resigned(key, header, arrays_bytes: bytes, *, header_bytes: bytes = b'') -> bytes:
  """A blob in the wire form, validly signed by `key`, around any header and arrays bytes."""
  header_bytes = header_bytes or json.dumps(header).encode()
  body = len(header_bytes).to_bytes(4, 'big') + header_bytes + arrays_bytes
  signature = key.sign(body, ec.ECDSA(hashes.SHA384()))
  return len(signature).to_bytes(2, 'big') + signature + body


class SealTest(absltest.TestCase):

  def test_a_sealed_message_unseals_as_it_was_with_either_kind_of_key(self):
    for key in (ed25519.Ed25519PrivateKey.generate(), _ec_key()):
      got = messages.unseal(messages.seal(_MESSAGE, key), key.public_key(), sender='bank_a', kinds=['train'])
      self.assertEqual((got.kind, got.header), ('train', {'run': 'r1', 'round': 3}))
      self.assertLen(got.arrays, 2)
      for sent, received in zip(_MESSAGE.arrays, got.arrays):
        self.assertEqual(received.dtype, sent.dtype)
        np.testing.assert_array_equal(received, sent)

  def test_any_altered_byte_is_refused(self):
    key = _ec_key()
    blob = messages.seal(_MESSAGE, key)
    header_at = blob.index(b'"round"')
    # A header byte, an array byte (the last one of the .npz's data), the signature's last byte.
    signature_end = 2 + int.from_bytes(blob[:2], 'big')
    for position in (header_at + 9, len(blob) - 30, signature_end - 1):
      altered = bytearray(blob)
      altered[position] ^= 0x01
      with self.subTest(position=position), self.assertRaisesRegex(messages.Refused, f'bank_a {_NOT_SIGNED}'):
        messages.unseal(bytes(altered), key.public_key(), sender='bank_a', kinds=['train'])

  def test_another_senders_signature_is_refused(self):
    blob = messages.seal(_MESSAGE, _ec_key())
    for key in (_ec_key(), ed25519.Ed25519PrivateKey.generate()):
      with self.assertRaisesRegex(messages.Refused, _NOT_SIGNED):
        messages.unseal(blob, key.public_key(), sender='bank_a', kinds=['train'])

  def test_a_message_of_a_kind_not_due_is_refused(self):
    key = _ec_key()
    with self.assertRaisesRegex(messages.Refused, r"bank_a sent a 'train' message where one of \['hello'\]"):
      messages.unseal(messages.seal(_MESSAGE, key), key.public_key(), sender='bank_a', kinds=['hello'])

  def test_truncated_or_empty_blobs_are_refused(self):
    key = _ec_key()
    blob = messages.seal(_MESSAGE, key)
    for bad in (b'', b'\x00', blob[:40], blob[:-1], blob + b'\x00'):
      with self.subTest(length=len(bad)), self.assertRaisesRegex(messages.Refused, _NOT_SIGNED):
        messages.unseal(bad, key.public_key(), sender='bank_a', kinds=['train'])

  def test_a_signed_but_malformed_body_is_refused(self):
    # What a registered node's bug (or malice) sends: it must be refused like any
    # bad reply (the coordinator catches Refused), not stop the coordinator.
    key = _ec_key()
    objects = io.BytesIO()
    np.savez(objects, np.array([{'a': 1}], dtype=object))  # Needs a pickle to load.
    npy = io.BytesIO()
    np.save(npy, np.zeros(2))  # An .npy, not an .npz.
    cases = {
        'pickled arrays': _resigned(key, {'kind': 'train'}, objects.getvalue()),
        'not an .npz': _resigned(key, {'kind': 'train'}, npy.getvalue()),
        'cut .npz': _resigned(key, {'kind': 'train'}, objects.getvalue()[:20]),
        'header not an object': _resigned(key, ['train'], b''),
        'header not JSON': _resigned(key, None, b'', header_bytes=b'{not json'),
    }
    for name, blob in cases.items():
      with self.subTest(name), self.assertRaisesRegex(messages.Refused, 'bank_a sent a malformed message'):
        messages.unseal(blob, key.public_key(), sender='bank_a', kinds=['train'])

  def test_peek_reads_without_verifying(self):
    altered = bytearray(messages.seal(_MESSAGE, _ec_key()))
    altered[-30] ^= 0x01  # In the arrays: the header still reads.
    peeked = messages.peek(bytes(altered))
    self.assertEqual((peeked.kind, peeked.header, peeked.arrays), ('train', {'run': 'r1', 'round': 3}, ()))

  def test_digest_is_the_blobs_sha256(self):
    blob = messages.seal(_MESSAGE, _ec_key())
    self.assertEqual(messages.digest(blob), hashlib.sha256(blob).hexdigest())
    self.assertNotEqual(messages.digest(blob), messages.digest(blob + b'\x00'))


class KeyFilesTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def _write(self, name: str, data: bytes) -> str:
    return helpers.write_bytes(self.dir, name, data)

  def test_the_keys_pki_writes_load_and_sign_for_each_other(self):
    private, public = credentials.write_node_key(self.dir, 'bank_a')
    blob = messages.seal(_MESSAGE, messages.load_private_key(private))
    self.assertEqual(messages.unseal(blob, messages.load_public_key(public), sender='bank_a',
                                     kinds=['train']).header['round'], 3)
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_private = self._write('coordinator.key', ed.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ed_public = self._write('coordinator.pub', ed.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    blob = messages.seal(_MESSAGE, messages.load_private_key(ed_private))
    messages.unseal(blob, messages.load_public_key(ed_public), sender='the coordinator', kinds=['train'])

  def test_unusable_key_files_are_one_clear_message(self):
    key = _ec_key()
    pem_private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    ssh_public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b'passphrase'))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # Small: only its type matters.
    rsa_private = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    rsa_public = rsa_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH)
    cases = [
        (messages.load_private_key, 'missing', None, 'cannot read the key'),
        (messages.load_private_key, 'public_as_private', ssh_public, 'not a private key'),
        (messages.load_private_key, 'garbage', b'hello', 'not a private key'),
        (messages.load_private_key, 'encrypted', encrypted, 'the key is encrypted with a passphrase'),
        (messages.load_private_key, 'rsa', rsa_private, 'the key is RSA; messages are signed with Ed25519 or EC'),
        (messages.load_public_key, 'private_as_public', pem_private, 'not a public key'),
        (messages.load_public_key, 'garbage.pub', b'hello', 'not a public key'),
        (messages.load_public_key, 'unknown.pub', b'ssh-foo AAAA', 'not a public key'),
        (messages.load_public_key, 'rsa.pub', rsa_public, 'the key is RSA; messages are signed with Ed25519 or EC'),
    ]
    for load, name, data, message in cases:
      path = os.path.join(self.dir, name) if data is None else self._write(name, data)
      with self.subTest(name), self.assertRaisesRegex(errors.InputError, f'^{path}: {message}'):
        load(path)


if __name__ == '__main__':
  absltest.main()

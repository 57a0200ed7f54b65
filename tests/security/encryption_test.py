"""AES-256-GCM sealing of bytes and of model packages; the key files."""

import base64
import io
import os
import stat
import subprocess
import sys
import tarfile
from unittest import mock

from absl.testing import absltest

from tests import helpers
from tffaml import errors
from tffaml.security import encryption

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_KEY = bytes(range(32))
_OTHER_KEY = bytes(range(1, 33))


class SealTest(absltest.TestCase):

  def test_round_trip_hides_the_data(self):
    blob = encryption.seal(b'weights of the model', _KEY)
    self.assertStartsWith(blob, encryption.MAGIC)
    self.assertNotIn(b'weights', blob)
    # MAGIC, a 12-byte nonce, then as many ciphertext bytes as data and a 16-byte tag.
    self.assertLen(blob, len(encryption.MAGIC) + 12 + len(b'weights of the model') + 16)
    self.assertEqual(encryption.unseal(blob, _KEY, source='f'), b'weights of the model')

  def test_every_seal_has_a_fresh_nonce(self):
    first, second = encryption.seal(b'same', _KEY), encryption.seal(b'same', _KEY)
    self.assertNotEqual(first, second)
    self.assertEqual(encryption.unseal(second, _KEY, source='f'), b'same')

  def test_wrong_key_or_any_altered_byte_is_refused(self):
    blob = encryption.seal(b'weights of the model', _KEY)
    with self.assertRaisesRegex(encryption.DecryptionError, '^f: does not authenticate: wrong key'):
      encryption.unseal(blob, _OTHER_KEY, source='f')
    # In the nonce, the ciphertext and the tag (MAGIC is checked as the format).
    for position in (len(encryption.MAGIC), len(encryption.MAGIC) + 12, len(blob) - 1):
      altered = bytearray(blob)
      altered[position] ^= 0x01
      with self.subTest(position=position), self.assertRaisesRegex(
          encryption.DecryptionError, 'does not authenticate: wrong key, or the file was altered'):
        encryption.unseal(bytes(altered), _KEY, source='f')

  def test_the_context_is_bound(self):
    blob = encryption.seal(b'state of round 2', _KEY, context=b'round 2')
    self.assertEqual(encryption.unseal(blob, _KEY, source='f', context=b'round 2'), b'state of round 2')
    for context in (b'round 1', b''):
      with self.subTest(context=context), self.assertRaises(encryption.DecryptionError):
        encryption.unseal(blob, _KEY, source='f', context=context)

  def test_what_is_not_our_format_is_refused(self):
    blob = encryption.seal(b'x', _KEY)
    for bad in (b'', b'plain text', blob[:len(encryption.MAGIC) + 27], b'X' + blob[1:]):
      with self.subTest(bad=bad[:20]), self.assertRaisesRegex(
          encryption.DecryptionError, '^f: not a tffaml encrypted file'):
        encryption.unseal(bad, _KEY, source='f')

  def test_only_aes_256_keys_are_used(self):
    # AESGCM itself also takes 16- and 24-byte keys (AES-128, -192).
    for length in (16, 24, 31):
      with self.subTest(length=length), self.assertRaisesRegex(ValueError, f'32 bytes, got {length}'):
        encryption.seal(b'x', bytes(length))
      with self.subTest(length=length), self.assertRaisesRegex(ValueError, f'32 bytes, got {length}'):
        encryption.unseal(encryption.seal(b'x', _KEY), bytes(length), source='f')


class KeyTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path

  def _write(self, name: str, data: bytes) -> str:
    return helpers.write_bytes(self.dir, name, data)

  def test_a_generated_key_is_32_random_bytes_readable_by_its_owner_only(self):
    first = encryption.generate_key(os.path.join(self.dir, 'a.key'))
    second = encryption.generate_key(os.path.join(self.dir, 'b.key'))
    self.assertEqual(stat.S_IMODE(os.stat(first).st_mode), 0o600)
    key = encryption.load_key(key_file=first)
    self.assertLen(key, 32)
    self.assertNotEqual(key, encryption.load_key(key_file=second))
    with self.assertRaisesRegex(FileExistsError, 'a.key exists; keys are never overwritten'):
      encryption.generate_key(first)
    self.assertEqual(encryption.load_key(key_file=first), key)

  def test_key_from_environment(self):
    with mock.patch.dict(os.environ, {'TFFAML_TEST_KEY': base64.b64encode(_KEY).decode() + '\n'}):
      self.assertEqual(encryption.load_key(key_env='TFFAML_TEST_KEY'), _KEY)

  def test_unusable_keys_are_one_clear_message(self):
    cases = {
        'short': (self._write('short', b'c2hvcnQ=\n'), r'short: an AES-256 key is 32 bytes, got 5'),
        'not base64': (self._write('text', b'not a key!\n'), r'text: not base64'),
        'raw bytes': (self._write('raw', bytes(range(200, 232))), r'raw: not base64'),
    }
    for name, (path, message) in cases.items():
      with self.subTest(name), self.assertRaisesRegex(errors.InputError, message):
        encryption.load_key(key_file=path)
    with self.assertRaisesRegex(FileNotFoundError, 'missing: key file not found'):
      encryption.load_key(key_file=os.path.join(self.dir, 'missing'))
    environment = {'TFFAML_SHORT': 'c2hvcnQ=', 'TFFAML_ACCENT': 'clé'}
    with mock.patch.dict(os.environ, environment):
      os.environ.pop('TFFAML_UNSET', None)
      for variable, message in (('TFFAML_SHORT', r'\$TFFAML_SHORT: an AES-256 key is 32 bytes, got 5'),
                                ('TFFAML_ACCENT', r'\$TFFAML_ACCENT: not base64'),
                                ('TFFAML_UNSET', 'environment variable TFFAML_UNSET is not set')):
        with self.subTest(variable), self.assertRaisesRegex(errors.InputError, message):
          encryption.load_key(key_env=variable)

  def test_exactly_one_source_is_asked(self):
    for kwargs in ({}, {'key_file': 'k', 'key_env': 'K'}):
      with self.subTest(kwargs), self.assertRaisesRegex(errors.InputError, 'exactly one of --key_file and'):
        encryption.load_key(**kwargs)


class PackageTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.package = os.path.join(self.root, 'package')
    os.makedirs(os.path.join(self.package, 'variables'))
    for name, text in (('saved_model.pb', 'graph'), ('variables/v', 'weights')):
      with open(os.path.join(self.package, name), 'w') as f:
        f.write(text)
    self.key = encryption.load_key(key_file=encryption.generate_key(os.path.join(self.root, 'k')))
    self.sealed = os.path.join(self.root, 'package.enc')
    encryption.encrypt_package(self.package, self.sealed, self.key)

  def test_round_trip(self):
    out = os.path.join(self.root, 'out')
    encryption.decrypt_package(self.sealed, out, self.key)
    with open(os.path.join(out, 'variables', 'v')) as f:
      self.assertEqual(f.read(), 'weights')
    with open(self.sealed, 'rb') as f:
      self.assertNotIn(b'weights', f.read())

  def test_wrong_key_or_altered_file_fails_loudly_and_writes_nothing(self):
    out = os.path.join(self.root, 'out')
    other = encryption.load_key(key_file=encryption.generate_key(os.path.join(self.root, 'k2')))
    with self.assertRaisesRegex(encryption.DecryptionError, 'wrong key, or the file was altered'):
      encryption.decrypt_package(self.sealed, out, other)
    with open(self.sealed, 'r+b') as f:
      f.seek(-5, os.SEEK_END)
      byte = f.read(1)
      f.seek(-5, os.SEEK_END)
      f.write(bytes([byte[0] ^ 0x80]))
    with self.assertRaisesRegex(encryption.DecryptionError, 'wrong key, or the file was altered'):
      encryption.decrypt_package(self.sealed, out, self.key)
    self.assertFalse(os.path.exists(out))

  def test_decrypt_never_replaces_a_directory_unasked(self):
    out = os.path.join(self.root, 'bank_files')
    os.makedirs(out)
    with open(os.path.join(out, 'ledger.xlsx'), 'w') as f:
      f.write('irreplaceable')
    with self.assertRaisesRegex(FileExistsError, 'exists and is not empty.*--overwrite'):
      encryption.decrypt_package(self.sealed, out, self.key)
    self.assertEqual(os.listdir(out), ['ledger.xlsx'])
    key_file = os.path.join(self.root, 'k')
    done = subprocess.run([sys.executable, 'scripts/encrypt.py', '--decrypt', f'--input={self.sealed}',
                           f'--model_dir={out}', f'--key_file={key_file}'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    self.assertEqual(done.returncode, 1)
    self.assertIn('exists and is not empty', done.stderr)
    self.assertEqual(os.listdir(out), ['ledger.xlsx'])
    encryption.decrypt_package(self.sealed, out, self.key, overwrite=True)  # Asked for: replaced.
    self.assertEqual(sorted(os.listdir(out)), ['saved_model.pb', 'variables'])
    empty = os.path.join(self.root, 'empty')
    os.makedirs(empty)
    encryption.decrypt_package(self.sealed, empty, self.key)  # An empty directory loses nothing.
    self.assertEqual(sorted(os.listdir(empty)), ['saved_model.pb', 'variables'])

  def test_links_are_neither_encrypted_nor_decrypted(self):
    # A decrypted hard link would be a package file with two names (which verify refuses).
    weights = os.path.join(self.package, 'variables', 'v')
    os.link(weights, os.path.join(self.package, 'variables', 'v2'))
    with self.assertRaisesRegex(errors.InputError, r"'./variables/v2?' is a hard link; .* cp -r"):
      encryption.encrypt_package(self.package, os.path.join(self.root, 'linked.enc'), self.key)
    archive = io.BytesIO()  # A hard link sealed by another tool, under the right key.
    with tarfile.open(fileobj=archive, mode='w') as tar:
      tar.add(self.package, arcname='.')
    sealed = os.path.join(self.root, 'linked.enc')
    with open(sealed, 'wb') as f:
      f.write(encryption.seal(archive.getvalue(), self.key))
    out = os.path.join(self.root, 'out')
    with self.assertRaisesRegex(errors.InputError, rf"{sealed}: './variables/v2?' is a hard link"):
      encryption.decrypt_package(sealed, out, self.key)
    self.assertFalse(os.path.exists(out))


if __name__ == '__main__':
  absltest.main()

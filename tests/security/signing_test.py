import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from unittest import mock

from absl.testing import parameterized
import numpy as np
import pandas as pd
import tensorflow as tf

from tests import helpers
from tffaml import errors
from tffaml import features
from tffaml.data import interface
from tffaml.data import schema as schema_lib
from tffaml.export import saved_model
from tffaml.export import scoring
from tffaml.security import signing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _flip_a_bit(package):
  path = os.path.join(package, 'variables', 'variables.data-00000-of-00001')
  with open(path, 'r+b') as f:
    byte = f.read(1)
    f.seek(0)
    f.write(bytes([byte[0] ^ 1]))


def _export_shifted_rate_model(model_dir):
  """helpers.export_rate_model's package with other weights: p(default) = sigmoid(rate - 5)."""
  schema = schema_lib.Schema.from_dict(helpers.SCHEMA)
  inputs = features.keras_inputs(schema)
  probability = tf.keras.layers.Lambda(lambda r: tf.sigmoid(r - 5.0)[:, None])(inputs['rate'])
  space = features.compute_feature_space(helpers.load_federation(), min_category_count=1)
  saved_model.export(tf.keras.Model(inputs, probability), model_dir, schema=schema,
                     interface=interface.table_interface(schema), threshold=0.5,
                     metadata={'feature_space': space.to_dict()}, hardening=saved_model.Hardening())


def _rewrite_signature(package, change):
  path = os.path.join(package, signing.SIGNATURE_FILE)
  with open(path) as f:
    signed = json.load(f)
  change(signed)
  with open(path, 'w') as f:
    json.dump(signed, f)


class SigningTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tf.compat.v1.test.get_temp_dir()
    cls.package = os.path.join(cls.root, 'signed_export')
    helpers.export_rate_model(cls.package)
    cls.private, cls.public = signing.generate_keys(os.path.join(cls.root, 'keys'))
    _, cls.other_public = signing.generate_keys(os.path.join(cls.root, 'other_keys'))
    signing.sign(cls.package, cls.private)
    cls.loans = os.path.join(cls.root, 'loans.csv')
    helpers.institution_frame(20, seed=0).to_csv(cls.loans, index=False)

  def copy(self):
    target = os.path.join(self.create_tempdir().full_path, 'export')
    shutil.copytree(self.package, target)
    return target

  def test_signed_package_verifies_and_scores(self):
    self.assertIn('saved_model.pb', signing.verify(self.package, self.public))
    output = os.path.join(self.create_tempdir().full_path, 'scored.csv')
    self.assertEqual(scoring.score_csv(self.package, self.loans, output, public_key=self.public).scored, 20)

  @parameterized.named_parameters(
      ('flipped_bit', _flip_a_bit, None,
       r"file 'variables/variables.data-00000-of-00001' was modified"),
      ('added_file', lambda p: open(os.path.join(p, 'assets', 'extra.txt'), 'w').close(), None,
       r"file\(s\) \['assets/extra.txt'\] are not in the signed manifest"),
      ('missing_file', lambda p: os.remove(os.path.join(p, 'metadata.json')), None,
       r"signed file 'metadata.json' is missing"),
      ('wrong_key', lambda p: None, 'other',
       r'the signature does not verify with .*other_keys/signing_key.pub.pem'),
      ('unsigned', lambda p: os.remove(os.path.join(p, signing.SIGNATURE_FILE)), None,
       r'not signed \(no tffaml-signature.json\); refusing to load it'),
  )
  def test_tampered_package_is_refused(self, tamper, key, message):
    package = self.copy()
    os.makedirs(os.path.join(package, 'assets'), exist_ok=True)
    tamper(package)
    public = self.other_public if key == 'other' else self.public
    with self.assertRaisesRegex(signing.VerificationError, message):
      signing.verify(package, public)
    output = os.path.join(self.create_tempdir().full_path, 'scored.csv')
    with self.assertRaisesRegex(signing.VerificationError, message):
      scoring.score_csv(package, self.loans, output, public_key=public)
    self.assertFalse(os.path.exists(output))
    # The command line: verify.py fails, score.py refuses.
    verify = subprocess.run([sys.executable, 'scripts/verify.py', f'--model_dir={package}',
                             f'--public_key={public}'], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    self.assertEqual(verify.returncode, 1)
    self.assertRegex(verify.stderr, 'REFUSED: .*' + message)

  @parameterized.named_parameters(
      ('directory_link_outside', lambda p, out: os.symlink(out, os.path.join(p, 'assets.extra')),
       r"'assets.extra' is a symbolic link"),
      ('file_link_to_a_device', lambda p, out: os.symlink('/dev/zero', os.path.join(p, 'variables', 'z')),
       r"'variables/z' is a symbolic link"),
      ('fifo', lambda p, out: os.mkfifo(os.path.join(p, 'variables', 'pipe')), r"'variables/pipe' is a FIFO"),
      ('signature_replaced_by_a_link', lambda p, out: (
          os.replace(os.path.join(p, signing.SIGNATURE_FILE), os.path.join(out, 'sig.json')),
          os.symlink(os.path.join(out, 'sig.json'), os.path.join(p, signing.SIGNATURE_FILE))),
       r"'tffaml-signature.json' is a symbolic link"),
      ('extra_empty_directory', lambda p, out: os.makedirs(os.path.join(p, 'extra', 'deeper')),
       r"directories \['extra', 'extra/deeper'\] are not in the signed manifest"),
  )
  def test_whole_tree_is_covered_and_special_entries_are_refused_unread(self, tamper, message):
    package = self.copy()
    outside = self.create_tempdir().full_path
    tamper(package, outside)
    # In a child process with a deadline: reading a FIFO would block forever.
    verify = subprocess.run([sys.executable, 'scripts/verify.py', f'--model_dir={package}',
                             f'--public_key={self.public}'], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    self.assertEqual(verify.returncode, 1)
    self.assertRegex(verify.stderr, 'REFUSED: .*' + message)
    output = os.path.join(self.create_tempdir().full_path, 'scored.csv')
    with self.assertRaisesRegex(signing.VerificationError, message):
      scoring.score_csv(package, self.loans, output, public_key=self.public)
    self.assertFalse(os.path.exists(output))

  def test_files_rewritten_after_verification_are_not_what_is_scored(self):
    # Scoring verifies, reads the metadata, then loads the model: a writer that
    # rewrites the package's files in place in between swaps the weights.
    package = self.copy()
    swap = os.path.join(self.create_tempdir().full_path, 'swap')
    _export_shifted_rate_model(swap)
    real_read_metadata = saved_model.read_metadata
    loaded_from = []

    def swap_then_read(model_dir):
      for name in signing.manifest(swap)['files']:
        if os.path.exists(os.path.join(package, name)):
          shutil.copyfile(os.path.join(swap, name), os.path.join(package, name))  # Same inode.
      loaded_from.append(model_dir)
      return real_read_metadata(model_dir)

    output = os.path.join(self.create_tempdir().full_path, 'scored.csv')
    with mock.patch.object(saved_model, 'read_metadata', swap_then_read):
      scoring.score_csv(package, self.loans, output, public_key=self.public)
    scored = pd.read_csv(output)
    self.assertAllClose(scored['probability'], 1 / (1 + np.exp(-(scored['rate'] - 15.0))), atol=1e-5)
    with self.assertRaisesRegex(signing.VerificationError, 'was modified'):  # The swap did happen.
      signing.verify(package, self.public)
    self.assertFalse(os.path.exists(loaded_from[0]))  # The private copy is gone.

  def test_verified_copy_holds_the_verified_bytes_and_is_removed_also_on_errors(self):
    package = self.copy()
    weights = os.path.join('variables', 'variables.data-00000-of-00001')
    with open(os.path.join(package, weights), 'rb') as f:
      signed_bytes = f.read()
    temp = self.create_tempdir().full_path
    with mock.patch.object(tempfile, 'tempdir', temp):
      with signing.verified_copy(package, self.public) as copy:
        _flip_a_bit(package)
        with open(os.path.join(copy, weights), 'rb') as f:
          self.assertEqual(f.read(), signed_bytes)
        self.assertEqual(os.stat(os.path.dirname(copy)).st_mode & 0o077, 0)  # Only we can enter it.
        self.assertIn('saved_model.pb', signing.verify(copy, self.public))
      self.assertEqual(os.listdir(temp), [])
      with self.assertRaisesRegex(signing.VerificationError, 'was modified'):
        with signing.verified_copy(package, self.public):
          self.fail('a modified package was yielded')
      self.assertEqual(os.listdir(temp), [])

  @parameterized.named_parameters(
      ('weights', os.path.join('variables', 'variables.data-00000-of-00001')),
      ('signature', signing.SIGNATURE_FILE),
  )
  def test_a_file_with_another_hard_link_is_refused(self, name):
    package = self.copy()
    os.link(os.path.join(package, name), os.path.join(self.create_tempdir().full_path, 'outside'))
    message = rf"file '{name}' has 2 hard links; .* Copy the package with cp -r"
    with self.assertRaisesRegex(signing.VerificationError, message):
      signing.verify(package, self.public)
    output = os.path.join(self.create_tempdir().full_path, 'scored.csv')
    with self.assertRaisesRegex(signing.VerificationError, message):
      scoring.score_csv(package, self.loans, output, public_key=self.public)
    self.assertFalse(os.path.exists(output))

  def test_an_oversized_signature_file_is_refused_unread(self):
    package = self.copy()
    path = os.path.join(package, signing.SIGNATURE_FILE)
    size = 64 << 20
    with open(path, 'r+b') as f:
      f.truncate(size)  # Sparse: the valid signature, then a hole of 64 MiB.
    tracemalloc.start()
    try:
      with self.assertRaisesRegex(signing.VerificationError,
                                  re.escape(f'{path}: {size:,} bytes; a signature file is at most')):
        signing.verify(package, self.public)
      _, peak = tracemalloc.get_traced_memory()
    finally:
      tracemalloc.stop()
    self.assertLess(peak, 1 << 20)  # Not even its first MiB was read.

  @parameterized.named_parameters(
      ('extra_field', lambda s: s.update(comment='unsigned text'), r"unknown field\(s\) \['comment'\]"),
      ('missing_field', lambda s: s.pop('public_key_fingerprint'),
       r"missing field\(s\) \['public_key_fingerprint'\]"),
  )
  def test_a_signature_file_with_fields_not_signed_is_refused(self, change, message):
    package = self.copy()
    _rewrite_signature(package, change)
    with self.assertRaisesRegex(signing.VerificationError, message + '.* re-sign the package'):
      signing.verify(package, self.public)

  def test_keygen_writes_no_key_when_any_exists(self):
    out_dir = self.create_tempdir().full_path
    with open(os.path.join(out_dir, 'package.key'), 'w') as f:
      f.write('precious')
    done = subprocess.run([sys.executable, 'scripts/keygen.py', f'--out_dir={out_dir}', '--encryption_key'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    self.assertNotEqual(done.returncode, 0)
    self.assertIn('package.key exist(s); keys are never overwritten, and none was written', done.stderr)
    self.assertEqual(os.listdir(out_dir), ['package.key'])

  def test_score_py_requires_a_key_or_an_explicit_opt_out(self):
    output = os.path.join(self.create_tempdir().full_path, 'scored.csv')
    done = subprocess.run([sys.executable, 'scripts/score.py', f'--model_dir={self.package}',
                           f'--input={self.loans}', f'--output={output}'], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    self.assertNotEqual(done.returncode, 0)
    self.assertIn('pass --public_key', done.stderr)
    self.assertFalse(os.path.exists(output))

  def test_keys_are_never_overwritten(self):
    with self.assertRaisesRegex(FileExistsError, 'never overwritten'):
      signing.generate_keys(os.path.dirname(self.private))
    self.assertEqual(os.stat(self.private).st_mode & 0o777, 0o600)

"""Encrypts a model package for transfer or storage (AES-256-GCM), or decrypts one.

  python scripts/encrypt.py --model_dir=runs/loan_risk/export --output=model.enc \
      --key_file=keys/package.key
  python scripts/encrypt.py --decrypt --input=model.enc --model_dir=received/export \
      --key_env=TFFAML_PACKAGE_KEY

Decryption fails, writing nothing, on a wrong key or an altered file. Verify
the decrypted package's signature (scripts/verify.py) before use.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli
from tffaml.security import encryption

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'Package directory (read, or written with --decrypt).',
                                 required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Encrypted file to write.')
_INPUT = flags.DEFINE_string('input', None, 'Encrypted file to read (--decrypt).')
_DECRYPT = flags.DEFINE_bool('decrypt', False, 'Decrypt --input into --model_dir.')
_KEY_FILE = flags.DEFINE_string('key_file', None, 'File holding the base64 AES-256 key.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, '--decrypt: replace a non-empty --model_dir'
                                ' (deleting what it holds).')
_KEY_ENV = flags.DEFINE_string('key_env', None, 'Environment variable holding the key.')


def main(argv):
  del argv
  if not (_INPUT.value if _DECRYPT.value else _OUTPUT.value):
    raise app.UsageError('--decrypt needs --input' if _DECRYPT.value else 'encryption needs --output')
  try:
    key = encryption.load_key(key_file=_KEY_FILE.value, key_env=_KEY_ENV.value)
    if _DECRYPT.value:
      encryption.decrypt_package(_INPUT.value, _MODEL_DIR.value, key, overwrite=_OVERWRITE.value)
      print(f'decrypted {_INPUT.value} -> {_MODEL_DIR.value}')
    else:
      encryption.encrypt_package(_MODEL_DIR.value, _OUTPUT.value, key)
      print(f'encrypted {_MODEL_DIR.value} -> {_OUTPUT.value}')
  except (OSError, ValueError) as e:  # DecryptionError is a ValueError.
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  cli.run(main)

"""Writes a package-signing key pair (Ed25519), and optionally an encryption key.

  python scripts/keygen.py --out_dir=keys
  python scripts/keygen.py --out_dir=keys --encryption_key

Writes keys/signing_key.pem (private: keep it with the publisher, mode 0600),
keys/signing_key.pub.pem (give it to every bank that loads the models) and,
with --encryption_key, keys/package.key (AES-256, base64; share it only with
the parties that may read packages). Existing keys are never overwritten.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli
from tffaml.security import encryption
from tffaml.security import signing

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where the keys go.', required=True)
_ENCRYPTION_KEY = flags.DEFINE_bool('encryption_key', False, 'Also write an AES-256 key.')


def main(argv):
  del argv
  package_key = os.path.join(_OUT_DIR.value, 'package.key')
  wanted = [os.path.join(_OUT_DIR.value, n) for n in (signing.PRIVATE_KEY_FILE, signing.PUBLIC_KEY_FILE)]
  wanted += [package_key] if _ENCRYPTION_KEY.value else []
  existing = [p for p in wanted if os.path.exists(p)]
  if existing:  # Checked for all before any is written: never half a key set.
    sys.exit(f'error: {", ".join(existing)} exist(s); keys are never overwritten, and none was written.')
  private, public = signing.generate_keys(_OUT_DIR.value)
  print(f'signing key:  {private} (secret)\npublic key:   {public}')
  if _ENCRYPTION_KEY.value:
    print(f'package key:  {encryption.generate_key(package_key)} (secret)')


if __name__ == '__main__':
  cli.run(main)

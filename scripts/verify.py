"""Verifies a signed model package; exit status 0 only when it verifies.

  python scripts/verify.py --model_dir=runs/loan_risk/export --public_key=keys/signing_key.pub.pem
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli
from tffaml.security import signing

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'Package directory to verify.', required=True)
_PUBLIC_KEY = flags.DEFINE_string('public_key', None, 'The publisher\'s public key.', required=True)


def main(argv):
  del argv
  try:
    files = signing.verify(_MODEL_DIR.value, _PUBLIC_KEY.value)
  except (OSError, ValueError) as e:  # VerificationError is a ValueError.
    sys.exit(f'REFUSED: {e}')
  print(f'verified: {len(files)} files of {_MODEL_DIR.value} match the signature.')


if __name__ == '__main__':
  cli.run(main)

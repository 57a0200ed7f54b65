"""Signs a model package (an export or checkpoint directory): every file.

  python scripts/sign.py --model_dir=runs/loan_risk/export --private_key=keys/signing_key.pem
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli
from tffaml.security import signing

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'Package directory to sign.', required=True)
_PRIVATE_KEY = flags.DEFINE_string('private_key', None, 'The publisher\'s private key.', required=True)


def main(argv):
  del argv
  try:
    path = signing.sign(_MODEL_DIR.value, _PRIVATE_KEY.value)
  except (OSError, ValueError) as e:
    sys.exit(f'error: {e}')
  files, _ = signing.tree(_MODEL_DIR.value)
  print(f'signed {len(files) - 1} files -> {path}')


if __name__ == '__main__':
  cli.run(main)

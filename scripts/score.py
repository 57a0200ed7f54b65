"""Scores a CSV with an exported model; the output is written atomically.

  python scripts/score.py --model_dir=runs/loan_risk/export --input=x.csv --output=y.csv
  python scripts/score.py --model_dir=runs/aml/export --input=bank.csv --output=alerts.csv \
      --bank=011

A transaction model reads an AMLworld file holding the bank's transactions
(with enough history for the account aggregates) and adds `score`, `alert`.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from tffaml import cli
from tffaml.security import signing

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'Exported model directory.', required=True)
_INPUT = flags.DEFINE_string('input', None, 'CSV with the schema\'s feature columns.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Output CSV: input plus the model\'s outputs.', required=True)
_PUBLIC_KEY = flags.DEFINE_string('public_key', None, 'The publisher\'s public key: the package'
                                  ' must verify against it (scripts/verify.py).')
_VERIFY = flags.DEFINE_bool('verify', True, 'Refuse a package that does not verify; --noverify'
                            ' scores an unverified package (not for production).')
_BANK = flags.DEFINE_string('bank', None, 'Transaction models: the scoring bank\'s code (inferred'
                            ' when every row touches one bank).')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if _VERIFY.value and not _PUBLIC_KEY.value:
    raise app.UsageError('pass --public_key=<publisher\'s public key> to verify the package'
                         ' (or --noverify to score it unverified).')
  # Imported after the flags are checked: TensorFlow takes seconds to load.
  from tffaml.export import scoring  # pylint: disable=g-import-not-at-top
  try:
    result = scoring.score_csv(_MODEL_DIR.value, _INPUT.value, _OUTPUT.value, bank=_BANK.value,
                               public_key=_PUBLIC_KEY.value if _VERIFY.value else None)
  except signing.VerificationError as e:
    sys.exit(f'refused: {e}')
  print(f'scored {result.scored} rows -> {_OUTPUT.value} ({result.flagged} flagged: see its'
        f' {scoring.FLAGS_COLUMN!r} column)')
  if result.rejected:
    print(f'rejected {result.rejected} rows, not scored -> {result.rejected_path}')


if __name__ == '__main__':
  cli.run(main, import_tensorflow=True)

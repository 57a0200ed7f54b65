"""Scores a CSV with an exported model; the output is written atomically.

  python scripts/score.py --model_dir=runs/loan_risk/export --input=x.csv --output=y.csv
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from tffaml.export import scoring

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'Exported model directory.', required=True)
_INPUT = flags.DEFINE_string('input', None, 'CSV with the schema\'s feature columns.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Output CSV: input plus probability, label.', required=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  rows = scoring.score_csv(_MODEL_DIR.value, _INPUT.value, _OUTPUT.value)
  print(f'scored {rows} rows -> {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)

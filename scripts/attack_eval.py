"""Poisoning attacks x defences on the loan-risk task: a CSV and a markdown table.

  python scripts/attack_eval.py --config=configs/loan_risk.py:attack --output_dir=runs/attack_eval

Matrix: attacks (label_flip, boost, backdoor) x malicious institutions
(none, 1, 10%, 20%) x aggregators (mean = no defence, clipping, robust,
median, trimmed_mean). See tffaml.studies.attack_eval.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from tffaml import cli
from tffaml import runtime
from tffaml.studies import attack_eval

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/loan_risk.py:attack', 'Base config.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where results go.', required=True)
_ATTACKS = flags.DEFINE_list('attacks', list(attack_eval.ATTACKS), 'Attacks.')
_LEVELS = flags.DEFINE_list('levels', list(attack_eval.LEVELS), 'Malicious institutions: none, a count, or a percentage.')
_DEFENCES = flags.DEFINE_list('defences', list(attack_eval.DEFENCES), 'Aggregators (mean: no defence).')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if 'none' not in _LEVELS.value or 'mean' not in _DEFENCES.value:
    raise app.UsageError('--levels needs none and --defences needs mean: the baselines of every cell.')
  with runtime.local_runtime():
    attack_eval.run(_CONFIG.value, output_dir=_OUTPUT_DIR.value, attacks=_ATTACKS.value,
                    levels=_LEVELS.value, defences=_DEFENCES.value)
  with open(os.path.join(_OUTPUT_DIR.value, 'attack_eval.md')) as f:
    print(f.read())
  print(f'results: {os.path.join(_OUTPUT_DIR.value, "attack_eval.csv")}')


if __name__ == '__main__':
  cli.run(main)

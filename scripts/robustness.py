"""The defaults against the same federation without DP, on public tables nobody tuned for.

  python scripts/robustness.py --output_dir=runs/robustness
  python scripts/robustness.py --cases=AER/CreditCard,ISLR/Default --seeds=0,1 \
      --output_dir=runs/robustness

Each case (tffaml.studies.robustness.CASES: 1k to 60k rows, 3 to 50
institutions) is written in the bring-your-own-data layout under
<output_dir>/<table>/seed<S>/data and trained with --config (the defaults of
configs/csv.py) and --reference (configs/csv.py:no_dp). Writes
<output_dir>/robustness.csv (one row per run: pooled AUC, ε, unit, warnings)
and robustness.md (per case: both AUCs, the gap, ε and its unit).
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

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/csv.py', 'The defaults under test.')
_REFERENCE = config_flags.DEFINE_config_file('reference', 'configs/csv.py:no_dp',
                                             'The same federation without DP.')
_CASES = flags.DEFINE_list('cases', [], 'Cases (package/item); empty: all of them.')
_SEEDS = flags.DEFINE_list('seeds', ['0'], 'Seeds (each: new split, initialisation and noise).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where data and results go.', required=True)
# Checked as flags are parsed: a typo is answered before TensorFlow loads.
flags.register_validator('seeds', lambda seeds: all(s.lstrip('-').isdigit() for s in seeds),
                         message='--seeds must be integers, e.g. --seeds=0,1,2.')


def main(argv):
  del argv
  from tffaml import runtime  # pylint: disable=g-import-not-at-top
  from tffaml.studies import robustness  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  seeds = [int(s) for s in _SEEDS.value]
  try:
    cases = [robustness.case_named(n) for n in _CASES.value] or list(robustness.CASES)
  except ValueError as e:
    raise app.UsageError(f'--cases: {e}') from None
  with runtime.local_runtime():
    robustness.run({'default': _CONFIG.value, 'no_dp': _REFERENCE.value}, cases=cases,
                   seeds=seeds, output_dir=_OUTPUT_DIR.value, default='default', reference='no_dp')
  with open(os.path.join(_OUTPUT_DIR.value, 'robustness.md')) as f:
    print(f.read())
  print(f'per run: {os.path.join(_OUTPUT_DIR.value, "robustness.csv")}')


if __name__ == '__main__':
  cli.run(main, import_tensorflow=True)

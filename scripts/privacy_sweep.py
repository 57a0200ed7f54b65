"""Sweeps DP settings: ε against utility (AUC) and membership-inference risk.

  python scripts/privacy_sweep.py --config=configs/loan_risk.py:sweep \
      --units=none,institution,record --target_epsilons=1,3,8 --output_dir=runs/privacy_sweep

Writes <output_dir>/sweep.csv, sweep.md and sweep.png; each point's run and
audit live under <output_dir>/runs/<point>/ (a killed sweep resumes).
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
from tffaml.studies import sweep

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/loan_risk.py:sweep', 'Base config.')
_UNITS = flags.DEFINE_list('units', ['none', 'institution', 'record'], 'DP units: none, institution, record.')
_TARGETS = flags.DEFINE_list('target_epsilons', ['1', '3', '8'], 'ε targets (noise calibrated per point).')
_NOISES = flags.DEFINE_list('noise_multipliers', [], 'Fixed noise multipliers (instead of or with targets).')
_CLIPS = flags.DEFINE_list('clips', ['1.0'], 'Clip norms (per record or per institution update).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where results go.', required=True)
_CANARIES = flags.DEFINE_integer('canaries', 1000, 'DP points: a one-run canary audit with this many canaries'
                                 ' (a second training each; record-level points only under'
                                 ' --config.record_dp.mode=distributed); 0 skips it.')


def _floats(flag) -> list[float]:
  try:
    return [float(v) for v in flag.value]
  except ValueError:
    raise app.UsageError(f'--{flag.name} must be numbers, got {",".join(flag.value)}.') from None


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    units = [sweep.DpUnit(u) for u in _UNITS.value]
  except ValueError:
    raise app.UsageError(f'--units must be of {[u.value for u in sweep.DpUnit]}, got {_UNITS.value}.') from None
  points = sweep.grid(units, clips=_floats(_CLIPS), target_epsilons=_floats(_TARGETS),
                      noise_multipliers=_floats(_NOISES))
  with runtime.local_runtime():
    table = sweep.run(_CONFIG.value, points, _OUTPUT_DIR.value, canaries=_CANARIES.value)
  print(table.to_string(index=False))
  print(f'\nresults: {os.path.join(_OUTPUT_DIR.value, "sweep.csv")}, sweep.md, sweep.png')


if __name__ == '__main__':
  cli.run(main)

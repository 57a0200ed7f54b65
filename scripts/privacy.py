"""Privacy accounting without training: ε of a planned run or of a mechanism.

A planned run (its config's DP mechanisms on its data):
  python scripts/privacy.py --config=configs/loan_risk.py:record_dp
  python scripts/privacy.py --config=configs/loan_risk.py --config.privacy.target_epsilon=8
A bare Poisson-sampled Gaussian mechanism composed over steps:
  python scripts/privacy.py --sampling_rate=0.0025 --noise_multiplier=1.3 --steps=6000 --delta=1e-5
  python scripts/privacy.py --sampling_rate=0.0025 --target_epsilon=1 --steps=6000 --delta=1e-5
The last line is `epsilon=<value>` (or `noise_multiplier=<value>` when
calibrating a bare mechanism to --target_epsilon).
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from tffaml import cli
from tffaml.privacy import accounting

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A training config to account for.')
_SAMPLING_RATE = flags.DEFINE_float('sampling_rate', None, 'Bare mechanism: Poisson sampling rate q.')
_NOISE = flags.DEFINE_float('noise_multiplier', None, 'Bare mechanism: Gaussian noise multiplier.')
_STEPS = flags.DEFINE_integer('steps', None, 'Bare mechanism: number of composed steps.')
_DELTA = flags.DEFINE_float('delta', 1e-5, 'Bare mechanism: δ.')
_TARGET = flags.DEFINE_float('target_epsilon', None, 'Bare mechanism: find the noise for this ε.')
_ACCOUNTANT = flags.DEFINE_enum_class(
    'accountant', accounting.Accountant.RDP, accounting.Accountant, 'Bare mechanism: accountant.')


def _bare_mechanism() -> str:
  if _SAMPLING_RATE.value is None or _STEPS.value is None:
    raise app.UsageError('give --config, or --sampling_rate and --steps (and --noise_multiplier'
                         ' or --target_epsilon).')
  if not 0 < _SAMPLING_RATE.value <= 1:
    raise app.UsageError(f'--sampling_rate must be in (0, 1], got {_SAMPLING_RATE.value}.')
  if _STEPS.value < 1:
    raise app.UsageError(f'--steps must be >= 1, got {_STEPS.value}.')
  if (_NOISE.value is None) == (_TARGET.value is None):
    raise app.UsageError('give exactly one of --noise_multiplier and --target_epsilon.')

  def event(noise):
    return accounting.poisson_gaussian_event(
        sampling_rate=_SAMPLING_RATE.value, noise_multiplier=noise, steps=_STEPS.value)

  mechanism = f'q={_SAMPLING_RATE.value:g}, steps={_STEPS.value}, delta={_DELTA.value:g}, {_ACCOUNTANT.value.description}'
  if _TARGET.value is not None:
    noise = accounting.noise_for_epsilon(
        event, target_epsilon=_TARGET.value, delta=_DELTA.value, accountant=_ACCOUNTANT.value)
    return f'Poisson-sampled Gaussian, {mechanism}, epsilon={_TARGET.value:g}\nnoise_multiplier={noise:.6g}'
  if not _NOISE.value > 0:
    raise app.UsageError(f'--noise_multiplier must be > 0, got {_NOISE.value}.')
  try:
    epsilon = accounting.epsilon(event(_NOISE.value), _DELTA.value, accountant=_ACCOUNTANT.value)
  except ValueError as e:  # Too little noise for PLD: refused before it takes minutes and gigabytes.
    raise app.UsageError(f'--noise_multiplier: {e}') from None
  return f'Poisson-sampled Gaussian, noise_multiplier={_NOISE.value:g}, {mechanism}\nepsilon={epsilon:.6g}'


def _planned_run() -> str:
  from tffaml.config import plan as config_plan
  plan, statement = config_plan.plan_for_config(_CONFIG.value)
  lines = [statement.text()]
  for name, mechanism in (('record-level', plan.record), ('client-level', plan.client)):
    if mechanism is not None:
      lines.append(f'{name} noise_multiplier={mechanism.noise_multiplier:.6g}')
  lines.append(f'epsilon={statement.epsilon:.6g}')
  return '\n'.join(lines)


def main(argv):
  del argv
  print(_planned_run() if _CONFIG.value is not None else _bare_mechanism())


if __name__ == '__main__':
  cli.run(main)

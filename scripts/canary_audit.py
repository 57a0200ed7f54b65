"""A one-run canary audit of the config's DP training (see tffaml.studies.canary_audit).

  python scripts/canary_audit.py                      # the default: record-level distributed DP-SGD
  python scripts/canary_audit.py --config=configs/loan_risk.py:client_dp \
      --config.aggregator.type=gaussian_fixed --config.privacy.target_epsilon=1

Trains once as the config says with canaries beside the real data (canary
records under record-level DP, canary institutions under client-level DP),
prints the claimed ε and the lower bound the canaries give, writes JSON
(--output). --sabotage=noise_off|clipping_off breaks the mechanism while the
claim stays the config's, to see the audit catch it. Exit status 1 when the
bound exceeds the claim.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging
from ml_collections import config_flags

from tffaml import cli
from tffaml.config import values as config_values

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/loan_risk.py', 'Experiment config.')
_CANARIES = flags.DEFINE_integer('canaries', 1000, 'Canaries (records or institutions, by the config\'s DP'
                                 ' unit), each included with probability 1/2.')
_SEED = flags.DEFINE_integer('seed', 0, "The canaries' directions and coins, and the noise.")
_FRACTION = flags.DEFINE_float('fraction', 0.1, 'Of the canaries, guessed at each end.')
_CONFIDENCE = flags.DEFINE_float('confidence', 0.95, 'Of the lower bound.')
_SABOTAGE = flags.DEFINE_enum('sabotage', 'none', ['none', 'noise_off', 'clipping_off'],
                              'Break the mechanism on purpose (the claim stays the config\'s).')
_OUTPUT = flags.DEFINE_string('output', None, 'JSON report.')


def check() -> None:
  """The config's ranges, before TensorFlow loads (`cli.run`), in the audit's order."""
  if config_values.cluster(_CONFIG.value) is None:  # Workers: refused by the audit, after TensorFlow.
    config_values.check_values(_CONFIG.value)


def main(argv):
  del argv
  from tffaml import runtime  # pylint: disable=g-import-not-at-top
  from tffaml.studies import canary_audit  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  with runtime.local_runtime():
    result = canary_audit.audit(
        _CONFIG.value, canaries=_CANARIES.value, seed=_SEED.value, fraction=_FRACTION.value,
        confidence=_CONFIDENCE.value, sabotage=canary_audit.Sabotage(_SABOTAGE.value))
  sys.exit(canary_audit.report(result, _OUTPUT.value))


if __name__ == '__main__':
  cli.run(main, import_tensorflow=True, check=check)

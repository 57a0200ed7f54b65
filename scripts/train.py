"""Federated training: maps flags onto tffaml.training.program.run.

  python scripts/train.py --config=configs/loan_risk.py --workdir=runs/loan_risk
  python scripts/train.py --config=configs/loan_risk.py:smoke --workdir=/tmp/x \
      --config.aggregator.noise_multiplier=1.0
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
from tffaml.config import values as config_values

EXIT_WARNING = 3  # Trained and exported, but the model is not usable as it is.
_CONFIG = config_flags.DEFINE_config_file('config', 'configs/loan_risk.py', 'Experiment config.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (resumed if it holds a run).', required=True)
_CHECKPOINT_KEY = cli.CheckpointKeyFlags()


def check() -> None:
  """What main refuses first, in its order, before TensorFlow loads (`cli.run`)."""
  config_values.cluster(_CONFIG.value)  # cluster_runtime.configured's check.
  _CHECKPOINT_KEY.key()
  config_values.check_values(_CONFIG.value)  # program.run's first check.
  config_values.check_public(_CONFIG.value)


def main(argv):
  del argv
  # Imported here, after flag parsing: a mistyped flag is answered in a
  # second, not after TensorFlow and TFF have loaded.
  from tffaml import runtime  # pylint: disable=g-import-not-at-top
  from tffaml.cluster import runtime as cluster_runtime  # pylint: disable=g-import-not-at-top
  from tffaml.training import program  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  with runtime.local_runtime():
    result = program.run(_CONFIG.value, _WORKDIR.value, runtime=cluster_runtime.configured(_CONFIG.value),
                         checkpoint_key=_CHECKPOINT_KEY.key())
  paths = result.paths
  print(f'\nmodel:   {paths.export} (SavedModel, serving_default)')
  print(f'metrics: {paths.metrics}  (per round: {paths.metrics_csv}, {paths.curves})')
  pooled = result.metrics['federated']['pooled']
  if pooled.get('auc') is not None:  # The released model on every institution's test split.
    print(f'pooled test AUC: {pooled["auc"]:.4f}')
  print(f'privacy: {paths.privacy}')
  with open(paths.privacy) as f:
    print('  ' + f.read().strip())
  for warning in result.warnings:
    print(f'\nWARNING: {warning}', file=sys.stderr)
  if result.warnings:
    sys.exit(EXIT_WARNING)


if __name__ == '__main__':
  cli.run(main, import_tensorflow=True, check=check)

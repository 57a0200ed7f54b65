"""LiRA, the likelihood-ratio membership attack, against the config's training (tffaml.studies.lira_audit).

  python scripts/lira.py --workdir=runs/lira                 # the default config, 8 models
  python scripts/lira.py --config=configs/loan_risk.py:no_dp --workdir=runs/lira_no_dp

Trains --models models with the real program, each on a random half of
every institution's rows, attacks each with the others as shadows, and
prints the attack's AUC and TPR at 0.1% and 1% FPR, pooled and per
institution, beside the ceiling the models' record-level ε allows. Writes
<workdir>/lira.json and lira_roc.png; a killed attack resumes.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging
from ml_collections import config_flags

from tffaml import cli
from tffaml import errors
from tffaml.config import values as config_values
from tffaml.privacy import lira

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/loan_risk.py', 'Experiment config.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the models and the report go.', required=True)
_MODELS = flags.DEFINE_integer('models', 8, 'Models trained (each the target once, the others its shadows).')
_SEED = flags.DEFINE_integer('seed', 0, "The models' halves and their DP noise.")


def check() -> None:
  """The flags and the config's ranges, before TensorFlow loads (`cli.run`)."""
  if _MODELS.value < lira.MIN_MODELS:
    raise errors.InputError(f'--models must be at least {lira.MIN_MODELS}, got {_MODELS.value}.')
  config_values.check_values(_CONFIG.value)  # Each model's program.run checks them first.


def main(argv):
  del argv
  from tffaml import runtime  # pylint: disable=g-import-not-at-top
  from tffaml.studies import lira_audit  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  with runtime.local_runtime():  # Stops TFF's runtime on a refusal too.
    result = lira_audit.attack(_CONFIG.value, _WORKDIR.value, models=_MODELS.value, seed=_SEED.value)
  print(f'LiRA over {result.models} models, {result.rows} rows: AUC {result.pooled.auc:.4f}')
  for fpr, tpr in result.pooled.tpr_at_fpr.items():
    print(f'  TPR at {fpr:.1%} FPR: {tpr:.4f} (record-level DP ceiling {result.ceiling(fpr):.4f})')
  for name, roc in result.institutions.items():
    print(f'  {name}: AUC {roc.auc:.4f}, TPR at 1% FPR {roc.tpr_at_fpr[0.01]:.4f}')
  if result.exceeds_claim:
    print(f'the attack is above the ceiling of ε = {result.claimed_epsilon:.3g} (a point estimate;'
          ' scripts/canary_audit.py bounds ε with a confidence level)')
  print(f'report: {os.path.join(_WORKDIR.value, "lira.json")}, ROC: {os.path.join(_WORKDIR.value, "lira_roc.png")}')


if __name__ == '__main__':
  cli.run(main, import_tensorflow=True, check=check)

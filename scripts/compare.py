"""Federated vs centralized vs local-only vs ensembles, on the same splits.

  python scripts/compare.py --config=configs/loan_risk.py:compare --seeds=0,1,2 \
      --output_dir=runs/compare
  python scripts/compare.py --config=configs/csv.py --config.data.dir=DIR \
      --config.data.schema_file=DIR/schema.json --seeds=0 --output_dir=runs/compare_own
  python scripts/compare.py --config=configs/aml.py:compare --private_config=configs/aml.py \
      --autoencoder_config=configs/aml_autoencoder.py:compare --rarity_config=configs/aml_rarity.py \
      --config.data.path=data/transactions.csv --seeds=0 --output_dir=runs/compare_aml

Writes <output_dir>/compare.csv (per method and metric - AUC, AUPRC, recall
at each config.evaluation.alert_budgets - on all test rows, median and worst
institution, mean and std over seeds), compare_institutions.csv,
compare.md and compare.png. See tffaml.studies.compare for the methods.
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
from tffaml.studies import compare

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/loan_risk.py:compare', 'Base config.')
_PRIVATE_CONFIG = config_flags.DEFINE_config_file(
    'private_config', None, 'Optional: the config fedavg_record_dp runs instead of the base with'
    ' record-level DP switched on - the shipped private default, e.g. configs/aml.py - on the'
    ' base\'s data and seeds.')
_AUTOENCODER_CONFIG = config_flags.DEFINE_config_file(
    'autoencoder_config', None, 'The config the autoencoder method runs (e.g.'
    ' configs/aml_autoencoder.py:compare), on the base\'s data and seeds.')
_RARITY_CONFIG = config_flags.DEFINE_config_file(
    'rarity_config', None, 'The config the rarity_model method runs (e.g. configs/aml_rarity.py, under'
    ' account-level DP), on the base\'s data and seeds.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (each: new splits and initialisations).')
_METHODS = flags.DEFINE_list(
    'methods', None, f'Methods to compare, of {[m.value for m in compare.Method]}. Default: every one that'
    ' applies (autoencoder and rarity_model with their configs, the rarity counts on transactions).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where results go.', required=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    seeds = [int(s) for s in _SEEDS.value]
    methods = None if _METHODS.value is None else [compare.Method(m) for m in _METHODS.value]
  except ValueError as e:
    raise app.UsageError(f'--seeds must be integers and --methods of'
                         f' {[m.value for m in compare.Method]}: {e}') from None
  configs = {method: flag.value for method, flag in ((compare.Method.FEDAVG_RECORD_DP, _PRIVATE_CONFIG),
                                                      (compare.Method.AUTOENCODER, _AUTOENCODER_CONFIG),
                                                      (compare.Method.RARITY_MODEL, _RARITY_CONFIG))
             if flag.value is not None}
  with runtime.local_runtime():
    compare.run(_CONFIG.value, seeds=seeds, methods=methods,
                output_dir=_OUTPUT_DIR.value, configs=configs)
  with open(os.path.join(_OUTPUT_DIR.value, 'compare.md')) as f:
    print(f.read())
  print(f'results: {os.path.join(_OUTPUT_DIR.value, "compare.md")}, compare.csv,'
        ' compare_institutions.csv, compare.png')


if __name__ == '__main__':
  cli.run(main)

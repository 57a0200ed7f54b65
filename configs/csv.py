"""Your own federation: <dir>/<institution>/{train,test}.csv plus schema.json.

The defaults of configs/loan_risk.py: record-level DP at ε = 1 (distributed
DP-SGD), logistic regression, settings from rules rather than tuning.

Run:
  python scripts/train.py --config=configs/csv.py \
      --config.data.dir=DIR --config.data.schema_file=DIR/schema.json --workdir=OUT
Presets: `:no_dp` (the same federation without DP, as configs/loan_risk.py:no_dp),
`:smoke` (client-level DP as configs/loan_risk.py:smoke, few rounds, for tests).
"""

import ml_collections

from configs import loan_risk


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  # smoke: the tests' base, the client_dp federation as configs/loan_risk.py:smoke.
  base = {'smoke': 'client_dp', 'no_dp': 'no_dp'}.get(preset, '')
  config = loan_risk.get_config(base)
  config.data.source = 'csv_dir'
  config.reference.centralized_epochs = 0  # Banks cannot pool rows.
  if preset == 'smoke':
    config.model.hidden_units = (8,)
    config.federated.rounds = 3
    config.features.min_category_count = 1
  elif preset and preset != 'no_dp':
    raise ValueError(f'unknown preset {preset!r}; presets: no_dp, smoke.')
  return config

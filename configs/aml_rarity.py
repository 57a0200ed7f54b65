"""Unsupervised AML on banks' transactions: how rarely the federation sees a payment's kind.

The `rarity` model (tffaml/models/rarity.py) learns the federation's share of
each format x direction x log-amount x hour cell by federated maximum
likelihood; a transaction's score is -log of its cell's share. It needs no
labels (they serve only to evaluate), and the export alerts on the top
`alert_budget` of scores (a threshold from federated score quantiles).

By default it trains as configs/aml.py's default does: each customer's
account, with all of its transactions, has (1, 1e-5)-DP (distributed DP-SGD,
500 rounds, the server stepping with Adam; relies on secure aggregation,
simulated here as a plain sum), the feature statistics and alert threshold
included.

Run:
  python scripts/train.py --config=configs/aml_rarity.py \
      --config.data.path=data/transactions.csv --workdir=runs/aml_rarity
Presets: those of configs/aml.py (`:no_dp`, `:client_dp`, `:compare`,
`:smoke`, ...).
"""

import ml_collections

from configs import aml


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  config = aml.get_config(preset)
  config.model.name = 'rarity'
  config.model.loss = 'reconstruction'  # The score (-log share) is its own loss: labels unused.
  return config

"""Unsupervised anomaly detection on banks' transactions: a federated autoencoder.

Trained on the transactions without their labels; the anomaly score is the
reconstruction error, and the export alerts on the top `alert_budget` of
scores (a threshold from federated score quantiles). Labels serve only to
evaluate (AUPRC, recall at the alert budgets).

Run:
  python scripts/train.py --config=configs/aml_autoencoder.py \
      --config.data.path=data/transactions.csv --workdir=runs/aml_autoencoder
Presets: `:smoke` (tiny, for tests), `:no_dp`, `:compare` (as in configs/aml.py).
The default is configs/aml.py's `client_dp` (a weak guarantee for each
bank): its account-level default trains one DP-SGD step a round, which has
not been measured for the autoencoder.
"""

import ml_collections

from configs import aml


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  config = aml.get_config(preset or 'client_dp')
  config.model.name = 'autoencoder'
  config.model.loss = 'reconstruction'
  config.model.hidden_units = (8,) if preset == 'smoke' else (32, 8)
  return config

"""Public data costs no privacy: the statistics, the starting model and the alert threshold from a public corpus.

With `config.public.path` set (rows nobody's customers are in: for AML, e.g.
scripts/generate_transactions.py with another seed, bank count, typology
mix, time span and amount scale), the run

* computes the feature statistics (normalisation, clipping ranges,
  vocabularies) from the public corpus, exactly, instead of DP statistics
  over the institutions: the whole ε goes to training;
* pretrains the config's model centrally on the public corpus
  (`config.public.epochs`) and starts the federation from it;
* places the export's alert threshold at the `config.model.alert_budget`
  quantile of the released model's scores on the public corpus's rows.

None of these reads an institution's rows, so the record-level guarantee
covers the whole package without spending anything on them
(`accounting.PrivacyStatement.public_corpus` says so). De et al. 2022 and
Ganesh et al. 2023 show why it pays: DP fine-tuning from a good start needs
far fewer noisy steps than DP training from scratch.
"""

import dataclasses
import time
from typing import Callable, Optional

import tensorflow as tf
import tensorflow_federated as tff

from tffaml import features
from tffaml.config import data as config_data
from tffaml.data import federated_data
from tffaml.federated import client_data
from tffaml.training import centralized
from tffaml.training import evaluation


@dataclasses.dataclass
class Public:
  """The public corpus, its feature space and the model pretrained on it."""

  corpus: config_data.PublicCorpus
  data: federated_data.FederatedData
  space: features.FeatureSpace
  model: Optional[tf.keras.Model]  # None with config.public.epochs = 0.

  def initial_weights(self, keras_model_fn: Callable[[], tf.keras.Model]) -> tff.learning.models.ModelWeights:
    """The pretrained model's weights; with no pretraining, the seeded initial ones."""
    return tff.learning.models.ModelWeights.from_model(self.model if self.model is not None else keras_model_fn())

  def threshold(self, model: tf.keras.Model, budget: float) -> float:
    """The score flagging `budget` of the public corpus's training rows."""
    scores = client_data.predict(model, self.data.pooled('train'), self.data.schema)
    return evaluation.budget_threshold(scores, budget)


def prepare(corpus: config_data.PublicCorpus, data: federated_data.FederatedData, *, min_category_count: int,
            keras_model_fn: Callable[[features.FeatureSpace], Callable[[], tf.keras.Model]],
            loss: tf.keras.losses.Loss, seed: int, log: Callable[[str], None]) -> Public:
  """The public corpus `data` (`config_data.load_public`): its exact statistics and the pretrained model."""
  start = time.monotonic()
  space = features.compute_feature_space(data, min_category_count=min_category_count)
  model = None
  if corpus.epochs:
    model = centralized.train(keras_model_fn(space), data, loss=loss, epochs=corpus.epochs,
                              batch_size=corpus.batch_size, learning_rate=corpus.learning_rate, seed=seed)
  rows = sum(len(i.train) for i in data.institutions)
  log(f'public corpus {corpus.path}: {len(data.institutions)} institutions, {rows:,} training rows;'
      f' statistics{f" and {corpus.epochs} pretraining epochs" if model is not None else ""}'
      f' in {time.monotonic() - start:.0f} s')
  return Public(corpus=corpus, data=data, space=space, model=model)

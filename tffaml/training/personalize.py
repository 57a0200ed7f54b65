"""An institution's own copy of the private release, fine-tuned on its own rows.

A bank that joins receives the federation's model, released under DP. It may
then train that model further on its own customers, as it would train a
model alone: the copy stays at the bank. For every other institution's
customers it is post-processing of the release, so their guarantee (ε, δ)
is unchanged; for the bank's own customers it carries no guarantee, exactly
like a model the bank trains alone (`privacy_note`).

`trees_on_scores` goes one step further, as AML teams run trees first: the
bank's own LightGBM on its rows, reading the release's and its copy's
log-odds as two more columns, served as one Keras model (`trees.ForestOnScores`)
with the same guarantee as the copy.
"""

import dataclasses
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml import features
from tffaml.federated import client_data
from tffaml.models import trees
from tffaml.training import centralized
from tffaml.training import evaluation


@dataclasses.dataclass(frozen=True)
class FineTune:
  """Keras's Adam on the institution's own training rows, from the release's weights."""

  epochs: int
  batch_size: int
  learning_rate: float
  seed: int


def fine_tune(release: tf.keras.Model, institution: federated_data.Institution, schema, *,
              loss: tf.keras.losses.Loss, how: FineTune) -> tf.keras.Model:
  """A copy of `release` trained on `institution`'s training rows (`release` is left as it was)."""

  def start() -> tf.keras.Model:
    copy = tf.keras.models.clone_model(release)
    copy.set_weights(release.get_weights())
    return copy

  alone = federated_data.FederatedData(schema, (institution,))
  return centralized.train(start, alone, loss=loss, epochs=how.epochs, batch_size=how.batch_size,
                           learning_rate=how.learning_rate, seed=how.seed)


@dataclasses.dataclass(frozen=True)
class Personalized:
  """One institution's fine-tuned copy, its alert threshold and its test rows' (labels, scores)."""

  name: str
  model: tf.keras.Model
  threshold: Optional[float]
  test: tuple[np.ndarray, np.ndarray]


def each(release: tf.keras.Model, institutions, schema: schema_lib.Schema, *, loss: tf.keras.losses.Loss,
         how: Callable[[federated_data.InstitutionLike], FineTune], alert_budget: float,
         threshold: Optional[float], log: Callable[[str], None]) -> Iterator[Personalized]:
  """Every institution's fine-tuned copy (`how` it trains), in turn; its threshold flags `alert_budget` of
  its own training rows (0: the release's `threshold`)."""
  for k, institution in enumerate(institutions, 1):
    chosen = how(institution)
    tuned = fine_tune(release, institution, schema, loss=loss, how=chosen)
    own = threshold
    if alert_budget:
      # Exact: they are the institution's own rows.
      own = evaluation.budget_threshold(client_data.predict(tuned, institution.train, schema), alert_budget)
    labels = institution.test[schema_lib.LABEL_COLUMN].to_numpy()
    log(f'personalized {k}/{len(institutions)}: {institution.name} ({chosen.epochs} epochs on its'
        f' {len(institution.train)} training rows)')
    yield Personalized(institution.name, tuned, own, (labels, client_data.predict(tuned, institution.test, schema)))


def trees_on_scores(release: tf.keras.Model, copy: tf.keras.Model, institution: federated_data.InstitutionLike,
                    schema: schema_lib.Schema, space: features.FeatureSpace, *, seed: int) -> tf.keras.Model:
  """The institution's LightGBM on its training rows' columns and the release's and `copy`'s log-odds."""
  scorers = (release, copy)
  odds = [trees.log_odds(client_data.predict(m, institution.train, schema)).numpy() for m in scorers]
  fitted = trees.fit_lightgbm(np.column_stack([trees.forest_inputs(institution.train, space), *odds]),
                              institution.train[schema_lib.LABEL_COLUMN].to_numpy(), space, seed=seed)
  return trees.ForestOnScores(trees.Forest.from_lightgbm(fitted), space, scorers)


def privacy_note(institution: str, statement_text: str) -> str:
  """What a personalized model's privacy is: the release's for the others' customers, none for its own."""
  return (f'Personalized for {institution}: the federation\'s released model, then trained on'
          f' {institution}\'s own rows without differential privacy. For the other institutions\''
          f' customers it is post-processing of the release, whose guarantee stands: {statement_text}'
          f' For {institution}\'s own customers it carries no guarantee, as a model {institution} trains'
          ' alone; serve it inside the institution only.')

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
  out_of_fold: Optional[np.ndarray] = None  # Its training rows' `out_of_fold_scores`, when asked for.


def each(release: tf.keras.Model, institutions, schema: schema_lib.Schema, *, loss: tf.keras.losses.Loss,
         how: Callable[[federated_data.InstitutionLike], FineTune], alert_budget: float,
         threshold: Optional[float], log: Callable[[str], None], out_of_fold: bool = False) -> Iterator[Personalized]:
  """Every institution's fine-tuned copy (`how` it trains), in turn; its threshold flags `alert_budget` of
  its own training rows (0: the release's `threshold`); with `out_of_fold`, its `out_of_fold_scores` too."""
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
    held_out = out_of_fold_scores(release, institution, schema, loss=loss, how=chosen) if out_of_fold else None
    yield Personalized(institution.name, tuned, own, (labels, client_data.predict(tuned, institution.test, schema)),
                       held_out)


def out_of_fold_scores(release: tf.keras.Model, institution: federated_data.Institution, schema, *,
                       loss: tf.keras.losses.Loss, how: FineTune, folds: int = 3) -> np.ndarray:
  """A copy's score for each training row from a copy that never trained on it.

  The training rows are split into `folds` by privacy unit (an account's
  rows stay together; each row its own unit without one); each fold is
  scored by a copy fine-tuned (`how`) on the others. A copy scores the rows
  it trained on better than new ones, and trees learning from those scores
  would trust them too much: stacking needs out-of-fold scores.
  """
  train = institution.train
  units = (train[schema_lib.UNIT_COLUMN].to_numpy(str) if schema_lib.UNIT_COLUMN in train
           else np.arange(len(train)).astype(str))
  distinct = np.unique(units)
  fold_of_unit = np.random.default_rng(how.seed).permutation(len(distinct)) % folds
  fold = fold_of_unit[np.searchsorted(distinct, units)]
  scores = np.zeros(len(train), np.float64)
  for k in range(folds):
    held = fold == k
    rest = dataclasses.replace(institution, train=train[~held].reset_index(drop=True))
    tuned = fine_tune(release, rest, schema, loss=loss, how=how)
    scores[held] = client_data.predict(tuned, train[held], schema)
  return scores


def trees_on_scores(release: tf.keras.Model, copy: tf.keras.Model, institution: federated_data.InstitutionLike,
                    schema: schema_lib.Schema, space: features.FeatureSpace, *, seed: int,
                    copy_train_scores: Optional[np.ndarray] = None) -> tf.keras.Model:
  """The institution's LightGBM on its training rows' columns and the release's and `copy`'s log-odds.

  `copy_train_scores`: the copy's column on the training rows (`out_of_fold_scores`); None: `copy`'s own.
  """
  scorers = (release, copy)
  if copy_train_scores is None:
    copy_train_scores = client_data.predict(copy, institution.train, schema)
  odds = [trees.log_odds(s).numpy() for s in (client_data.predict(release, institution.train, schema),
                                                copy_train_scores)]
  fitted = trees.fit_lightgbm(np.column_stack([trees.forest_inputs(institution.train, space), *odds]),
                              institution.train[schema_lib.LABEL_COLUMN].to_numpy(), space, seed=seed)
  return trees.ForestOnScores(trees.Forest.from_lightgbm(fitted), space, scorers)


def own_trees(release: tf.keras.Model, own: Personalized, institution: federated_data.Institution,
              schema: schema_lib.Schema, space: features.FeatureSpace, *, seed: int, alert_budget: float,
              threshold: Optional[float]) -> Personalized:
  """`own`'s institution's `trees_on_scores` (from `own.out_of_fold` where given), scored as `each` scores a
  copy: its threshold flags `alert_budget` of its training rows (0: `threshold`), its test (labels, scores)."""
  model = trees_on_scores(release, own.model, institution, schema, space, seed=seed,
                          copy_train_scores=own.out_of_fold)
  if alert_budget:
    threshold = evaluation.budget_threshold(client_data.predict(model, institution.train, schema), alert_budget)
  return Personalized(own.name, model, threshold, (own.test[0], client_data.predict(model, institution.test, schema)))


def privacy_note(institution: str, statement_text: str) -> str:
  """What a personalized model's privacy is: the release's for the others' customers, none for its own."""
  return (f'Personalized for {institution}: the federation\'s released model, then trained on'
          f' {institution}\'s own rows without differential privacy. For the other institutions\''
          f' customers it is post-processing of the release, whose guarantee stands: {statement_text}'
          f' For {institution}\'s own customers it carries no guarantee, as a model {institution} trains'
          ' alone; serve it inside the institution only.')

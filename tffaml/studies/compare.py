"""Does federation pay off? Every alternative an institution has, same splits.

For each seed, on the same institutions and the same per-institution test
splits, trains and scores:

* `centralized`: the model on pooled rows (the non-private upper bound);
* `local_only`: each institution's own model on its own test split;
* `fedavg`, `fedavg_client_dp`, `fedavg_record_dp`: the training program
  without DP, with client-level DP, and with record-level DP-SGD (or the
  shipped private default, when `run` is given it: `--private_config`);
* `ensemble_average`, `ensemble_vote`: every institution's local model
  applied everywhere, probabilities averaged or labels voted (the score is
  the fraction of positive votes) - sharing models instead of updates. A
  model votes positive on the share of rows its institution's positive rate
  predicts (its threshold is that quantile of its scores on its own
  training rows; out-of-bag scores for forests): a fixed 0.5 threshold
  would almost never vote positive with rare defaults;
* `forest_average`, `forest_vote`: the same with a scikit-learn random
  forest per institution;
* `autoencoder`: the training program on the config given to `run` as
  `autoencoder` (e.g. configs/aml_autoencoder.py: trained without labels);
* `rarity_model`: the same on the config given as `rarity_model` (e.g.
  configs/aml_rarity.py: the rarity score learned without labels, under
  that config's DP);
* `rarity_federated`, `rarity_local`: transactions scored without labels by
  how rare their format, direction, amount and hour are together, over the
  federation's summed counts or each bank's own (`tffaml.federated.rarity`;
  transaction data only);
* `gbt_centralized`, `gbt_local`: gradient-boosted trees (LightGBM), the
  baseline AML teams run: on pooled rows (an upper bound no consortium may
  build), and each institution's own on its own rows. They take the same
  features as the Keras model, raw (trees need no scaling), categoricals as
  LightGBM categories;
* `public_only`, `personalized`: fedavg_record_dp's model as pretrained on
  its public corpus, before any private step; its release fine-tuned by
  each institution on its own rows;
* `public_gbt`, `gbt_local_public`: LightGBM on fedavg_record_dp's public
  corpus alone (every row of it, no institution's; its categories indexed
  by the comparison's vocabulary, as every method here), scoring every
  institution's test rows; and gbt_local's trees with its log-odds as
  one more column: what an institution gets alone from its own rows and
  the public corpus, the bar joining must clear where a public corpus exists;
* `trees_on_release`: gbt_local's trees with two more columns, the
  log-odds of fedavg_record_dp's release and of the institution's
  personalized copy (the release reaches the trees only as a score: its DP
  guarantee stands for the other institutions' customers, and the trees are
  as private as gbt_local for the institution's own).

By default every method that applies runs (`default_methods`). The
centralized and local-only Keras models train
`config.reference.centralized_epochs` epochs, or `DEFAULT_REFERENCE_EPOCHS`
when the base sets 0 (configs/csv.py: its runs pool no rows), so that a bank
compares on its own data with that base as it is.

Metrics are exact (scikit-learn, from each method's scores), per institution
and over all test rows: AUC, AUPRC, and, for each of
`config.evaluation.alert_budgets`, the recall and the positive (minority)
class's F1 when that fraction of highest scores is flagged
(`evaluation.ranking_metrics`). Where configured, the minority F1 at two
thresholds an AML team would alert at: the one best on each institution's
validation period (`config.evaluation.validation_fraction`, the earliest
test rows; the other metrics are then measured on the later rows), and the
alert threshold (`config.model.alert_budget` of the method's training rows:
the exported threshold for the federated methods). Over seeds (each seed draws new
splits and initialisations) the summary gives means and standard deviations.
The ensembles and forests are classifiers: an autoencoder config compares
centralized, local-only and the federated methods.
"""

import dataclasses
import enum
import math
import os
from typing import Callable, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np
import lightgbm
import pandas as pd
from sklearn import ensemble
import tensorflow as tf

from tffaml import errors
from tffaml import features
from tffaml import io
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.federated import aggregators
from tffaml.federated import client_data
from tffaml.federated import rarity
from tffaml.models import rarity as rarity_model
from tffaml.models import tabular
from tffaml.models import trees
from tffaml.training import centralized
from tffaml.training import evaluation
from tffaml.training import personalize
from tffaml.config import builders as config_builders
from tffaml.config import checks as config_checks
from tffaml.config import data as config_data
from tffaml.training import program


class Method(enum.Enum):
  CENTRALIZED = 'centralized'
  LOCAL_ONLY = 'local_only'
  FEDAVG = 'fedavg'
  FEDAVG_CLIENT_DP = 'fedavg_client_dp'
  FEDAVG_RECORD_DP = 'fedavg_record_dp'
  ENSEMBLE_AVERAGE = 'ensemble_average'
  ENSEMBLE_VOTE = 'ensemble_vote'
  FOREST_AVERAGE = 'forest_average'
  FOREST_VOTE = 'forest_vote'
  GBT_CENTRALIZED = 'gbt_centralized'
  GBT_LOCAL = 'gbt_local'
  AUTOENCODER = 'autoencoder'
  RARITY_MODEL = 'rarity_model'
  RARITY_FEDERATED = 'rarity_federated'
  RARITY_LOCAL = 'rarity_local'
  # The model fedavg_record_dp's config pretrains on its public corpus
  # (config.public.path), scored as it starts, before any private step:
  # what the public data alone achieves, beside the private fine-tune.
  PUBLIC_ONLY = 'public_only'
  # LightGBM on that public corpus alone, and each institution's own LightGBM
  # with its log-odds as one more column (its rows and the public corpus: no
  # federation, no privacy cost for anyone else).
  PUBLIC_GBT = 'public_gbt'
  GBT_LOCAL_PUBLIC = 'gbt_local_public'
  # fedavg_record_dp's released model, then fine-tuned by each institution on
  # its own rows without DP (its config.personalize), scoring its own test rows.
  PERSONALIZED = 'personalized'
  # Each institution's LightGBM (gbt_local's) on its own rows, with two more
  # columns: the log-odds of fedavg_record_dp's release and of its personalized
  # copy. The trees see what the federation learnt under DP through the
  # release alone; the institution's rows train them without DP, as gbt_local.
  TREES_ON_RELEASE = 'trees_on_release'


# The methods that train the program on a config of their own, and the
# scripts/compare.py flag giving it.
CONFIGURED = {Method.AUTOENCODER: 'autoencoder_config', Method.RARITY_MODEL: 'rarity_config'}
# The methods that score transactions by their columns' counts.
_RARITY_COUNTS = (Method.RARITY_FEDERATED, Method.RARITY_LOCAL)
# The centralized and local-only Keras models' epochs when the base trains no
# pooled reference (`config.reference.centralized_epochs` = 0, as
# configs/csv.py: a consortium's banks cannot pool rows, but compare pools
# them in one process to measure what that would give): configs/loan_risk.py's.
DEFAULT_REFERENCE_EPOCHS = 10

Scores = dict[str, np.ndarray]  # Institution -> probability of each test row.
Thresholds = dict[str, float]  # Institution -> the score at which it alerts.


def federated_config(base: ml_collections.ConfigDict, method: Method) -> ml_collections.ConfigDict:
  """`base` with the method's aggregation and DP switched on."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.reference.centralized_epochs = 0  # Trained once, as its own method.
  config.record_dp.enabled = method is Method.FEDAVG_RECORD_DP
  if method is Method.FEDAVG_CLIENT_DP:
    if not aggregators.AggregatorType(base.aggregator.type).is_dp:
      config.aggregator.type, config.aggregator.noise_multiplier = 'gaussian_adaptive', 0.5
  else:
    config.aggregator.type, config.aggregator.noise_multiplier = 'mean', 0.0
  # The target ε (default 3) is record-level DP's; client-level DP keeps its noise.
  if method is Method.FEDAVG_RECORD_DP:
    config.privacy.target_epsilon = config.privacy.target_epsilon or 3.0
  else:
    config.privacy.target_epsilon = None
  return config


def _keras_scores(model, data: federated_data.FederatedData) -> Scores:
  return {i.name: client_data.predict(model, i.test, data.schema) for i in data.institutions}


def _combine(per_model: list[Scores], thresholds: Optional[Sequence[float]] = None) -> Scores:
  """Average of the models' probabilities, or the fraction of models whose
  score reaches their own threshold."""
  if thresholds is not None:
    per_model = [{k: (v >= t).astype(float) for k, v in s.items()}
                 for s, t in zip(per_model, thresholds)]
  return {name: np.mean([s[name] for s in per_model], axis=0) for name in per_model[0]}


def _vote_threshold(train_scores: np.ndarray, labels: np.ndarray) -> float:
  """The score above which the institution's positive rate of rows lies."""
  return float(np.quantile(train_scores, 1.0 - labels.mean()))


def _local_models(data, space, config, seed, *, forests: bool):
  """Each institution's Keras model and random forest, trained on its rows only.

  A Keras model gets as many optimizer steps as the centralized one (more
  epochs over fewer rows), so local-only is not handicapped by undertraining.
  Returns the Keras models, their scores on their own training rows, the
  forests, and each kind's vote thresholds.
  """
  keras_models, train_scores, forest_models, thresholds = [], [], [], {'keras': [], 'forest': []}
  pooled_rows = sum(len(i.train) for i in data.institutions)
  for institution in data.institutions:
    alone = federated_data.FederatedData(data.schema, (institution,))
    epochs = math.ceil(config.reference.centralized_epochs * pooled_rows / len(institution.train))
    model = _centralized(config, space, alone, epochs=epochs, seed=seed)
    labels = institution.train[schema_lib.LABEL_COLUMN].to_numpy()
    keras_models.append(model)
    train_scores.append(client_data.predict(model, institution.train, data.schema))
    thresholds['keras'].append(_vote_threshold(train_scores[-1], labels))
    if forests:
      forest = ensemble.RandomForestClassifier(
          n_estimators=200, min_samples_leaf=5, n_jobs=-1, random_state=seed, oob_score=True)
      forest_models.append(forest.fit(trees.forest_inputs(institution.train, space), labels))
      oob = np.nan_to_num(forest.oob_decision_function_[:, 1], nan=labels.mean())
      thresholds['forest'].append(_vote_threshold(oob, labels))
  return keras_models, train_scores, forest_models, thresholds


def _gbt(frame: pd.DataFrame, space: features.FeatureSpace, seed: int) -> lightgbm.LGBMClassifier:
  """LightGBM on `frame`'s rows (`trees.forest_inputs`; categoricals as categories)."""
  return trees.fit_lightgbm(trees.forest_inputs(frame, space), frame[schema_lib.LABEL_COLUMN].to_numpy(),
                            space, seed=seed)


def _gbt_scores(data, space, methods, seed: int, budget: float) -> tuple[dict, dict]:
  """The requested GBT methods' test scores and their alert thresholds at `budget` (0: none)."""
  scores, thresholds = {}, {}
  score = lambda model, frame: model.predict_proba(trees.forest_inputs(frame, space))[:, 1]
  if Method.GBT_CENTRALIZED in methods:
    train = data.pooled('train')
    pooled = _gbt(train, space, seed)
    scores[Method.GBT_CENTRALIZED] = {i.name: score(pooled, i.test) for i in data.institutions}
    if budget:
      thresholds[Method.GBT_CENTRALIZED] = dict.fromkeys(
          data.names, evaluation.budget_threshold(score(pooled, train), budget))
  if Method.GBT_LOCAL in methods:  # Each bank's trees score its own test rows only.
    models = {i.name: _gbt(i.train, space, seed) for i in data.institutions}
    scores[Method.GBT_LOCAL] = {i.name: score(models[i.name], i.test) for i in data.institutions}
    if budget:
      thresholds[Method.GBT_LOCAL] = {
          i.name: evaluation.budget_threshold(score(models[i.name], i.train), budget) for i in data.institutions}
  return scores, thresholds


def _centralized(config, space, data, *, epochs: int, seed: int):
  """The config's Keras model and loss, trained by Keras on `data`'s pooled rows."""
  # Parsed as the non-private run: the base may carry record-level DP's target ε.
  choices = config_checks.parse_choices(federated_config(config, Method.FEDAVG))
  return centralized.train(
      config_builders.keras_model_fn(config, choices, space), data,
      loss=tabular.keras_loss(config_builders.loss_fn(config, choices)), epochs=epochs,
      batch_size=config.federated.batch_size, learning_rate=config.reference.learning_rate,
      seed=seed)


@dataclasses.dataclass
class Scored:
  """One seed's methods on the same institutions: test scores, and alert thresholds where a
  method has one (the score flagging `config.model.alert_budget` of its training rows)."""

  data: federated_data.FederatedData
  scores: dict[Method, Scores] = dataclasses.field(default_factory=dict)
  thresholds: dict[Method, Thresholds] = dataclasses.field(default_factory=dict)


def default_methods(schema: schema_lib.Schema, configs: dict[Method, ml_collections.ConfigDict]) -> list[Method]:
  """Every method that applies: those with a config of their own when given it, the rarity counts on transactions."""
  transactions = not rarity_model.missing_columns(schema.columns)
  public = config_data.public_corpus(configs.get(Method.FEDAVG_RECORD_DP, ml_collections.ConfigDict())) is not None
  return [m for m in Method
          if (m not in CONFIGURED or m in configs) and (m not in _RARITY_COUNTS or transactions)
          and (m not in _PUBLIC or public)]


def reference_epochs(base: ml_collections.ConfigDict, log: Callable[[str], None]) -> int:
  """The centralized and local-only Keras models' epochs: the base's, or the default for 0."""
  epochs = base.reference.centralized_epochs
  if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
    raise errors.ConfigError(
        f'config.reference.centralized_epochs={epochs!r}: compare trains its centralized and local-only'
        f' Keras models that many epochs; set a positive integer (or 0 for {DEFAULT_REFERENCE_EPOCHS}).')
  if epochs:
    return epochs
  log(f'config.reference.centralized_epochs=0 (the base trains no pooled reference): the centralized and'
      f' local-only models train {DEFAULT_REFERENCE_EPOCHS} epochs; set --config.reference.centralized_epochs'
      ' to choose.')
  return DEFAULT_REFERENCE_EPOCHS


def method_scores(
    base: ml_collections.ConfigDict, methods: Optional[Sequence[Method]], workdir: str,
    *, log: Callable[[str], None], configs: Optional[dict[Method, ml_collections.ConfigDict]] = None,
) -> Scored:
  """Every method's test scores (and thresholds) for one seed (`base.seed`).

  `methods`: None for `default_methods` (known once the data is loaded).
  """
  data = config_data.load_data(base, log=log)
  if methods is None:
    methods = default_methods(data.schema, configs or {})
    log(f'methods: {", ".join(m.value for m in methods)}')
  missing = rarity_model.missing_columns(data.schema.columns)
  if missing and set(_RARITY_COUNTS) & set(methods):
    raise errors.ConfigError(f'--methods: the rarity methods score transactions; this data has no {missing}'
                             ' columns. Leave rarity_federated and rarity_local out of --methods.')
  space = config_data.feature_space(base, data)
  scored, budget = Scored(data), base.model.alert_budget
  if Method.CENTRALIZED in methods:
    log('centralized')
    model = _centralized(base, space, data, epochs=base.reference.centralized_epochs, seed=base.seed)
    scored.scores[Method.CENTRALIZED] = _keras_scores(model, data)
    if budget:
      train = client_data.predict(model, data.pooled('train'), data.schema)
      scored.thresholds[Method.CENTRALIZED] = dict.fromkeys(data.names, evaluation.budget_threshold(train, budget))
  if _LOCAL & set(methods):
    _local_methods(scored, space, base, methods, log)
  if {Method.GBT_CENTRALIZED, Method.GBT_LOCAL} & set(methods):
    log('gradient-boosted trees')
    scores, thresholds = _gbt_scores(data, space, methods, base.seed, budget)
    scored.scores.update(scores)
    scored.thresholds.update(thresholds)
  if {Method.RARITY_FEDERATED, Method.RARITY_LOCAL} & set(methods):
    _rarity_methods(scored, space, methods)
  if Method.PUBLIC_ONLY in methods:
    _public_only(scored, _run_config(base, Method.FEDAVG_RECORD_DP, configs or {}), log)
  if set(_PUBLIC_TREES) & set(methods):
    _public_trees(scored, space, _run_config(base, Method.FEDAVG_RECORD_DP, configs or {}), methods,
                  budget=budget, log=log)
  private = None
  for method in (Method.FEDAVG, Method.FEDAVG_CLIENT_DP, Method.FEDAVG_RECORD_DP, *CONFIGURED):
    if method in methods or (method is Method.FEDAVG_RECORD_DP and _ON_RELEASE & set(methods)):
      log(method.value)
      config = _run_config(base, method, configs or {})
      release = ml_collections.ConfigDict(config.to_dict())
      release.personalize.epochs = 0  # The personalized row's copies are trained below, once.
      result = program.run(release, os.path.join(workdir, f'seed{base.seed}', method.value),
                           log=lambda line: log(f'  {line}'))
      scored.scores[method] = _keras_scores(result.model, data)
      if config.model.alert_budget:
        scored.thresholds[method] = dict.fromkeys(data.names, result.threshold)
      if method is Method.FEDAVG_RECORD_DP:
        private = (config, result.model)
  if _ON_RELEASE & set(methods):
    copies = _personalized(scored, base, *private, log, out_of_fold=Method.TREES_ON_RELEASE in methods)
    if Method.TREES_ON_RELEASE in methods:
      _trees_on_release(scored, space, base, private[1], copies, log)
  scored.scores = {m: scored.scores[m] for m in methods}
  return scored


# The methods that read fedavg_record_dp's public corpus (config.public.path); those that train trees on it.
_PUBLIC_TREES = (Method.PUBLIC_GBT, Method.GBT_LOCAL_PUBLIC)
_PUBLIC = {Method.PUBLIC_ONLY, *_PUBLIC_TREES}
# The methods built on fedavg_record_dp's release and each institution's copy of it.
_ON_RELEASE = {Method.PERSONALIZED, Method.TREES_ON_RELEASE}


_LOCAL = {Method.LOCAL_ONLY, Method.ENSEMBLE_AVERAGE, Method.ENSEMBLE_VOTE, Method.FOREST_AVERAGE, Method.FOREST_VOTE}


def _local_methods(scored: Scored, space, base, methods, log) -> None:
  """Local-only Keras models, and the ensembles and forests built from each institution's models."""
  data = scored.data
  with_forests = bool({Method.FOREST_AVERAGE, Method.FOREST_VOTE} & set(methods))
  log('local models (Keras' + (' and random forest' if with_forests else '') + ' per institution)')
  keras_models, train_scores, forests, thresholds = _local_models(data, space, base, base.seed,
                                                                   forests=with_forests)
  keras_scores = [_keras_scores(m, data) for m in keras_models]
  scored.scores[Method.LOCAL_ONLY] = {i.name: keras_scores[k][i.name] for k, i in enumerate(data.institutions)}
  if base.model.alert_budget:
    scored.thresholds[Method.LOCAL_ONLY] = {
        i.name: evaluation.budget_threshold(scores, base.model.alert_budget)
        for scores, i in zip(train_scores, data.institutions)}
  scored.scores[Method.ENSEMBLE_AVERAGE] = _combine(keras_scores)
  scored.scores[Method.ENSEMBLE_VOTE] = _combine(keras_scores, thresholds['keras'])
  if with_forests:
    forest_scores = [
        {i.name: f.predict_proba(trees.forest_inputs(i.test, space))[:, 1] for i in data.institutions}
        for f in forests]
    scored.scores[Method.FOREST_AVERAGE] = _combine(forest_scores)
    scored.scores[Method.FOREST_VOTE] = _combine(forest_scores, thresholds['forest'])


def _personalized(scored: Scored, base, config, model, log, *,
                  out_of_fold: bool = False) -> dict[str, personalize.Personalized]:
  """Each institution fine-tunes the private release on its own rows: the private config's
  `personalize` (as scripts/train.py exports them), or with its epochs 0 local_only's epochs and rate."""
  log('personalized')
  data, choices = scored.data, config_checks.parse_choices(config)
  pooled_rows = sum(len(i.train) for i in data.institutions)
  p = config.personalize

  def how(institution) -> personalize.FineTune:
    if p.epochs:
      return personalize.FineTune(epochs=p.epochs, batch_size=config.federated.batch_size,
                                  learning_rate=p.learning_rate, seed=base.seed)
    return personalize.FineTune(  # local_only's rule.
        epochs=math.ceil(base.reference.centralized_epochs * pooled_rows / len(institution.train)),
        batch_size=config.federated.batch_size, learning_rate=base.reference.learning_rate, seed=base.seed)
  copies = list(personalize.each(model, data.institutions, data.schema,
                                 loss=tabular.keras_loss(config_builders.loss_fn(config, choices)), how=how,
                                 alert_budget=base.model.alert_budget, threshold=None, log=lambda _: None,
                                 out_of_fold=out_of_fold))
  scored.scores[Method.PERSONALIZED] = {c.name: c.test[1] for c in copies}
  if base.model.alert_budget:
    scored.thresholds[Method.PERSONALIZED] = {c.name: c.threshold for c in copies}
  return {c.name: c for c in copies}


def _trees_on_release(scored: Scored, space, base, release: tf.keras.Model,
                      copies: dict[str, personalize.Personalized], log) -> None:
  """Each institution's LightGBM on its rows' columns and the release's and its copy's log-odds (out of fold)."""
  log('trees on the release')
  owned = [personalize.own_trees(release, copies[i.name], i, scored.data.schema, space, seed=base.seed,
                                 alert_budget=base.model.alert_budget, threshold=None)
           for i in scored.data.institutions]
  scored.scores[Method.TREES_ON_RELEASE] = {o.name: o.test[1] for o in owned}
  if base.model.alert_budget:
    scored.thresholds[Method.TREES_ON_RELEASE] = {o.name: o.threshold for o in owned}


def _public_only(scored: Scored, config: ml_collections.ConfigDict, log) -> None:
  """The public corpus's pretrained model (fedavg_record_dp's config.public), scored as the federation starts."""
  corpus = config_data.public_corpus(config)
  if corpus is None or not corpus.epochs:
    raise errors.ConfigError('--methods: public_only scores the model pretrained on fedavg_record_dp\'s public'
                             ' corpus; set --private_config.public.path (and public.epochs > 0), or leave'
                             ' public_only out of --methods.')
  log('public_only')
  public = program.public_start(config, config_checks.parse_choices(config), pretrain=True,
                                log=lambda line: log(f'  {line}'))
  model = public.model
  scored.scores[Method.PUBLIC_ONLY] = _keras_scores(model, scored.data)
  if config.model.alert_budget:
    scored.thresholds[Method.PUBLIC_ONLY] = dict.fromkeys(
        scored.data.names, public.threshold(model, config.model.alert_budget))


def _public_trees(scored: Scored, space, config: ml_collections.ConfigDict, methods, *, budget: float,
                  log) -> None:
  """LightGBM on every row of fedavg_record_dp's public corpus (`public_gbt`), and each institution's own
  LightGBM with that model's log-odds as one more column (`gbt_local_public`)."""
  if config_data.public_corpus(config) is None:
    names = ' and '.join(m.value for m in _PUBLIC_TREES if m in methods)
    raise errors.ConfigError(f'--methods: {names} train LightGBM on fedavg_record_dp\'s public corpus; set'
                             f' --private_config.public.path, or leave {names} out of --methods.')
  log('trees on the public corpus')
  corpus = config_data.load_public(config)
  rows = pd.concat([corpus.pooled('train'), corpus.pooled('test')], ignore_index=True)
  public = _gbt(rows, space, config.seed)
  score = lambda frame: public.predict_proba(trees.forest_inputs(frame, space))[:, 1]
  data = scored.data
  if Method.PUBLIC_GBT in methods:
    scored.scores[Method.PUBLIC_GBT] = {i.name: score(i.test) for i in data.institutions}
    if budget:
      scored.thresholds[Method.PUBLIC_GBT] = dict.fromkeys(data.names, evaluation.budget_threshold(score(rows),
                                                                                                   budget))
  if Method.GBT_LOCAL_PUBLIC in methods:  # The public model's rows are not the institution's: no stacking leak.
    inputs = lambda frame: np.column_stack([trees.forest_inputs(frame, space), trees.log_odds(score(frame)).numpy()])
    own_scores, thresholds = {}, {}
    for i in data.institutions:
      train = inputs(i.train)
      own = trees.fit_lightgbm(train, i.train[schema_lib.LABEL_COLUMN].to_numpy(), space, seed=config.seed)
      own_scores[i.name] = own.predict_proba(inputs(i.test))[:, 1]
      if budget:
        thresholds[i.name] = evaluation.budget_threshold(own.predict_proba(train)[:, 1], budget)
    scored.scores[Method.GBT_LOCAL_PUBLIC] = own_scores
    if thresholds:
      scored.thresholds[Method.GBT_LOCAL_PUBLIC] = thresholds


def _rarity_methods(scored: Scored, space: features.FeatureSpace, methods) -> None:
  """Rarity over the federation's summed counts and over each bank's own."""
  data = scored.data
  grid = rarity_model.grid_for(space.vocabulary)
  if Method.RARITY_FEDERATED in methods:
    summed = rarity.federated_counts([i.train for i in data.institutions], grid)
    scored.scores[Method.RARITY_FEDERATED] = {i.name: rarity.scores(i.test, grid, summed) for i in data.institutions}
  if Method.RARITY_LOCAL in methods:
    scored.scores[Method.RARITY_LOCAL] = {
        i.name: rarity.scores(i.test, grid, rarity.counts(i.train, grid)) for i in data.institutions}


def _run_config(base, method: Method, configs: dict[Method, ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """The training program's config for a federated method: its own config where `run` was
  given one (the shipped private default, the unlabelled models), on `base`'s data and seed."""
  if method not in configs:
    return federated_config(base, method)
  config = ml_collections.ConfigDict(configs[method].to_dict())
  config.data, config.seed = ml_collections.ConfigDict(base.data.to_dict()), base.seed
  config.reference.centralized_epochs = 0
  return config


def _auc(labels, scores) -> float:
  value = evaluation.auc(labels, scores)
  return float('nan') if value is None else value


def run(
    base: ml_collections.ConfigDict, *, seeds: Sequence[int], methods: Optional[Sequence[Method]],
    output_dir: str, log: Callable[[str], None] = print,
    configs: Optional[dict[Method, ml_collections.ConfigDict]] = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
  """Scores every method for every seed; writes and returns (summary, per institution).

  `configs`: the configs some federated methods run instead of `base`'s
  variant, on `base`'s data and seeds: `fedavg_record_dp` the shipped private
  default (e.g. configs/aml.py); `autoencoder` and `rarity_model` their
  configs (required when in `methods`). `methods`: None for every one that
  applies (`default_methods`).
  Call inside `tffaml.runtime.local_runtime()`.
  """
  epochs = reference_epochs(base, log)
  for method, flag in CONFIGURED.items():
    if method in (methods or ()) and method not in (configs or {}):
      raise errors.ConfigError(f'the {method.value} method needs its config (scripts/compare.py --{flag});'
                               f' give it, or leave {method.value} out of --methods.')
  rows = []
  for seed in seeds:
    config = ml_collections.ConfigDict(base.to_dict())
    config.seed, config.reference.centralized_epochs = seed, epochs
    log(f'seed {seed}')
    scored = method_scores(config, methods, os.path.join(output_dir, 'runs'), log=log, configs=configs)
    rows += _seed_rows(scored, seed, budgets=tuple(base.evaluation.alert_budgets),
                       validation_fraction=base.evaluation.validation_fraction)
  per_institution = pd.DataFrame(rows)
  summary = summarize(per_institution)
  write_outputs(summary, per_institution, output_dir)
  return summary, per_institution


def _seed_rows(scored: Scored, seed: int, *, budgets, validation_fraction: float) -> list[dict]:
  """Per method: each institution's metrics and those of all test rows.

  With `validation_fraction` > 0, each institution's earliest such fraction of
  test rows is its validation period: it picks the threshold of best
  minority F1 there (`f1_at_validation_threshold`), and every metric is
  measured on the later rows only.
  """
  data = scored.data
  split = {i.name: evaluation.validation_rows(len(i.test), validation_fraction) for i in data.institutions}
  labels = {i.name: i.test[schema_lib.LABEL_COLUMN].to_numpy() for i in data.institutions}
  rows = []
  for method, by_institution in scored.scores.items():
    later = {n: (labels[n][split[n]:], by_institution[n][split[n]:]) for n in data.names}
    flags = {}
    if validation_fraction:
      flags['validation_threshold'] = {n: later[n][1] >= evaluation.best_f1_threshold(
          labels[n][:split[n]], by_institution[n][:split[n]]) for n in data.names}
    if method in scored.thresholds:
      flags['alert_threshold'] = {n: later[n][1] >= scored.thresholds[method][n] for n in data.names}
    groups = [(name, len(i.train), [name]) for name, i in zip(data.names, data.institutions)]
    groups.append(('all test rows', sum(len(i.train) for i in data.institutions), data.names))
    for name, train_rows, members in groups:
      joined = lambda parts: np.concatenate([parts[m] for m in members])
      y = joined({n: later[n][0] for n in members})
      rows.append({'method': method.value, 'seed': seed, 'institution': name, 'train_rows': train_rows,
                   **_metrics(y, joined({n: later[n][1] for n in members}), budgets),
                   **{f'f1_at_{kind}': evaluation.flagged_f1(y, joined(flagged)) for kind, flagged in flags.items()}})
  return rows


def _metrics(labels: np.ndarray, scores: np.ndarray, budgets) -> dict[str, float]:
  ranking = evaluation.ranking_metrics(labels, scores, budgets=budgets)
  return {'auc': _auc(labels, scores), 'auprc': ranking['auprc'],
          **{k: v for k, v in ranking.items() if k.startswith(('recall_at_', 'f1_at_'))}}


def _metric_names(per_institution: pd.DataFrame) -> list[str]:
  return [c for c in per_institution.columns if c not in ('method', 'seed', 'institution', 'train_rows')]


def summarize(per_institution: pd.DataFrame) -> pd.DataFrame:
  """Per method and metric: all test rows, median and worst institution; mean and std over seeds."""
  pooled = per_institution['institution'] == 'all test rows'
  by_seed = per_institution[~pooled].groupby(['method', 'seed'], sort=False)
  pooled_rows = per_institution[pooled].set_index(['method', 'seed'])
  per_seed = pd.concat({name: pd.DataFrame({
      f'pooled_{name}': pooled_rows[name],
      f'median_institution_{name}': by_seed[name].median(),
      f'worst_institution_{name}': by_seed[name].min(),
  }) for name in _metric_names(per_institution)}, axis=1).droplevel(0, axis=1)
  stats = per_seed.groupby('method', sort=False).agg(['mean', 'std'])
  stats.columns = [f'{a}_{b}' for a, b in stats.columns]
  stats['seeds'] = per_seed.groupby('method', sort=False).size()
  return stats.reset_index()


_TITLES = {'auc': 'AUC', 'auprc': 'AUPRC'}


def _title(metric: str) -> str:
  if metric == 'f1_at_validation_threshold':
    return "minority F1 at the threshold best on each institution's validation period"
  if metric == 'f1_at_alert_threshold':
    return 'minority F1 at the alert threshold (flags config.model.alert_budget of training rows)'
  if metric.startswith('f1_at_'):
    return f'minority F1 at {metric[len("f1_at_"):]} alert budget'
  return _TITLES.get(metric, metric.replace('recall_at_', 'recall at ') + ' alert budget')


def _markdown(summary: pd.DataFrame) -> str:
  def cell(r, column):
    mean, std = r[f'{column}_mean'], r[f'{column}_std']
    if np.isnan(mean):  # The method has no such threshold.
      return '–'
    return f'{mean:.4f}' if np.isnan(std) else f'{mean:.4f} ± {std:.4f}'
  metrics = [c[len('pooled_'):-len('_mean')] for c in summary.columns
             if c.startswith('pooled_') and c.endswith('_mean')]
  lines = []
  for metric in metrics:
    name = _title(metric)
    lines += [f'{name}:', '', f'| method | {name}, all test rows | median institution | worst institution | seeds |',
              '|---|---|---|---|---|']
    lines += [f'| {r["method"]} | {cell(r, f"pooled_{metric}")} | {cell(r, f"median_institution_{metric}")} |'
              f' {cell(r, f"worst_institution_{metric}")} | {r["seeds"]} |' for _, r in summary.iterrows()]
    lines.append('')
  return '\n'.join(lines)


def _plot(summary: pd.DataFrame, per_institution: pd.DataFrame, output_png: str) -> None:
  # Rare positives (alert budgets measured): AUPRC says more than AUC.
  metric = 'auprc' if any(c.startswith('recall_at_') for c in per_institution) else 'auc'
  fig, (bars, gains) = plt.subplots(1, 2, figsize=(12, 4.2))
  bars.barh(summary['method'], summary[f'pooled_{metric}_mean'],
            xerr=summary[f'pooled_{metric}_std'].fillna(0), color='tab:blue', alpha=0.8)
  bars.set_xlim(0.45 if metric == 'auc' else 0.0, 1.0)
  bars.invert_yaxis()
  bars.set_xlabel(f'{_title(metric)} on all test rows (mean ± std over seeds)')
  bars.grid(axis='x', alpha=0.3)
  by = per_institution[per_institution['institution'] != 'all test rows'].groupby(
      ['method', 'institution', 'train_rows'])[metric].mean().unstack('method').reset_index()
  if {'fedavg', 'local_only'} <= set(by.columns):
    gains.scatter(by['train_rows'], by['fedavg'] - by['local_only'], color='tab:green')
    gains.axhline(0, color='black', linewidth=0.8)
    gains.set_xlabel('institution training rows')
    gains.set_ylabel(f'{_title(metric)} gain of FedAvg over local-only')
    gains.set_title('does federation help the small lenders most?', fontsize=10)
    gains.grid(alpha=0.3)
  else:
    gains.axis('off')
  fig.tight_layout()
  with io.atomic_path(output_png) as tmp:
    fig.savefig(tmp, format='png', dpi=110)
  plt.close(fig)


def write_outputs(summary: pd.DataFrame, per_institution: pd.DataFrame, output_dir: str) -> None:
  os.makedirs(output_dir, exist_ok=True)
  for name, table in (('compare.csv', summary), ('compare_institutions.csv', per_institution)):
    with io.atomic_path(os.path.join(output_dir, name)) as tmp:
      table.to_csv(tmp, index=False)
  io.write_text(os.path.join(output_dir, 'compare.md'), _markdown(summary))
  _plot(summary, per_institution, os.path.join(output_dir, 'compare.png'))

"""Prototype (not shipped; docs/results.md, "an unseen federation"): each bank's LightGBM on its own
rows with the private release's log-odds as one more column, beside compare's gbt_local and the release.

  [LOCAL_ONLY=1: compare's local_only too] PERS_EPOCHS=<the private run's personalize.epochs, if resuming compare's run> \
  python docs/prototypes/trees_on_release.py TRANSACTIONS.csv PUBLIC.csv OUT_DIR SEED [NOISE_SEED]

It runs (or resumes) configs/aml.py:public in OUT_DIR/runs/seed<SEED>/fedavg_record_dp, as
scripts/compare.py does, and prints compare's summary. Its rows: ensemble_average is the trees on
the release's log-odds; ensemble_vote the trees on the release's and the bank's personalized copy's
(3 epochs, as configs/aml.py:public); personalized the copies alone. It calls compare's private
functions: a sketch to measure, not an API.
"""
import os, sys, json
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import numpy as np, pandas as pd, lightgbm, ml_collections
from tffaml import runtime
from tffaml.studies import compare
from tffaml.models import trees
from tffaml.config import data as config_data
from tffaml.federated import client_data
from tffaml.training import program, evaluation
from tffaml.data import schema as schema_lib
from configs import aml

data_path, public_path, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
noise_seed = int(sys.argv[5]) if len(sys.argv) > 5 else None
base = aml.get_config('compare'); base.data.path = data_path; base.seed = seed
base.reference.centralized_epochs = compare.reference_epochs(base, print)
private = aml.get_config('public'); private.public.path = public_path
if noise_seed is not None: private.privacy.noise_seed = noise_seed
configs = {compare.Method.FEDAVG_RECORD_DP: private}
with runtime.local_runtime():
  data = config_data.load_data(base, log=print)
  space = config_data.feature_space(base, data)
  scored = compare.Scored(data)
  budget = base.model.alert_budget
  if os.environ.get('LOCAL_ONLY'):  # Each bank's Keras model alone, as compare's local_only.
    compare._local_methods(scored, space, base, [compare.Method.LOCAL_ONLY], print)
  s, t = compare._gbt_scores(data, space, [compare.Method.GBT_LOCAL], seed, budget)
  scored.scores.update(s); scored.thresholds.update(t)
  config = compare._run_config(base, compare.Method.FEDAVG_RECORD_DP, configs)
  release = ml_collections.ConfigDict(config.to_dict()); release.personalize.epochs = int(os.environ.get("PERS_EPOCHS", "0"))
  result = program.run(release, os.path.join(out, 'runs', f'seed{seed}', 'fedavg_record_dp'), log=print)
  scored.scores[compare.Method.FEDAVG_RECORD_DP] = compare._keras_scores(result.model, data)
  scored.thresholds[compare.Method.FEDAVG_RECORD_DP] = dict.fromkeys(data.names, result.threshold)
  logit = lambda p: np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1))
  categorical = list(range(len(space.schema.numeric), len(space.schema.numeric) + len(space.schema.categorical)))
  stacked, thresholds = {}, {}
  for inst in data.institutions:
    tr = client_data.predict(result.model, inst.train, data.schema)
    te = client_data.predict(result.model, inst.test, data.schema)
    X = np.column_stack([trees.forest_inputs(inst.train, space), logit(tr)])
    m = lightgbm.LGBMClassifier(random_state=seed, **trees.GBT_PARAMETERS).fit(
        X, inst.train[schema_lib.LABEL_COLUMN].to_numpy(), categorical_feature=categorical or 'auto')
    stacked[inst.name] = m.predict_proba(np.column_stack([trees.forest_inputs(inst.test, space), logit(te)]))[:, 1]
    thresholds[inst.name] = evaluation.budget_threshold(m.predict_proba(X)[:, 1], budget)
  # Variant: the bank's personalized Keras copy's log-odds as a second column.
  from tffaml.training import personalize
  from tffaml.config import checks as config_checks, builders as config_builders
  from tffaml.models import tabular
  choices = config_checks.parse_choices(config)
  how = lambda inst: personalize.FineTune(epochs=3, batch_size=config.federated.batch_size,
                                          learning_rate=config.personalize.learning_rate, seed=seed)
  copies = {c.name: c for c in personalize.each(result.model, data.institutions, data.schema,
      loss=tabular.keras_loss(config_builders.loss_fn(config, choices)), how=how, alert_budget=0,
      threshold=None, log=lambda _: None)}
  both, both_thresholds = {}, {}
  for inst in data.institutions:
    copy = copies[inst.name].model
    rel = [logit(client_data.predict(result.model, f, data.schema)) for f in (inst.train, inst.test)]
    own = [logit(client_data.predict(copy, f, data.schema)) for f in (inst.train, inst.test)]
    X = np.column_stack([trees.forest_inputs(inst.train, space), rel[0], own[0]])
    m = lightgbm.LGBMClassifier(random_state=seed, **trees.GBT_PARAMETERS).fit(
        X, inst.train[schema_lib.LABEL_COLUMN].to_numpy(), categorical_feature=categorical or 'auto')
    both[inst.name] = m.predict_proba(np.column_stack([trees.forest_inputs(inst.test, space), rel[1], own[1]]))[:, 1]
    both_thresholds[inst.name] = evaluation.budget_threshold(m.predict_proba(X)[:, 1], budget)
  scored.scores[compare.Method.ENSEMBLE_VOTE] = both  # 'trees on the release's and the copy's scores'.
  scored.thresholds[compare.Method.ENSEMBLE_VOTE] = both_thresholds
  scored.scores[compare.Method.PERSONALIZED] = {n: c.test[1] for n, c in copies.items()}
  scored.scores[compare.Method.ENSEMBLE_AVERAGE] = stacked  # 'stacked' in this prototype.
  scored.thresholds[compare.Method.ENSEMBLE_AVERAGE] = thresholds
  rows = compare._seed_rows(scored, seed, budgets=tuple(base.evaluation.alert_budgets),
                            validation_fraction=base.evaluation.validation_fraction)
  per = pd.DataFrame(rows)
  summary = compare.summarize(per)
  os.makedirs(out, exist_ok=True)
  per.to_csv(os.path.join(out, 'per.csv'), index=False)
  print(summary.to_string())

"""Prototype (not shipped; docs/results.md, "AML: trees on a public corpus"): LightGBM trained on the
public corpus alone (no privacy cost), its log-odds as one more column of each bank's own trees.

  python docs/prototypes/public_trees.py TRANSACTIONS.csv PUBLIC.csv COMPARE_DIR SEED

COMPARE_DIR holds a finished `scripts/compare.py --config=configs/aml.py:compare
--private_config=configs/aml.py:public --private_config.public.path=PUBLIC.csv` run of SEED, whose
private run (the release) is resumed, not trained again. Its rows, in compare's summary:
  gbt_local          each bank's LightGBM on its own rows (compare's);
  fedavg_record_dp   the release, ε = 1 per customer;
  forest_average     the public LightGBM alone (trained on the public corpus only; compare's public_gbt);
  ensemble_average   each bank's LightGBM with the public LightGBM's log-odds as a column (gbt_local_public);
  ensemble_vote      the same with the release's log-odds too;
  gbt_centralized    LightGBM on every bank's rows pooled (no consortium can: an upper bound);
  centralized        the same with the public LightGBM's log-odds as a column.
It calls compare's private functions: a sketch to measure, not an API.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import numpy as np  # pylint: disable=g-import-not-at-top
import pandas as pd  # pylint: disable=g-import-not-at-top

from configs import aml  # pylint: disable=g-import-not-at-top
from tffaml import runtime  # pylint: disable=g-import-not-at-top
from tffaml.config import data as config_data  # pylint: disable=g-import-not-at-top
from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
from tffaml.federated import client_data  # pylint: disable=g-import-not-at-top
from tffaml.models import trees  # pylint: disable=g-import-not-at-top
from tffaml.studies import compare  # pylint: disable=g-import-not-at-top
from tffaml.training import evaluation  # pylint: disable=g-import-not-at-top
from tffaml.training import program  # pylint: disable=g-import-not-at-top

M = compare.Method
data_path, public_path, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
base = aml.get_config('compare')
base.data.path, base.seed = data_path, seed
private = aml.get_config('public')
private.public.path = public_path
logit = lambda p: np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1))
label = lambda frame: frame[schema_lib.LABEL_COLUMN].to_numpy()

with runtime.local_runtime():
  data = config_data.load_data(base, log=print)
  space = config_data.feature_space(base, data)
  scored = compare.Scored(data)
  budget = base.model.alert_budget
  s, t = compare._gbt_scores(data, space, [M.GBT_LOCAL], seed, budget)  # pylint: disable=protected-access
  scored.scores.update(s)
  scored.thresholds.update(t)
  config = compare._run_config(base, M.FEDAVG_RECORD_DP, {M.FEDAVG_RECORD_DP: private})  # pylint: disable=protected-access
  config.personalize.epochs = 0  # As compare ran it: the copies are compare's own.
  result = program.run(config, os.path.join(out, 'runs', f'seed{seed}', 'fedavg_record_dp'), log=print)
  release = lambda frame: client_data.predict(result.model, frame, data.schema)
  scored.scores[M.FEDAVG_RECORD_DP] = {i.name: release(i.test) for i in data.institutions}
  scored.thresholds[M.FEDAVG_RECORD_DP] = dict.fromkeys(data.names, result.threshold)

  corpus = config_data.load_public(config)
  pooled = pd.concat([corpus.pooled('train'), corpus.pooled('test')], ignore_index=True)
  print(f'public corpus: {len(pooled)} rows, {int(label(pooled).sum())} positive')
  public = trees.fit_lightgbm(trees.forest_inputs(pooled, space), label(pooled), space, seed=seed)
  public_score = lambda frame: public.predict_proba(trees.forest_inputs(frame, space))[:, 1]
  rows = {M.FOREST_AVERAGE: ({}, {}), M.ENSEMBLE_AVERAGE: ({}, {}), M.ENSEMBLE_VOTE: ({}, {})}
  for inst in data.institutions:
    pub = {k: public_score(f) for k, f in (('train', inst.train), ('test', inst.test))}
    rows[M.FOREST_AVERAGE][0][inst.name] = pub['test']
    rows[M.FOREST_AVERAGE][1][inst.name] = evaluation.budget_threshold(pub['train'], budget)
    rel = {k: release(f) for k, f in (('train', inst.train), ('test', inst.test))}
    for method, extra in ((M.ENSEMBLE_AVERAGE, lambda k: [logit(pub[k])]),
                          (M.ENSEMBLE_VOTE, lambda k: [logit(pub[k]), logit(rel[k])])):
      inputs = lambda k, f: np.column_stack([trees.forest_inputs(f, space), *extra(k)])
      model = trees.fit_lightgbm(inputs('train', inst.train), label(inst.train), space, seed=seed)
      rows[method][0][inst.name] = model.predict_proba(inputs('test', inst.test))[:, 1]
      rows[method][1][inst.name] = evaluation.budget_threshold(
          model.predict_proba(inputs('train', inst.train))[:, 1], budget)
  # Upper bounds no consortium can run: every bank's rows pooled, without and with the public column.
  pooled_train = data.pooled('train')
  pub_pooled = logit(public_score(pooled_train))
  for method, extra in ((M.GBT_CENTRALIZED, lambda f: []), (M.CENTRALIZED, lambda f: [logit(public_score(f))])):
    extra_train = [] if method is M.GBT_CENTRALIZED else [pub_pooled]
    model = trees.fit_lightgbm(np.column_stack([trees.forest_inputs(pooled_train, space), *extra_train]),
                               label(pooled_train), space, seed=seed)
    inputs = lambda f: np.column_stack([trees.forest_inputs(f, space), *extra(f)])
    rows[method] = ({i.name: model.predict_proba(inputs(i.test))[:, 1] for i in data.institutions},
                    dict.fromkeys(data.names, evaluation.budget_threshold(
                        model.predict_proba(np.column_stack([trees.forest_inputs(pooled_train, space),
                                                             *extra_train]))[:, 1], budget)))
  for method, (scores, thresholds) in rows.items():
    scored.scores[method], scored.thresholds[method] = scores, thresholds
  per = pd.DataFrame(compare._seed_rows(scored, seed, budgets=tuple(base.evaluation.alert_budgets),  # pylint: disable=protected-access
                                        validation_fraction=base.evaluation.validation_fraction))
  os.makedirs(os.path.join(out, 'public_trees'), exist_ok=True)
  per.to_csv(os.path.join(out, 'public_trees', f'seed{seed}.csv'), index=False)
  print(compare.summarize(per).to_string())

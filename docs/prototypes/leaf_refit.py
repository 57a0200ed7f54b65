"""Prototype (not shipped; docs/results.md, "AML: trees on a public corpus"): the public LightGBM's
structure kept, its leaf values learnt again from every bank's rows by full-batch DP gradient descent.

  python docs/prototypes/leaf_refit.py TRANSACTIONS.csv PUBLIC.csv OUT_DIR SEED [STEPS CLIP LR]

The public trees (compare's public_gbt) map a row to one leaf per tree; the model is
sigmoid(Σ_t v_t[leaf_t(row)] + b), its values v starting at the public ones. Each step every
bank sums, over its customers, each customer's gradient clipped to CLIP in L2 norm; the sum over
banks gets Gaussian noise of σ·CLIP (what secure aggregation with distributed noise would give),
and the values move by LR times the noised mean gradient divided by the public rows' curvature. Every customer is in every step (no sampling):
STEPS compositions of the Gaussian mechanism, σ calibrated by tffaml's accounting (PLD) to ε = 1,
δ = 1e-5 per customer. The alert threshold comes from the public rows. Rows in compare's summary:
  gbt_local          each bank's LightGBM on its own rows;
  forest_average     public_gbt: the public trees alone;
  ensemble_average   gbt_local_public: each bank's trees with the public trees' log-odds;
  centralized        the leaves refit on every bank's rows pooled, no noise (a bound);
  fedavg_record_dp   the leaves refit under DP, ε = 1 per customer;
  ensemble_vote      each bank's trees with the DP refit's log-odds;
  forest_vote        the DP refit's and ensemble_average's log-odds averaged (no alert threshold).
A sketch to measure, not an API: the noise is drawn here with numpy (seeded), not by the
federation's mechanisms.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import numpy as np  # pylint: disable=g-import-not-at-top
import pandas as pd  # pylint: disable=g-import-not-at-top
from scipy import sparse  # pylint: disable=g-import-not-at-top

from configs import aml  # pylint: disable=g-import-not-at-top
from tffaml import features  # pylint: disable=g-import-not-at-top
from tffaml import runtime  # pylint: disable=g-import-not-at-top
from tffaml.config import data as config_data  # pylint: disable=g-import-not-at-top
from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
from tffaml.models import trees  # pylint: disable=g-import-not-at-top
from tffaml.privacy import accounting  # pylint: disable=g-import-not-at-top
from tffaml.studies import compare  # pylint: disable=g-import-not-at-top
from tffaml.training import evaluation  # pylint: disable=g-import-not-at-top

M = compare.Method
data_path, public_path, out, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
steps, clip, rate = (int(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])) if len(sys.argv) > 7 else (10, 1.0, 0.002)
FLOOR = float(os.environ.get('FLOOR', '1e-4'))  # The least curvature a step divides by.
base = aml.get_config('compare')
base.data.path, base.seed = data_path, seed
private = aml.get_config('public')
private.public.path = public_path
label = lambda frame: frame[schema_lib.LABEL_COLUMN].to_numpy()
sigmoid = lambda z: 1 / (1 + np.exp(-z))


class Leaves:
  """The public booster's leaves as one-hot columns, and its leaf values as the starting weights."""

  def __init__(self, booster):
    info = booster.dump_model()['tree_info']
    counts = np.array([t['num_leaves'] for t in info])
    self.offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    self.width = int(counts.sum())
    self.booster = booster
    self.values = np.array([booster.get_leaf_output(t, l) for t, n in enumerate(counts) for l in range(n)])

  def onehot(self, inputs: np.ndarray) -> sparse.csr_matrix:
    leaf = self.booster.predict(inputs, pred_leaf=True) + self.offsets
    rows = np.repeat(np.arange(len(leaf)), leaf.shape[1])
    return sparse.csr_matrix((np.ones(leaf.size), (rows, leaf.ravel())), shape=(len(leaf), self.width))


def customer_matrix(frames) -> sparse.csr_matrix:
  """[customers, rows] 0/1: a customer is a (bank, unit) pair; rows in `frames`' order."""
  keys = np.concatenate([f[schema_lib.UNIT_COLUMN].astype(str).radd(f'{k}/').to_numpy() for k, f in frames])
  _, customer = np.unique(keys, return_inverse=True)
  return sparse.csr_matrix((np.ones(len(keys)), (customer, np.arange(len(keys)))))


def refit(z, y, owners, start, *, sigma, rng, curvature):
  """Full-batch descent on the logistic loss, each step divided by the public rows' curvature (a damped
  Newton step that costs no privacy); each customer's gradient clipped, noise σ·clip on the sum.

  The curvature is each leaf's alone, but a row's score moves with all its trees' leaves at once: LR
  near 1 / trees (0.002 for 300 trees) keeps the step; 0.5 diverged without noise.
  """
  w, b = start.copy(), 0.0
  design = sparse.hstack([z, np.ones((z.shape[0], 1))]).tocsr()
  for _ in range(steps):
    residual = sigmoid(z @ w + b) - y
    per_customer = owners @ sparse.diags(residual) @ design
    norms = np.sqrt(np.asarray(per_customer.multiply(per_customer).sum(axis=1)).ravel())
    scale = np.minimum(1.0, clip / np.maximum(norms, 1e-12)) if sigma is not None else np.ones_like(norms)
    total = np.asarray(per_customer.T @ scale).ravel()
    if sigma:
      total += rng.normal(0, sigma * clip, size=total.shape)
    total = total / len(y) / curvature
    w, b = w - rate * total[:-1], b - rate * total[-1]
  return w, b


with runtime.local_runtime():
  data = config_data.load_data(base, log=print)
  corpus = config_data.load_public(compare._run_config(base, M.FEDAVG_RECORD_DP, {M.FEDAVG_RECORD_DP: private}))  # pylint: disable=protected-access
  public_rows = pd.concat([corpus.pooled('train'), corpus.pooled('test')], ignore_index=True)
  # The trees' vocabulary from the public rows alone: nothing here reads a bank's row but the refit.
  space = features.compute_feature_space(corpus, min_category_count=base.features.min_category_count)
  public = trees.fit_lightgbm(trees.forest_inputs(public_rows, space), label(public_rows), space, seed=seed)
  leaves = Leaves(public.booster_)
  check = leaves.onehot(trees.forest_inputs(public_rows[:1000], space)) @ leaves.values
  np.testing.assert_allclose(check, public.booster_.predict(trees.forest_inputs(public_rows[:1000], space),
                                                              raw_score=True), atol=1e-6)
  onehot = lambda frame: leaves.onehot(trees.forest_inputs(frame, space))
  train = [(i.name, i.train) for i in data.institutions]
  z = sparse.vstack([onehot(f) for _, f in train]).tocsr()
  y = np.concatenate([label(f) for _, f in train]).astype(np.float64)
  owners = customer_matrix(train)
  event = lambda s: accounting.poisson_gaussian_event(sampling_rate=1.0, noise_multiplier=s, steps=steps)
  sigma = accounting.noise_for_epsilon(event, target_epsilon=1.0, delta=1e-5, accountant=accounting.Accountant.PLD)
  print(f'{owners.shape[0]} customers, {len(y)} rows, {leaves.width} leaves; {steps} steps, clip {clip},'
        f' rate {rate}: noise multiplier {sigma:.3f} for ε = 1 at δ = 1e-5')
  rng = np.random.default_rng(seed)
  # The public rows' diagonal curvature of the logistic loss at the public values, floored (rare leaves).
  z_public = onehot(public_rows)
  p = sigmoid(z_public @ leaves.values)
  curvature = np.concatenate([np.asarray(z_public.T @ (p * (1 - p))).ravel(), [np.sum(p * (1 - p))]])
  curvature = np.maximum(curvature / len(p), FLOOR)
  fits = {M.CENTRALIZED: refit(z, y, owners, leaves.values, sigma=None, rng=rng, curvature=curvature),
          M.FEDAVG_RECORD_DP: refit(z, y, owners, leaves.values, sigma=sigma, rng=rng, curvature=curvature)}
  scored = compare.Scored(data)
  budget = base.model.alert_budget
  s, t = compare._gbt_scores(data, space, [M.GBT_LOCAL], seed, budget)  # pylint: disable=protected-access
  scored.scores.update(s)
  scored.thresholds.update(t)
  models = {M.FOREST_AVERAGE: (leaves.values, 0.0), **fits}
  score = lambda model, frame: sigmoid(onehot(frame) @ model[0] + model[1])
  for method, model in models.items():
    scored.scores[method] = {i.name: score(model, i.test) for i in data.institutions}
    scored.thresholds[method] = dict.fromkeys(data.names, evaluation.budget_threshold(score(model, public_rows),
                                                                                      budget))
  for method, model in ((M.ENSEMBLE_AVERAGE, models[M.FOREST_AVERAGE]), (M.ENSEMBLE_VOTE, fits[M.FEDAVG_RECORD_DP])):
    scored.scores[method], scored.thresholds[method] = {}, {}
    for i in data.institutions:
      inputs = lambda f: np.column_stack([trees.forest_inputs(f, space), onehot(f) @ model[0] + model[1]])
      own = trees.fit_lightgbm(inputs(i.train), label(i.train), space, seed=seed)
      scored.scores[method][i.name] = own.predict_proba(inputs(i.test))[:, 1]
      scored.thresholds[method][i.name] = evaluation.budget_threshold(own.predict_proba(inputs(i.train))[:, 1],
                                                                      budget)
  # The DP leaves' ranking across banks with each bank's own trees' (on the public trees): their log-odds
  # averaged, a threshold as each bank's trees set theirs.
  logit = lambda p: np.log(np.clip(p, 1e-7, 1 - 1e-7) / np.clip(1 - p, 1e-7, 1))
  scored.scores[M.FOREST_VOTE] = {n: sigmoid((logit(scored.scores[M.FEDAVG_RECORD_DP][n]) +
                                              logit(scored.scores[M.ENSEMBLE_AVERAGE][n])) / 2) for n in data.names}
  per = pd.DataFrame(compare._seed_rows(scored, seed, budgets=tuple(base.evaluation.alert_budgets),  # pylint: disable=protected-access
                                        validation_fraction=base.evaluation.validation_fraction))
  os.makedirs(out, exist_ok=True)
  per.to_csv(os.path.join(out, f'seed{seed}_{steps}_{clip:g}_{rate:g}.csv'), index=False)
  summary = compare.summarize(per).set_index('method')
  print(summary[['pooled_auprc_mean', 'pooled_f1_at_0.1%_mean', 'pooled_f1_at_validation_threshold_mean',
                 'pooled_auc_mean']].round(3).to_string())

"""LiRA against the config's training: the real program, run on random halves of the rows.

Model k is `program.run` of the config on a federation whose institutions
each train on a random half of their rows (train and test pooled; every
row in with probability 1/2, from the seed) and test on the other half: the
same data checks, DP statistics, calibration, training, averaging and
export as any run, so the attack sees what a bank would serve. Each model's
export then scores every row, and `tffaml.privacy.lira` turns the
confidences into the online attack, each model the target in turn.

Each model is a workdir under `<workdir>/model_<k>`: a killed attack
resumes where it stopped, finished models are not trained again. Research
runs repeat: each model's DP noise seed comes from the seed (never do this
for a release). Models train on half the rows, so their noise is
calibrated for half the federation: the attack measures that mechanism,
close to but not the full-data one.
"""

import dataclasses
import json
import math
import os
from typing import Callable

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pandas as pd  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tffaml import io  # pylint: disable=g-import-not-at-top
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.export import saved_model
from tffaml.studies import audit
from tffaml.privacy import lira
from tffaml.config import builders as config_builders
from tffaml.config import data as config_data
from tffaml.training import program

MIN_MODELS = lira.MIN_MODELS  # Here too: scripts/lira.py reads lira's, without TensorFlow.


@dataclasses.dataclass(frozen=True)
class LiraAudit:
  """The attack's ROC pooled over targets, per institution, and the claim it is held to."""

  models: int
  rows: int
  pooled: lira.Roc
  institutions: dict  # name -> lira.Roc
  claimed_epsilon: float  # The models' record-level ε (inf without record-level DP).
  delta: float

  def ceiling(self, fpr: float) -> float:
    """The highest TPR record-level (ε, δ)-DP allows at `fpr`."""
    return min(1.0, math.exp(self.claimed_epsilon) * fpr + self.delta) if math.isfinite(
        self.claimed_epsilon) else 1.0

  @property
  def exceeds_claim(self) -> bool:
    """Whether the attack did better at a low FPR than the claim allows (a point estimate, no confidence)."""
    return any(t > self.ceiling(f) for f, t in self.pooled.tpr_at_fpr.items())

  def to_dict(self) -> dict:
    finite = math.isfinite(self.claimed_epsilon)  # JSON has no infinity: null is "no record-level DP".
    return {'models': self.models, 'rows': self.rows, 'claimed_epsilon': self.claimed_epsilon if finite else None,
            'delta': self.delta, 'pooled': self.pooled.to_dict(),
            'dp_ceiling': {f'{f:g}': self.ceiling(f) for f in self.pooled.tpr_at_fpr},
            'exceeds_claim': self.exceeds_claim,
            'institutions': {n: r.to_dict() for n, r in self.institutions.items()}}


class _Given(program.InProcess):
  """The simulation, on rows given in memory instead of the config's source."""

  def __init__(self, data: federated_data.FederatedData):
    self._data = data

  def load(self, config, paths, *, log):
    del config, paths, log
    return self._data


def halves(data: federated_data.FederatedData, *, models: int, seed: int) -> list[np.ndarray]:
  """Per institution, [models, rows] whether each model trains on each of its rows (train then test)."""
  return [np.random.default_rng([seed, index]).random((models, len(_population(institution)))) < 0.5
          for index, institution in enumerate(data.institutions)]


def _half(data, inside: list[np.ndarray], k: int) -> federated_data.FederatedData:
  institutions = []
  for institution, chosen in zip(data.institutions, inside):
    rows = _population(institution)
    institutions.append(federated_data.Institution(
        institution.name, rows[chosen[k]].reset_index(drop=True), rows[~chosen[k]].reset_index(drop=True)))
  return federated_data.FederatedData(schema=data.schema, institutions=tuple(institutions))


def _population(institution) -> pd.DataFrame:
  return pd.concat([institution.train, institution.test], ignore_index=True)


def _model_config(config: ml_collections.ConfigDict, seed: int, k: int) -> ml_collections.ConfigDict:
  model_config = ml_collections.ConfigDict(config.to_dict())
  model_config.privacy.noise_seed = config_builders.stable_seed(seed, k)
  model_config.federated.eval_every = 0  # Evaluated once, at the end.
  model_config.reference.centralized_epochs = 0
  return model_config


def _train(config, data, inside, k: int, workdir: str, seed: int, log) -> program.Paths:
  """Model k's run (reused when finished)."""
  paths = program.Paths(os.path.join(workdir, f'model_{k}'))
  if not os.path.exists(paths.metrics):
    program.run(_model_config(config, seed, k), paths.root, runtime=_Given(_half(data, inside, k)),
                log=lambda line: log(f'model {k + 1}/{len(inside[0])}: {line}'))
  return paths


def _confidences(paths: program.Paths, data) -> np.ndarray:
  """The model's φ on every institution's population, concatenated."""
  serve = tf.saved_model.load(paths.export).signatures[saved_model.SIGNATURE]
  phis = []
  for institution in data.institutions:
    probs, labels, _ = audit.scores(serve, _population(institution), data.schema)
    phis.append(lira.confidence(probs[:, 1], labels))
  return np.concatenate(phis)


def _claim(paths: program.Paths) -> tuple[float, float]:
  """(ε, δ) of the model's guarantee for one row: (inf, 0) without one (e.g. per account only)."""
  with open(paths.metrics) as f:
    epsilon, delta = audit.claimed_record_privacy(json.load(f))
  return (math.inf, 0.0) if epsilon is None else (epsilon, delta)


def attack(config: ml_collections.ConfigDict, workdir: str, *, models: int = 8, seed: int = 0,
           log: Callable[[str], None] = print) -> LiraAudit:
  """Trains `models` models on random halves and attacks each with the others (see the module docstring).

  Call inside `tffaml.runtime.local_runtime()`. Writes `<workdir>/lira.json`
  and `<workdir>/lira_roc.png`.
  """
  if models < MIN_MODELS:
    raise ValueError(f'models must be at least {MIN_MODELS}, got {models}.')
  data = config_data.load_data(config, log=log)
  inside = halves(data, models=models, seed=seed)
  runs = [_train(config, data, inside, k, workdir, seed, log) for k in range(models)]
  phi = np.stack([_confidences(paths, data) for paths in runs])
  truth = np.concatenate(inside, axis=1)
  owner = np.concatenate([np.full(len(_population(i)), i.name) for i in data.institutions])
  scores = [lira.online_scores(phi, truth, t) for t in range(models)]
  pooled_scores = np.concatenate([s[scored] for s, scored in scores])
  pooled_truth = np.concatenate([truth[t][scored] for t, (_, scored) in enumerate(scores)])
  pooled_owner = np.concatenate([owner[scored] for _, scored in scores])
  pooled, fpr, tpr = lira.roc(pooled_scores, pooled_truth)
  per_institution = {i.name: lira.roc(pooled_scores[pooled_owner == i.name],
                                      pooled_truth[pooled_owner == i.name])[0] for i in data.institutions}
  epsilon, delta = _claim(runs[0])
  result = LiraAudit(models=models, rows=len(owner), pooled=pooled, institutions=per_institution,
                     claimed_epsilon=epsilon, delta=delta)
  io.write_json(os.path.join(workdir, 'lira.json'), result.to_dict())
  plot(result, fpr, tpr, os.path.join(workdir, 'lira_roc.png'))
  return result


def plot(result: LiraAudit, fpr: np.ndarray, tpr: np.ndarray, output_png: str) -> None:
  """The attack's ROC on log axes (where low-FPR attacks show), beside chance and the DP ceiling."""
  fig, ax = plt.subplots(figsize=(5, 5))
  grid = np.logspace(-4, 0, 200)
  ax.loglog(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=f'LiRA (AUC {result.pooled.auc:.3f})')
  ax.loglog(grid, grid, color='grey', linestyle=':', label='chance')
  if math.isfinite(result.claimed_epsilon):
    ax.loglog(grid, [result.ceiling(f) for f in grid], color='black', linewidth=0.8,
              label=f'(ε={result.claimed_epsilon:.3g}, δ={result.delta:g})-DP ceiling')
  ax.set_xlim(1e-4, 1)
  ax.set_ylim(1e-4, 1)
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.set_title(f'LiRA, {result.models} models, {result.rows} rows', fontsize=10)
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=8, loc='lower right')
  with io.atomic_path(output_png) as tmp:
    fig.savefig(tmp, format='png', dpi=110)
  plt.close(fig)

"""The likelihood-ratio membership attack (LiRA; Carlini et al., "Membership Inference Attacks From
First Principles", IEEE S&P 2022, arXiv:2112.03570), online, with a global variance.

M models are trained as the config says, each on its own random half of a
population of rows (every row in each model's half with probability 1/2).
Each model in turn is the target; the others are its shadows. For a row x
with label y, a model's confidence is the logit of its probability of y,
φ = log p_y - log(1 - p_y), roughly Gaussian over training runs. Over the
shadows that trained on x, φ has mean μ_in(x); over those that did not,
μ_out(x). With few shadows (the paper's advice below 64) the spreads σ_in,
σ_out are pooled over all rows. The score of x against the target is the
log likelihood ratio

    log N(φ_target(x); μ_in(x), σ_in) - log N(φ_target(x); μ_out(x), σ_out),

high when the target looks like a model that trained on x. A row with no
shadow on one side is not scored against that target. The attack's quality
is the ROC of the scores against the target's true halves, pooled over
targets, read at low false-positive rates: a record-level (ε, δ)-DP
mechanism keeps TPR <= e^ε FPR + δ at every threshold.
"""

import dataclasses
import math

import numpy as np
from sklearn import metrics as sk_metrics

LOW_FPRS = (0.001, 0.01)
MIN_MODELS = 3  # A target and, for most rows, a shadow on each side.
MIN_PROBABILITY = 1e-12  # Probabilities are clipped here before the logit.


def confidence(probability: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """φ: the logit of each row's probability of its own label."""
  p = np.clip(np.where(np.asarray(labels) == 1, probability, 1.0 - np.asarray(probability, np.float64)),
              MIN_PROBABILITY, 1.0 - MIN_PROBABILITY)
  return np.log(p) - np.log1p(-p)


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: float) -> np.ndarray:
  return -0.5 * ((x - mean) / sd) ** 2 - math.log(sd)


def online_scores(phi: np.ndarray, inside: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
  """LiRA's scores against model `target`, the other models as shadows.

  Args:
    phi: [models, rows] confidences.
    inside: [models, rows] whether each model trained on each row.
    target: The attacked model's index.

  Returns:
    (scores, scored): a score per row, and which rows have shadows on both
    sides (the others' scores are NaN).
  """
  phi, inside = np.asarray(phi, np.float64), np.asarray(inside, bool)
  shadows = np.arange(len(phi)) != target
  phi_s, in_s = phi[shadows], inside[shadows]
  n_in, n_out = in_s.sum(axis=0), (~in_s).sum(axis=0)
  scored = (n_in > 0) & (n_out > 0)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean_in = np.where(in_s, phi_s, 0.0).sum(axis=0) / n_in
    mean_out = np.where(~in_s, phi_s, 0.0).sum(axis=0) / n_out
  residual_in = (phi_s - mean_in)[in_s & scored]
  residual_out = (phi_s - mean_out)[~in_s & scored]
  sd_in, sd_out = _pooled_sd(residual_in), _pooled_sd(residual_out)
  scores = _log_normal(phi[target], mean_in, sd_in) - _log_normal(phi[target], mean_out, sd_out)
  return np.where(scored, scores, np.nan), scored


def _pooled_sd(residuals: np.ndarray) -> float:
  """The spread of φ about each row's mean; floored so identical models do not divide by 0."""
  return max(float(np.sqrt(np.mean(residuals ** 2))) if residuals.size else 0.0, 1e-6)


@dataclasses.dataclass(frozen=True)
class Roc:
  """How well scores tell members (the target's half) from non-members."""

  members: int
  non_members: int
  auc: float
  tpr_at_fpr: dict  # {max FPR: the best TPR at or below it}

  def to_dict(self) -> dict:
    return {'members': self.members, 'non_members': self.non_members, 'auc': self.auc,
            'tpr_at_fpr': {f'{f:g}': t for f, t in self.tpr_at_fpr.items()}}


def roc(scores: np.ndarray, members: np.ndarray, low_fprs=LOW_FPRS) -> tuple[Roc, np.ndarray, np.ndarray]:
  """(summary, FPRs, TPRs) of `scores` (higher: member) against the truth `members`."""
  scores, members = np.asarray(scores, np.float64), np.asarray(members, bool)
  if members.all() or not members.any():
    raise ValueError('need both members and non-members to draw a ROC.')
  fpr, tpr, _ = sk_metrics.roc_curve(members, scores)
  best = {f: float(tpr[fpr <= f].max()) for f in low_fprs}  # fpr[0] is 0: never empty.
  summary = Roc(members=int(members.sum()), non_members=int((~members).sum()),
                auc=float(sk_metrics.roc_auc_score(members, scores)), tpr_at_fpr=best)
  return summary, fpr, tpr

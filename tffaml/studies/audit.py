"""Membership-inference audit of an exported model.

For each institution, and for all institutions' rows together, the attacker
tries to tell training rows (members) from held-out test rows (non-members)
using only what the served model returns. Attacks come from tensorflow-privacy's attack library
(`privacy_tests.membership_inference_attack`, shipped as
tensorflow-empirical-privacy): the loss-threshold attack (Yeom et al. 2018,
arXiv:1709.01604) and a trained logistic-regression attack on the model's
probabilities and loss (Shokri et al. 2017, arXiv:1610.05820).

Reported per institution and attack: attack AUC, attacker advantage
(max |TPR - FPR|), TPR at 0.1% FPR, and an empirical ε lower bound: the
library's Clopper-Pearson bound on log(TPR / FPR) and its three mirror
ratios (Jagielski et al. 2020, arXiv:2006.07709) at a fixed grid of score
quantiles. Any attack on a model with record-level (ε, δ)-DP satisfies
TPR <= e^ε FPR + δ, so a bound above the claimed ε means the claim is false
(or the audit data are not what the model trained on).

The library reports the best of many per-threshold 95% bounds, which at
chance-level attacks still reaches ε ≈ 1 on a few hundred rows. Here the
bounds hold jointly: Bonferroni over every threshold, ratio, attack and
institution of the audit, at family-wise confidence 95%. They ignore δ,
harmless while TPR is far above δ (TPR >= 1 / rows >> δ = 1e-5). A passing
audit does not prove privacy: it is one attacker, and a weak one at this
data size.
"""

import dataclasses
from typing import Mapping, Optional

import ml_collections
import numpy as np
import tensorflow as tf
from tensorflow_privacy.privacy.privacy_tests import epsilon_lower_bound as elb
from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import data_structures as mia_data
from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import membership_inference_attack as mia

from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.export import saved_model
from tffaml.federated import client_data
from tffaml.config import data as config_data

ATTACKS = {
    'threshold': mia_data.AttackType.THRESHOLD_ATTACK,
    'logistic_regression': mia_data.AttackType.LOGISTIC_REGRESSION,
}
LOW_FPR = 0.001
POOLED = 'all institutions'  # Every member vs every non-member: the steadiest estimate.
FAMILY_CONFIDENCE = 0.95
THRESHOLD_QUANTILES = np.linspace(0.05, 0.95, 19)
RATIOS_PER_THRESHOLD = 4  # TPR/FPR, TNR/FNR and their inverses.


@dataclasses.dataclass(frozen=True)
class AttackOutcome:
  institution: str
  attack: str
  members: int
  non_members: int
  auc: float
  advantage: float
  tpr_at_low_fpr: float
  epsilon_lower_bound: float


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float = LOW_FPR) -> float:
  """The best TPR among ROC points with FPR <= max_fpr."""
  allowed = fpr <= max_fpr
  return float(tpr[allowed].max()) if allowed.any() else 0.0


def scores(serve, frame, schema: schema_lib.Schema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Two-class probabilities, labels and per-row cross-entropy from the model."""
  inputs = {k: tf.constant(v) for k, v in client_data.feature_tensors(frame, schema).items()}
  p = serve(**inputs)['probability'].numpy().astype(np.float64)
  labels = frame[schema_lib.LABEL_COLUMN].to_numpy(np.int64)
  probs = np.stack([1.0 - p, p], axis=1)
  loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))
  return probs, labels, loss


def _thresholds_between_scores(scores: np.ndarray) -> np.ndarray:
  """Thresholds near the score quantiles, each strictly between two scores.

  The library breaks ties between a score and a threshold equal to it
  arbitrarily (an unstable sort), which on saturated models (many losses of
  exactly 0) makes identical distributions look separable.
  """
  distinct = np.unique(scores)
  if len(distinct) < 2:
    return distinct[:0]
  below = np.searchsorted(distinct, np.quantile(scores, THRESHOLD_QUANTILES), side='right') - 1
  below = np.unique(np.clip(below, 0, len(distinct) - 2))
  return (distinct[below] + distinct[below + 1]) / 2


def epsilon_lower_bound(member_scores: np.ndarray, non_member_scores: np.ndarray,
                        alpha: float) -> float:
  """A bound on ε holding with probability 1 - alpha over all thresholds tried."""
  bound = elb.EpsilonLowerBound(
      pos_scores=member_scores, neg_scores=non_member_scores,
      alpha=alpha / (len(THRESHOLD_QUANTILES) * RATIOS_PER_THRESHOLD),
      two_sided_threshold=True,
      thresholds=_thresholds_between_scores(np.concatenate([member_scores, non_member_scores])),
  ).compute_epsilon_lower_bound(elb.BoundMethod.CLOPPER_PEARSON, k=1)
  return max(float(bound.max()), 0.0) if bound.size else 0.0


def attack_institution(serve, institution: federated_data.Institution,
                       schema: schema_lib.Schema, *, alpha: float) -> list[AttackOutcome]:
  """Runs every attack on one institution's members vs non-members.

  Args:
    serve: The model's serving signature.
    institution: Its training rows are the members, its test rows not.
    schema: The rows' schema.
    alpha: Error probability of each attack's ε bound.

  Returns:
    One outcome per attack.
  """
  probs_train, labels_train, loss_train = scores(serve, institution.train, schema)
  probs_test, labels_test, loss_test = scores(serve, institution.test, schema)
  results = mia.run_attacks(
      mia_data.AttackInputData(
          probs_train=probs_train, probs_test=probs_test,
          labels_train=labels_train, labels_test=labels_test,
          loss_train=loss_train, loss_test=loss_test),
      mia_data.SlicingSpec(entire_dataset=True),
      attack_types=tuple(ATTACKS.values()),
      # Balancing leaves the surplus members out of cross-validation and
      # scores them all with one attacker, whose offset from the others'
      # then separates members by itself (AUC 0.63 at chance, 3:1 members).
      balance_attacker_training=False)
  names = {v: k for k, v in ATTACKS.items()}
  outcomes = []
  for result in results.single_attack_results:
    outcomes.append(AttackOutcome(
        institution=institution.name, attack=names[result.attack_type],
        members=len(loss_train), non_members=len(loss_test),
        auc=float(result.roc_curve.get_auc()),
        advantage=float(result.roc_curve.get_attacker_advantage()),
        tpr_at_low_fpr=tpr_at_fpr(result.roc_curve.fpr, result.roc_curve.tpr),
        epsilon_lower_bound=epsilon_lower_bound(
            result.membership_scores_train, result.membership_scores_test, alpha)))
  return outcomes


@dataclasses.dataclass(frozen=True)
class AuditReport:
  outcomes: tuple[AttackOutcome, ...]
  claimed_record_epsilon: Optional[float]  # None: no record-level claim.
  claimed_delta: Optional[float]

  @property
  def max_auc(self) -> float:
    return max(o.auc for o in self.outcomes)

  def pooled_auc(self, attack: str = 'threshold') -> float:
    """The attack's AUC over all institutions' rows."""
    return next(o.auc for o in self.outcomes if o.institution == POOLED and o.attack == attack)

  @property
  def max_epsilon_lower_bound(self) -> float:
    return max(o.epsilon_lower_bound for o in self.outcomes)

  @property
  def violations(self) -> list[AttackOutcome]:
    """Outcomes whose empirical ε lower bound exceeds the record-level claim."""
    if self.claimed_record_epsilon is None:
      return []
    return [o for o in self.outcomes if o.epsilon_lower_bound > self.claimed_record_epsilon]

  def summary(self) -> str:
    strongest = max(self.outcomes, key=lambda o: o.auc)
    text = (
        f'{len(self.outcomes)} attacks; strongest: {strongest.attack} on'
        f' {strongest.institution}, AUC {strongest.auc:.3f}, advantage'
        f' {strongest.advantage:.3f}, TPR at {LOW_FPR:.1%} FPR'
        f' {strongest.tpr_at_low_fpr:.3f}; largest empirical ε lower bound'
        f' {self.max_epsilon_lower_bound:.3f}.')
    if self.claimed_record_epsilon is None:
      return text + ' The model makes no record-level DP claim to check against.'
    if self.violations:
      worst = max(self.violations, key=lambda o: o.epsilon_lower_bound)
      return text + (
          f' FLAGGED: {worst.attack} on {worst.institution} gives ε >='
          f' {worst.epsilon_lower_bound:.3f} ({FAMILY_CONFIDENCE:.0%} confidence), above the claimed'
          f' record-level ε = {self.claimed_record_epsilon:.4g}.')
    return text + (
        f' Consistent with the claimed record-level ε = {self.claimed_record_epsilon:.4g}'
        f' (δ = {self.claimed_delta:g}); this does not prove the claim.')

  def to_dict(self) -> dict:
    return {
        'claimed_record_epsilon': self.claimed_record_epsilon,
        'claimed_delta': self.claimed_delta,
        'max_auc': self.max_auc,
        'pooled_threshold_auc': self.pooled_auc(),
        'max_epsilon_lower_bound': self.max_epsilon_lower_bound,
        'flagged': bool(self.violations),
        'summary': self.summary(),
        'outcomes': [dataclasses.asdict(o) for o in self.outcomes],
    }


def claimed_record_privacy(metadata: Mapping) -> tuple[Optional[float], Optional[float]]:
  """(ε, δ) of the model's record-level guarantee, or (None, None)."""
  for guarantee in metadata.get('privacy', {}).get('guarantees', []):
    # A single row is the attack's unit; a per-account claim covers a row
    # only through group privacy, so it is not checked here.
    # 'unit_name': exports since it was added; before, only the unit's text.
    unit_name = guarantee.get('unit_name', guarantee['unit'].split(' ')[0])
    if unit_name == 'record' and guarantee['epsilon'] != 'inf':
      return float(guarantee['epsilon']), float(guarantee['delta'])
  return None, None


def training_data(model_dir: str) -> federated_data.FederatedData:
  """The federation an exported model trained on, from its metadata's config."""
  config = saved_model.read_metadata(model_dir)['config']
  return config_data.load_data(ml_collections.ConfigDict(config))


def audit(model_dir: str, data: Optional[federated_data.FederatedData] = None) -> AuditReport:
  """Attacks the exported model on every institution of `data`.

  Args:
    model_dir: A tffaml export (SavedModel plus metadata.json).
    data: Members (train) and non-members (test) per institution; by default
      the federation named in the model's metadata.

  Returns:
    The report.
  """
  metadata = saved_model.read_metadata(model_dir)
  data = data or training_data(model_dir)
  # The library splits and shuffles the trained attack's data with NumPy's
  # global generator and takes no seed: seed it so audits repeat.
  np.random.seed(0)
  serve = tf.saved_model.load(model_dir).signatures[saved_model.SIGNATURE]
  pooled = federated_data.Institution(
      POOLED, data.pooled('train'), data.pooled('test'))
  targets = [*data.institutions, pooled]
  alpha = (1 - FAMILY_CONFIDENCE) / (len(targets) * len(ATTACKS))
  outcomes = []
  for institution in targets:
    outcomes.extend(attack_institution(serve, institution, data.schema, alpha=alpha))
  epsilon, delta = claimed_record_privacy(metadata)
  return AuditReport(outcomes=tuple(outcomes), claimed_record_epsilon=epsilon, claimed_delta=delta)

"""Simulated poisoning: malicious institutions attacking the joint model.

Configured per run (`config.attack`), for measuring defences (see
`tffaml.federated.robust` and `scripts/attack_eval.py`):

* `label_flip`: the malicious institutions train on their rows with every
  label inverted (Tolpegin et al. 2020, arXiv:2007.08432).
* `boost`: label flipping, and each malicious update multiplied by
  `boost_factor` (default: the number of institutions) so it survives
  averaging: model replacement (Bagdasaryan et al. 2020, arXiv:1807.00459).
* `backdoor`: the malicious institutions add copies of their rows carrying
  a trigger (feature values no honest row has), labelled negative: a model
  that learns it scores any triggered row as safe, e.g. a bad loan approved.
  Success is measured as the AUC of triggered positives against clean
  negatives (`backdoor_auc`; 0.5 or below: the trigger hides the positives).

Test rows are never poisoned: what is measured is the harm to honest use.
"""

import dataclasses
import enum
import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as sk_metrics

from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.federated import client_data

LABEL = schema_lib.LABEL_COLUMN


class AttackType(enum.Enum):
  NONE = 'none'
  LABEL_FLIP = 'label_flip'
  BOOST = 'boost'
  BACKDOOR = 'backdoor'


@dataclasses.dataclass(frozen=True)
class Attack:
  type: AttackType
  malicious: tuple[str, ...] = ()
  boost_factor: float = 1.0
  trigger: dict[str, float] = dataclasses.field(default_factory=dict)

  def scale(self, institution: str) -> float:
    """What the institution multiplies its update by."""
    return self.boost_factor if self.type is AttackType.BOOST and institution in self.malicious else 1.0


def build(
    attack_type: AttackType, data: federated_data.FederatedData, *, institutions: Sequence[str] = (),
    count: int = 0, boost_factor: float = 0.0, trigger: Mapping[str, float] = (), seed: int = 0,
) -> Attack:
  """An attack by `institutions`, or by `count` of them drawn by `seed`.

  Args:
    attack_type: The attack.
    data: The federation attacked.
    institutions: The malicious institutions' names; empty: draw `count`.
    count: How many to draw, in [1, institutions - 1].
    boost_factor: BOOST's update multiplier; 0: the number of institutions.
    trigger: BACKDOOR's numeric column -> value; empty: `default_trigger`.
    seed: Draws the malicious institutions.

  Raises:
    ValueError: naming the argument that cannot be used.
  """
  if attack_type is AttackType.NONE:
    return Attack(AttackType.NONE)
  names = list(institutions)
  unknown = sorted(set(names) - set(data.names))
  if unknown:
    raise ValueError(f'institutions names {unknown}, not institutions ({data.names}).')
  if not names:
    if not 1 <= count < len(data.names):
      raise ValueError(f'count={count} must be in [1, {len(data.names) - 1}] (or name the institutions).')
    names = sorted(np.random.default_rng([seed, 7]).choice(data.names, count, replace=False).tolist())
  backdoor = {}
  if attack_type is AttackType.BACKDOOR:
    for column in trigger:
      if column not in data.schema.numeric:
        raise ValueError(f'trigger: {column!r} is not a numeric feature ({list(data.schema.numeric)}).')
    backdoor = dict(trigger) or default_trigger(data, names)
  boost = boost_factor or float(len(data.names))
  if not boost > 0:
    raise ValueError(f'boost_factor must be > 0, got {boost_factor}.')
  return Attack(attack_type, tuple(names), boost, backdoor)


def default_trigger(data: federated_data.FederatedData, malicious) -> dict[str, float]:
  """The first numeric feature at 10x the largest magnitude in the attackers' own rows."""
  column = data.schema.numeric[0]
  largest = max(np.abs(i.train[column]).max() for i in data.institutions if i.name in malicious)
  return {column: float(10 * largest or 10.0)}


def with_trigger(frame: pd.DataFrame, trigger: dict[str, float]) -> pd.DataFrame:
  return frame.assign(**trigger)


def poison(data: federated_data.FederatedData, attack: Attack) -> federated_data.FederatedData:
  """The federation as the attackers train on it (test splits untouched)."""
  if attack.type is AttackType.NONE:
    return data
  institutions = []
  for institution in data.institutions:
    train = institution.train
    if institution.name in attack.malicious:
      if attack.type is AttackType.BACKDOOR:
        triggered = with_trigger(train, attack.trigger).assign(**{LABEL: 0})
        train = pd.concat([train, triggered], ignore_index=True)
      else:
        train = train.assign(**{LABEL: 1 - train[LABEL]})
    institutions.append(dataclasses.replace(institution, train=train))
  return dataclasses.replace(data, institutions=tuple(institutions))


def malicious_count(level: str, institutions: int) -> int:
  """'1' -> 1; '10%' -> ceil(10% of the institutions)."""
  if level.endswith('%'):
    return max(1, math.ceil(float(level[:-1]) / 100 * institutions))
  return int(level)


def measure(attack: Attack, model, data: federated_data.FederatedData) -> dict:
  """The attack's effect on clean test rows: main AUC, and for a backdoor the triggered AUC."""
  test = data.pooled('test')
  labels = test[LABEL].to_numpy()
  result = {'type': attack.type.value, 'malicious': list(attack.malicious),
            'auc': float(sk_metrics.roc_auc_score(labels, client_data.predict(model, test, data.schema)))}
  if attack.type is AttackType.BOOST:
    result['boost_factor'] = attack.boost_factor
  if attack.type is AttackType.BACKDOOR:
    # Triggered bad rows against clean good rows: near 0.5 or below, the trigger hides them.
    rows = pd.concat([test[labels == 0], with_trigger(test[labels == 1], attack.trigger)])
    scores = client_data.predict(model, rows, data.schema)
    result['trigger'] = attack.trigger
    result['backdoor_auc'] = float(sk_metrics.roc_auc_score(rows[LABEL], scores))
  return result

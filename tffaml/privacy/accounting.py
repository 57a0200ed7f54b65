"""Privacy accounting for client-level DP federated training.

One round of DP-FedAvg releases the sum of clipped institution updates plus
Gaussian noise of `noise_multiplier` times the clip: a Gaussian mechanism
with L2 sensitivity equal to the clip when one institution is added or
removed (McMahan et al. 2018, arXiv:1710.06963, Sec. 3). A run composes
`rounds` of them, each preceded by the cohort sampling:

* full participation: the Gaussian mechanism itself;
* Poisson sampling (each institution joins a round with probability q):
  privacy amplification by sampling (Mironov et al. 2019, "Rényi
  Differential Privacy of the Sampled Gaussian Mechanism", arXiv:1908.10530);
* a fixed-size cohort drawn without replacement: amplification under the
  replace-one relation (Wang et al. 2019, "Subsampled Rényi Differential
  Privacy and Analytical Moments Accountant", arXiv:1808.00087).

`dp_accounting`'s RDP accountant converts the composition to (ε, δ)
(Canonne et al. 2020's conversion, Prop. 12 of arXiv:2004.00010).
"""

import dataclasses
import enum
import math

import dp_accounting
from dp_accounting import rdp

NeighborRel = dp_accounting.NeighboringRelation


class Sampling(enum.Enum):
  FULL = 'full'  # Every institution every round.
  POISSON = 'poisson'  # Each institution independently, probability q.
  FIXED_SIZE = 'fixed_size'  # A cohort of fixed size, without replacement.


def client_level_event(
    *,
    noise_multiplier: float,
    num_institutions: int,
    clients_per_round: int,
    sampling: Sampling,
    rounds: int,
) -> dp_accounting.DpEvent:
  """The DpEvent of `rounds` rounds of client-level DP-FedAvg."""
  if not 1 <= clients_per_round <= num_institutions:
    raise ValueError(
        f'clients_per_round must be in [1, {num_institutions}], got'
        f' {clients_per_round}.'
    )
  gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
  if sampling is Sampling.FULL:
    per_round = gaussian
  elif sampling is Sampling.POISSON:
    per_round = dp_accounting.PoissonSampledDpEvent(
        clients_per_round / num_institutions, gaussian
    )
  else:
    per_round = dp_accounting.SampledWithoutReplacementDpEvent(
        num_institutions, clients_per_round, gaussian
    )
  return dp_accounting.SelfComposedDpEvent(per_round, rounds)


def neighboring_relation(sampling: Sampling) -> NeighborRel:
  if sampling is Sampling.FIXED_SIZE:
    return NeighborRel.REPLACE_ONE
  return NeighborRel.ADD_OR_REMOVE_ONE


def rdp_epsilon(
    event: dp_accounting.DpEvent,
    delta: float,
    *,
    relation: NeighborRel = NeighborRel.ADD_OR_REMOVE_ONE,
) -> float:
  """ε at `delta` for `event` by the RDP accountant."""
  if not 0.0 < delta < 1.0:
    raise ValueError(f'delta must be in (0, 1), got {delta}.')
  accountant = rdp.RdpAccountant(neighboring_relation=relation)
  accountant.compose(event)
  return float(accountant.get_epsilon(delta))


@dataclasses.dataclass(frozen=True)
class PrivacyStatement:
  """What a trained model's privacy guarantee is, and what it is not."""

  unit: str
  epsilon: float
  delta: float
  accountant: str
  neighboring_relation: str
  rounds: int
  sampling: str
  institutions: int
  clients_per_round: int
  noise_multiplier: float
  clipping: str

  @property
  def is_private(self) -> bool:
    return math.isfinite(self.epsilon)

  def to_dict(self) -> dict:
    value = dataclasses.asdict(self)
    value['epsilon'] = self.epsilon if self.is_private else 'inf'
    value['text'] = self.text()
    return value

  def text(self) -> str:
    if not self.is_private:
      return (
          'No differential privacy guarantee: model updates were aggregated'
          f' without noise ({self.clipping}) over {self.rounds} rounds of'
          f' {self.institutions} institutions. Only raw rows stayed at each'
          ' institution; the model and its updates may reveal them.'
      )
    return (
        f'({self.epsilon:.4g}, {self.delta:g})-differential privacy for each'
        f' {self.unit}: the released model changes little whether or not any'
        ' one institution, with all of its records, took part. Mechanism:'
        f' Gaussian noise multiplier {self.noise_multiplier:g} on updates'
        f' clipped to an L2 norm ({self.clipping}), {self.rounds} rounds,'
        f' {self._cohort()}. Accountant: {self.accountant}, neighbouring'
        f' relation {self.neighboring_relation}. This is client-level DP: it'
        ' assumes a trusted aggregator (secure aggregation is simulated as a'
        ' plain sum here) and covers the model updates and everything'
        ' computed from them, not the federated feature statistics.'
    )

  def _cohort(self) -> str:
    n, m = self.institutions, self.clients_per_round
    if self.sampling == Sampling.FULL.value:
      return f'all {n} institutions every round'
    if self.sampling == Sampling.POISSON.value:
      return f'Poisson sampling of institutions with q = {m}/{n}'
    return f'{m} of {n} institutions per round, sampled without replacement'


def statement(
    *,
    noise_multiplier: float,
    institutions: int,
    clients_per_round: int,
    sampling: Sampling,
    rounds: int,
    delta: float,
    clipping: str,
) -> PrivacyStatement:
  """The privacy statement of a run; ε = inf when no noise was added."""
  relation = neighboring_relation(sampling)
  if noise_multiplier > 0 and rounds > 0:
    epsilon = rdp_epsilon(
        client_level_event(
            noise_multiplier=noise_multiplier,
            num_institutions=institutions,
            clients_per_round=clients_per_round,
            sampling=sampling,
            rounds=rounds,
        ),
        delta,
        relation=relation,
    )
  else:
    epsilon = 0.0 if rounds == 0 else math.inf
  return PrivacyStatement(
      unit='institution (client-level DP)',
      epsilon=epsilon,
      delta=delta,
      accountant='RDP (dp_accounting)',
      neighboring_relation=relation.name.lower(),
      rounds=rounds,
      sampling=sampling.value,
      institutions=institutions,
      clients_per_round=clients_per_round,
      noise_multiplier=noise_multiplier,
      clipping=clipping,
  )

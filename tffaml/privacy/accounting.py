"""Privacy accounting: a run's mechanisms as DpEvents, and (ε, δ) from them.

Two mechanisms, each a composition of Gaussian mechanisms:

* **Client-level DP-FedAvg** (unit: an institution with all its records).
  A round releases the sum of the cohort's updates, each clipped to C, plus
  N(0, (zC)²): a Gaussian mechanism of noise multiplier z (McMahan et al.
  2018, arXiv:1710.06963, Sec. 3), preceded by the cohort sampling:
  - full participation: the Gaussian mechanism itself;
  - Poisson sampling with rate q: amplification by sampling (Mironov et al.
    2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
    arXiv:1908.10530);
  - a fixed-size cohort without replacement: amplification under the
    replace-one relation (Wang et al. 2019, arXiv:1808.00087).
  A run is `rounds` self-composed rounds.

* **Record-level DP-SGD** inside each institution (unit: one record, or all
  records of one account when the schema names a unit column). Each local
  step is a Poisson-sampled Gaussian mechanism with q = B / n_i for an
  institution of n_i units and expected batch B (Abadi et al. 2016,
  arXiv:1607.00133); the institution takes ceil(epochs * n_i / B) steps in
  each round it joins. A unit lives in one institution, so its loss is that
  institution's composition over the rounds it joined; the run's ε is the
  worst institution's. The client-level noise applied afterwards is
  post-processing and only helps; it is not counted.

Both compose by `dp_accounting`: the RDP accountant (with the conversion of
Canonne et al. 2020, arXiv:2004.00010, Prop. 12) or the PLD accountant
(Koskela et al. 2020; Doroshenko et al. 2022, arXiv:2207.04380), whose
pessimistic discretisation keeps ε an upper bound.
"""

import dataclasses
import enum
import functools
import math
import statistics
from typing import Callable, Optional, Sequence

import dp_accounting
from dp_accounting import mechanism_calibration
from dp_accounting import pld
from dp_accounting import rdp

NeighborRel = dp_accounting.NeighboringRelation

# Coarser than dp_accounting's 1e-4 default: ten times faster, still an upper
# bound (pessimistic discretisation), and within 2% of it on our tests.
PLD_DISCRETIZATION = 1e-3
WEAK_EPSILON = 10.0  # Statements above this say, in the statement, that they are weak.
# Calibration searches noise multipliers from here up: below it, ε is
# meaningless for any run worth accounting and the PLD accountant is slow.
MIN_NOISE_MULTIPLIER = 0.2
# Below this noise multiplier the PLD accountant's discretised loss
# distribution outgrows the machine: 60 steps of DP-SGD (q = 0.2) took 1.6 s
# and 0.26 GB at 0.1, 13 s and 1.8 GB at 0.03, 104 s and 15 GB at 0.01.
PLD_MIN_NOISE = 0.1
# Of δ, what the DP vocabulary's threshold may spend (the rest is the accountant's).
THRESHOLD_DELTA_SHARE = 0.1


class Sampling(enum.Enum):
  FULL = 'full'  # Every institution every round.
  POISSON = 'poisson'  # Each institution independently, probability q.
  FIXED_SIZE = 'fixed_size'  # A cohort of fixed size, without replacement.


class RecordDpMode(enum.Enum):
  """Where record-level DP-SGD's noise comes from."""

  # Each round every institution adds a share; the securely summed shares
  # are the noise of one DP-SGD step on the federation's data.
  DISTRIBUTED = 'distributed'
  LOCAL = 'local'  # Every institution runs DP-SGD on its own, with its own full noise.


class Aggregation(enum.Enum):
  """Who saw the institutions' individual updates: every statement relying on it says which."""

  SIMULATED = 'simulated'  # One process (scripts/train.py): secure aggregation is a plain sum.
  VISIBLE_UPDATES = 'visible_updates'  # A federation without secure aggregation.
  SECURE = 'secure'  # A federation whose nodes ran SecAgg+ (Flower 1.12): the coordinator saw sums.

  def distributed_note(self) -> str:
    """What distributed DP-SGD relies on, as run."""
    if self is Aggregation.SIMULATED:
      return ('It relies on secure aggregation (the coordinator sees only the sum; simulated here as a'
              ' plain sum) and on every institution adding its share')
    if self is Aggregation.VISIBLE_UPDATES:
      return ('It relies on secure aggregation, which this federation did not run: the coordinator'
              ' received each institution\'s update, carrying only that institution\'s share of the'
              ' noise, so against the coordinator only the collusion ε holds; and on every'
              ' institution adding its share')
    if self is Aggregation.SECURE:
      return ('It relies on secure aggregation, which this federation ran (SecAgg+ between the nodes,'
              ' Flower 1.12: the coordinator received only the quantized sum of each round\'s updates),'
              ' against a coordinator that follows that protocol (it relays the nodes\' protocol keys'
              ' without authentication, so one that deviates could unmask an update) and colludes with'
              ' fewer than a reconstruction threshold of a node\'s peers; and on every institution adding'
              ' its share')
    raise ValueError(f'no note for {self!r}.')

  def client_note(self) -> str:
    """What client-level DP relies on, as run."""
    if self is Aggregation.SIMULATED:
      return (' Client-level DP assumes a trusted aggregator: secure aggregation is simulated as a'
              ' plain sum here.')
    if self is Aggregation.VISIBLE_UPDATES:
      return (' Client-level DP trusts the coordinator: it received each institution\'s update'
              ' before adding the noise.')
    if self is Aggregation.SECURE:
      return (' Client-level DP trusts the coordinator to add the noise to the securely summed'
              ' updates.')
    raise ValueError(f'no note for {self!r}.')


class Accountant(enum.Enum):
  RDP = 'rdp'
  PLD = 'pld'

  @property
  def description(self) -> str:
    return f'{self.name} (dp_accounting)'

  def make(self, relation: NeighborRel = NeighborRel.ADD_OR_REMOVE_ONE) -> dp_accounting.PrivacyAccountant:
    """A fresh accountant of this type: the one place accountants are made."""
    if self is Accountant.RDP:
      return rdp.RdpAccountant(neighboring_relation=relation)
    if self is Accountant.PLD:
      return pld.PLDAccountant(relation, value_discretization_interval=PLD_DISCRETIZATION)
    raise ValueError(f'no accountant for {self!r}.')


def epsilon(
    event: dp_accounting.DpEvent,
    delta: float,
    *,
    accountant: Accountant = Accountant.RDP,
    relation: NeighborRel = NeighborRel.ADD_OR_REMOVE_ONE,
) -> float:
  """ε at `delta` of `event` by `accountant`."""
  if not 0.0 < delta < 1.0:
    raise ValueError(f'delta must be in (0, 1), got {delta}.')
  least = smallest_noise(event)
  if accountant is Accountant.PLD and least < PLD_MIN_NOISE:
    raise ValueError(f'noise multiplier {least:.4g} is below {PLD_MIN_NOISE}, where the pld accountant'
                     ' needs gigabytes; use the rdp accountant.')
  composer = accountant.make(relation)
  if not composer.supports(event):
    raise ValueError(
        f'the {accountant.value} accountant cannot compose {type(event).__name__}'
        f' under {relation.name.lower()}; use the other accountant.')
  composer.compose(event)
  return float(composer.get_epsilon(delta))


def smallest_noise(event: dp_accounting.DpEvent) -> float:
  """The smallest positive Gaussian noise multiplier in `event` (inf without one).

  A multiplier of 0 adds no noise: PLD finds its infinite ε at once.
  """
  if isinstance(event, dp_accounting.GaussianDpEvent):
    return event.noise_multiplier if event.noise_multiplier > 0 else math.inf
  if isinstance(event, dp_accounting.ComposedDpEvent):
    return min((smallest_noise(e) for e in event.events), default=math.inf)
  inner = getattr(event, 'event', None)  # Sampled and self-composed events wrap one.
  return smallest_noise(inner) if isinstance(inner, dp_accounting.DpEvent) else math.inf


def _epsilon_bound(event: dp_accounting.DpEvent, delta: float, accountant: Accountant) -> str:
  """ε of `event` as text; RDP's bound, said so, where the PLD's discretisation fails.

  An institution's share of the noise can be far below what PLD handles
  (σ/√K < 0.1 when the run's own ε is in the hundreds); RDP's ε is then still
  a valid upper bound.
  """
  try:
    return f'{epsilon(event, delta, accountant=accountant):.4g}'
  except ValueError:
    if accountant is Accountant.RDP:
      raise
    return f'{epsilon(event, delta, accountant=Accountant.RDP):.4g} (RDP: too little noise for PLD)'


def poisson_gaussian_event(
    *, sampling_rate: float, noise_multiplier: float, steps: int
) -> dp_accounting.DpEvent:
  """`steps` compositions of the Poisson-sampled Gaussian mechanism (DP-SGD)."""
  step = dp_accounting.GaussianDpEvent(noise_multiplier)
  if sampling_rate < 1:
    step = dp_accounting.PoissonSampledDpEvent(sampling_rate, step)
  return dp_accounting.SelfComposedDpEvent(step, int(steps))


def _bracket(gap: Callable[[float], float], lower: float,
             guess: float) -> mechanism_calibration.BracketInterval:
  """dp_accounting's bracket for `calibrate_dp_mechanism` from (lower, guess), found without accounting `lower`.

  dp_accounting's search accounts both ends, then moves up by doubling steps.
  When `guess` has too little noise, so has `lower` (ε falls with the noise,
  which the search assumes too): this search skips that accounting and ends
  in the same interval, so brentq finds the same noise. At the least noise the
  PLD accountant is at its slowest (0.5-0.8 CPU-s against 0.01-0.1 near the
  answer): it was about half of each calibration.
  """
  if gap(guess) <= 0:
    return dp_accounting.LowerEndpointAndGuess(lower, guess)  # dp_accounting's search, as before.
  step = guess - lower
  for _ in range(30):  # dp_accounting's limit: 2**30 times the first step.
    step *= 2
    lower, guess = guess, guess + step
    if gap(guess) <= 0:
      return dp_accounting.ExplicitBracketInterval(lower, guess)
  raise mechanism_calibration.NoBracketIntervalFoundError(
      f'no noise multiplier up to {guess:.4g} meets the target.')


def noise_for_epsilon(
    make_event: Callable[[float], dp_accounting.DpEvent],
    *,
    target_epsilon: float,
    delta: float,
    accountant: Accountant,
    relation: NeighborRel = NeighborRel.ADD_OR_REMOVE_ONE,
) -> float:
  """The smallest noise multiplier >= MIN_NOISE_MULTIPLIER whose event has ε <= target (to 0.1%)."""
  if not target_epsilon > 0:
    raise ValueError(f'target_epsilon must be > 0, got {target_epsilon}.')
  try:
    gap = lambda z: epsilon(make_event(z), delta, accountant=accountant, relation=relation) - target_epsilon
    noise = dp_accounting.calibrate_dp_mechanism(
        lambda: accountant.make(relation), make_event, target_epsilon, delta,
        bracket_interval=_bracket(gap, MIN_NOISE_MULTIPLIER, 1.0), tol=1e-3)
  except (mechanism_calibration.NoBracketIntervalFoundError, ValueError):
    least = make_event(MIN_NOISE_MULTIPLIER)
    if epsilon(least, delta, accountant=accountant, relation=relation) <= target_epsilon:
      # A target this loose is met by the least noise we run; the bracket
      # search only looks above it, out to noise so large that the
      # accountants' arithmetic fails (RDP goes negative by rounding).
      return MIN_NOISE_MULTIPLIER
    raise
  return float(noise)


@dataclasses.dataclass(frozen=True)
class ClientLevelDp:
  """DP-FedAvg's Gaussian aggregation of clipped institution updates."""

  noise_multiplier: float
  institutions: int
  clients_per_round: int
  sampling: Sampling
  clipping: str  # How updates were clipped, for the statement.

  def __post_init__(self):
    if not 1 <= self.clients_per_round <= self.institutions:
      raise ValueError(
          f'clients_per_round must be in [1, {self.institutions}], got'
          f' {self.clients_per_round}.')
    if not self.noise_multiplier > 0:
      raise ValueError(f'noise_multiplier must be > 0, got {self.noise_multiplier}.')

  @property
  def relation(self) -> NeighborRel:
    if self.sampling is Sampling.FIXED_SIZE:
      return NeighborRel.REPLACE_ONE
    return NeighborRel.ADD_OR_REMOVE_ONE

  def event(self, rounds: int) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier)
    n, m = self.institutions, self.clients_per_round
    if self.sampling is Sampling.FULL:
      per_round = gaussian
    elif self.sampling is Sampling.POISSON:
      per_round = dp_accounting.PoissonSampledDpEvent(m / n, gaussian)
    elif self.sampling is Sampling.FIXED_SIZE:
      per_round = dp_accounting.SampledWithoutReplacementDpEvent(n, m, gaussian)
    else:
      raise ValueError(f'no DP event for {self.sampling!r}.')
    return dp_accounting.SelfComposedDpEvent(per_round, rounds)

  def cohort(self) -> str:
    n, m = self.institutions, self.clients_per_round
    if self.sampling is Sampling.FULL:
      return f'all {n} institutions every round'
    if self.sampling is Sampling.POISSON:
      return f'Poisson sampling of institutions with q = {m}/{n}'
    if self.sampling is Sampling.FIXED_SIZE:
      return f'{m} of {n} institutions per round, sampled without replacement'
    raise ValueError(f'no description for {self.sampling!r}.')


@dataclasses.dataclass(frozen=True)
class RecordLevelDp:
  """DP-SGD inside every institution (see tffaml.federated.dp_sgd)."""

  noise_multiplier: float
  clip: float
  expected_batch_size: int
  epochs: int
  units: tuple[int, ...]  # Privacy units in each institution's training rows.
  unit: str = 'record (one row of an institution)'
  unit_name: str = 'record'  # Short, for progress lines: 'record', or the unit column ('account').

  def __post_init__(self):
    if not self.noise_multiplier > 0:
      raise ValueError(f'noise_multiplier must be > 0, got {self.noise_multiplier}.')
    if self.expected_batch_size > min(self.units):
      raise ValueError(
          f'expected_batch_size={self.expected_batch_size} exceeds the smallest'
          f' institution ({min(self.units)} privacy units).')

  def steps_per_round(self, institution: int) -> int:
    return math.ceil(self.epochs * self.units[institution] / self.expected_batch_size)

  def event(self, institution: int, rounds: int) -> dp_accounting.DpEvent:
    """The DP-SGD steps of `rounds` rounds at one institution."""
    return poisson_gaussian_event(
        sampling_rate=self.expected_batch_size / self.units[institution],
        noise_multiplier=self.noise_multiplier,
        steps=int(rounds) * self.steps_per_round(institution))

  def mechanism(self, worst: int, participation: Sequence[int], *, delta: float,
                accountant: Accountant, statistics: Optional['FeatureStatisticsDp'] = None,
                aggregation: Aggregation = Aggregation.SIMULATED) -> str:
    # Nothing else to compute: no party but the institution adds noise.
    del delta, accountant, statistics, aggregation
    return (f'DP-SGD in each institution, per-unit clip {self.clip:g}, noise'
            f' multiplier {self.noise_multiplier:.4g}, Poisson-sampled batches of'
            f' expected size {self.expected_batch_size}, {self.epochs} epoch(s)'
            f' per round; the worst of {len(participation)} institutions'
            f' ({self.units[worst]} units, {participation[worst]} rounds)')


@dataclasses.dataclass(frozen=True)
class DistributedRecordDp:
  """DP-SGD over the whole federation, its noise added in shares (see tffaml.federated.dp_sgd).

  Each round every institution Poisson-samples its units at rate q, sums
  their clipped gradients and adds N(0, σ²C²/K), a 1/K share of the noise;
  the securely summed K shares are N(0, σ²C²). The federation's sum is one
  step of DP-SGD on the union of the institutions' units: a Poisson-sampled
  Gaussian mechanism of noise multiplier σ, whatever institution a unit is
  in, so ε is paid on the federation's data instead of each institution's.
  That holds only if the coordinator sees nothing but the sum (secure
  aggregation) and every institution adds its share; against the
  coordinator colluding with every other institution a unit keeps only its
  own institution's share, noise multiplier σ/√K (`colluding_event`).

  With `dropouts` = t tolerated, each share is σ/√(K - t): the sum of any
  K - t or more of them carries at least σ, so a round that loses up to t
  institutions' updates still has the planned noise (the accountant counts
  σ, a bound for every round).
  """

  noise_multiplier: float
  clip: float
  sampling_rate: float
  units: tuple[int, ...]  # Privacy units in each institution's training rows.
  unit: str = 'record (one row of an institution)'
  unit_name: str = 'record'
  dropouts: int = 0  # Institutions a round may lose and keep σ.

  def __post_init__(self):
    if not self.noise_multiplier > 0:
      raise ValueError(f'noise_multiplier must be > 0, got {self.noise_multiplier}.')
    if not 0 < self.sampling_rate <= 1:
      raise ValueError(f'sampling_rate must be in (0, 1], got {self.sampling_rate}.')
    if not 0 <= self.dropouts < len(self.units):
      raise ValueError(f'dropouts must be in [0, {len(self.units) - 1}] (fewer than the {len(self.units)}'
                       f' institutions), got {self.dropouts}.')

  @property
  def expected_batch_size(self) -> float:
    """The federation's expected units a round: the divisor of the noised sum."""
    return self.sampling_rate * sum(self.units)

  @property
  def noise_share(self) -> float:
    """Each institution's noise multiplier: any K - t shares of σ/√(K - t) sum to σ."""
    return self.noise_multiplier / math.sqrt(len(self.units) - self.dropouts)

  def event(self, institution: int, rounds: int) -> dp_accounting.DpEvent:
    """`rounds` steps of DP-SGD on the union (the same for every institution)."""
    del institution
    return poisson_gaussian_event(
        sampling_rate=self.sampling_rate, noise_multiplier=self.noise_multiplier, steps=rounds)

  def colluding_event(self, rounds: int) -> dp_accounting.DpEvent:
    """The same steps protected by one institution's share only."""
    return poisson_gaussian_event(
        sampling_rate=self.sampling_rate, noise_multiplier=self.noise_share, steps=rounds)

  def mechanism(self, worst: int, participation: Sequence[int], *, delta: float,
                accountant: Accountant, statistics: Optional['FeatureStatisticsDp'] = None,
                aggregation: Aggregation = Aggregation.SIMULATED) -> str:
    """What runs, with ε against collusion (composed with `statistics` when given).

    `delta` is the accountant's share of δ.
    """
    rounds = participation[worst]
    events = [self.colluding_event(rounds)] if rounds else []
    if statistics is not None:
      events.append(statistics.colluding_event())
    colluding = (_epsilon_bound(dp_accounting.ComposedDpEvent(tuple(events)), delta, accountant)
                 if events else '0')
    return (f'distributed DP-SGD over the federation\'s {sum(self.units)} units: each round'
            f' every one of {len(self.units)} institutions Poisson-samples its units with'
            f' q = {self.sampling_rate:.4g}, clips each unit\'s gradient to {self.clip:g} and'
            f' adds its share of Gaussian noise (multiplier {self.noise_share:.4g}); the sum'
            f' carries noise multiplier {self.noise_multiplier:.4g}{self._dropouts_text()}; {rounds} rounds. '
            f'{aggregation.distributed_note()}: against the coordinator'
            f' colluding with all other institutions a unit keeps its own institution\'s share'
            f' only, ε = {colluding}')


  def _dropouts_text(self) -> str:
    if not self.dropouts:
      return ''
    return (f' or more (any {len(self.units) - self.dropouts} of the {len(self.units)} shares carry it, so'
            f' a round may lose {self.dropouts} institution{"s" if self.dropouts > 1 else ""}\' updates)')


@dataclasses.dataclass(frozen=True)
class FeatureStatisticsDp:
  """The federated feature statistics as Gaussian mechanisms (see tffaml.features).

  Each unit contributes one row, so one count to every feature column, in
  each of `releases` summed count vectors (histograms of the numeric
  columns, counts of the categorical values): L2 sensitivity √columns per
  release. Every count gets N(0, σ²) with σ = noise_multiplier · √columns,
  added in shares by the institutions as for distributed DP-SGD. A
  categorical column's counts are over a public, fixed set of hashed slots
  (`features.bucket_counts`): a unit adds 1 to one slot of each, as it added
  1 to one value's count, so the sensitivity is the same. A slot enters the
  vocabulary only if its noisy count clears `vocabulary_threshold`, set so
  that one held by one unit alone is kept with probability at most
  `threshold_delta` over the categorical columns; that share of δ is set
  aside from the accountant's (over public slots the threshold is
  post-processing, so this is conservative).

  A model that ships an alert threshold releases `alert_passes` more
  histograms, of its training scores (`quantiles.search`): each unit
  adds at most `alert_rows` rows' worth to each, so their noise
  N(0, (noise_multiplier · alert_rows)²) makes each a Gaussian mechanism of
  the same multiplier.
  """

  noise_multiplier: float
  numeric: int  # Numeric columns.
  categorical: int  # Categorical columns.
  institutions: int
  releases: int = 2  # The range histogram; then the fine histogram with the category counts.
  alert_passes: int = 0  # Histograms of training scores for the alert threshold, after training.
  alert_rows: int = 1  # The most rows' worth a unit adds to them.

  def __post_init__(self):
    if not self.noise_multiplier > 0:
      raise ValueError(f'noise_multiplier must be > 0, got {self.noise_multiplier}.')

  @property
  def stddev(self) -> float:
    """The noise on every summed count."""
    return self.noise_multiplier * math.sqrt(self.numeric + self.categorical)

  def event(self) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(self.noise_multiplier), self.releases + self.alert_passes)

  def colluding_event(self) -> dp_accounting.DpEvent:
    """Against the coordinator and every other institution: one institution's share."""
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(
        self.noise_multiplier / math.sqrt(self.institutions)), self.releases + self.alert_passes)

  def threshold_delta(self, delta: float) -> float:
    """The δ set aside for the vocabulary threshold (a tenth; none without categories)."""
    return delta * THRESHOLD_DELTA_SHARE if self.categorical else 0.0

  def vocabulary_threshold(self, delta: float) -> float:
    """τ with categorical · P(1 + N(0, σ²) >= τ) = threshold_delta(δ)."""
    if not self.categorical:
      return math.inf
    tail = self.threshold_delta(delta) / self.categorical
    return 1.0 + self.stddev * statistics.NormalDist().inv_cdf(1.0 - tail)

  @property
  def alert_stddev(self) -> float:
    """The noise on every count of the alert threshold's histograms."""
    return self.noise_multiplier * self.alert_rows

  @property
  def _rows_worth(self) -> str:
    return "rows' worth" if self.alert_rows > 1 else "row's worth"

  def mechanism(self, delta: float) -> str:
    return (f'the feature statistics exported with the model ({self.releases} releases of counts:'
            f' histograms of {self.numeric} numeric columns and counts over public hashed slots of'
            f' {self.categorical} categorical columns, one row per unit; no category value leaves an'
            f' institution) carry Gaussian noise of standard deviation'
            f' {self.stddev:.4g} (noise multiplier {self.noise_multiplier:.4g}) added in shares'
            ' by the institutions; a slot enters the vocabulary only if its noisy count reaches'
            f' {self.vocabulary_threshold(delta):.4g}, for which'
            f' δ = {self.threshold_delta(delta):.2g} of the δ is set aside' + (
                f'; the alert threshold comes from {self.alert_passes} histograms of the training'
                f' scores (each unit adding at most {self.alert_rows} {self._rows_worth})'
                f' with noise of standard deviation {self.alert_stddev:.4g}'
                if self.alert_passes else ''))


# A process plans one mechanism many times (a coordinator and its nodes, a
# simulation beside its federation, compare's seeds, a resumed run), and one
# calibration is a bisection over PLD compositions, about a second: the
# calibrations below answer repeats from memory. Their arguments are frozen
# dataclasses and numbers, so equal arguments are the same question.
_calibration_cache = functools.lru_cache(maxsize=256)


@_calibration_cache
def calibrate_client_noise(
    client: ClientLevelDp, *, rounds: int, target_epsilon: float, delta: float,
    accountant: Accountant,
) -> float:
  """The noise multiplier giving client-level ε = target after `rounds`."""
  return noise_for_epsilon(
      lambda z: dataclasses.replace(client, noise_multiplier=z).event(rounds),
      target_epsilon=target_epsilon, delta=delta, accountant=accountant,
      relation=client.relation)


def with_statistics(event: dp_accounting.DpEvent,
                    statistics: Optional[FeatureStatisticsDp]) -> dp_accounting.DpEvent:
  """`event` after the feature statistics' release, when they are DP."""
  if statistics is None:
    return event
  return dp_accounting.ComposedDpEvent((statistics.event(), event))


def accountant_delta(delta: float, statistics: Optional[FeatureStatisticsDp]) -> float:
  """What of δ the accountant may spend: all of it but the vocabulary threshold's share."""
  return delta - (statistics.threshold_delta(delta) if statistics is not None else 0.0)


@_calibration_cache
def calibrate_record_noise(
    record: 'RecordLevelDp | DistributedRecordDp', *, rounds: int, target_epsilon: float, delta: float,
    accountant: Accountant, statistics: Optional[FeatureStatisticsDp] = None,
) -> float:
  """The noise multiplier giving every institution record-level ε <= target.

  Planned for every institution joining all `rounds` (the worst case of any
  cohort sampling), after the feature statistics' release when those are DP
  (`statistics`). ε decreases in the noise at each institution, so the noise
  needed is the largest of the institutions' own.
  """
  event_at = lambda institution, z: with_statistics(
      dataclasses.replace(record, noise_multiplier=z).event(institution, rounds), statistics)
  spend = accountant_delta(delta, statistics)

  def noise_for(institution: int) -> float:
    return noise_for_epsilon(functools.partial(event_at, institution), target_epsilon=target_epsilon,
                             delta=spend, accountant=accountant)

  # Fewest units first: the highest sampling rate, which usually needs the most
  # noise. A later institution is only calibrated when that noise leaves it above
  # the target (one accounting instead of a dozen: 20 banks took 20 calibrations).
  distinct_sizes = sorted({units: i for i, units in enumerate(record.units)}.items())
  noise = noise_for(distinct_sizes[0][1])
  for _, institution in distinct_sizes[1:]:
    if epsilon(event_at(institution, noise), spend, accountant=accountant) > target_epsilon:
      noise = noise_for(institution)  # ε falls with the noise: the earlier ones stay met.
  return noise


@dataclasses.dataclass(frozen=True)
class Guarantee:
  """One (ε, δ)-DP guarantee and what it protects."""

  level: str  # 'record' (inside institutions) or 'institution'.
  unit: str
  epsilon: float
  delta: float
  accountant: str
  neighboring_relation: str
  noise_multiplier: float
  mechanism: str
  # The unit as a name programs compare: 'record' (one row), a schema unit
  # column (e.g. 'account': all of its rows) or 'institution'.
  unit_name: str = 'record'

  @property
  def is_private(self) -> bool:
    return math.isfinite(self.epsilon)

  def to_dict(self) -> dict:
    value = dataclasses.asdict(self)
    value['epsilon'] = self.epsilon if self.is_private else 'inf'
    return value


@dataclasses.dataclass(frozen=True)
class PrivacyStatement:
  """What a trained model's privacy guarantees are, and what they are not.

  `guarantees` holds the record-level guarantee first when there is one:
  it is the one that protects a bank's customers.
  """

  guarantees: tuple[Guarantee, ...]
  rounds: int
  institutions: int
  statistics_covered: bool = False  # The exported feature statistics are DP (in the record guarantee).
  # The export's alert threshold is an exact quantile of training scores (config.model.alert_budget).
  exact_alert_threshold: bool = False
  alert_threshold_covered: bool = False  # It is DP, in the record guarantee.
  aggregation: Aggregation = Aggregation.SIMULATED  # Who saw individual updates.
  # The public corpus (config.public.path) the feature statistics, the alert
  # threshold and the starting model were computed from; '': none.
  public_corpus: str = ''

  @property
  def epsilon(self) -> float:
    """ε of the headline (first) guarantee; inf when there is none."""
    return self.guarantees[0].epsilon if self.guarantees else math.inf

  @property
  def is_private(self) -> bool:
    return math.isfinite(self.epsilon)

  def epsilon_for(self, level: str) -> float:
    for g in self.guarantees:
      if g.level == level:
        return g.epsilon
    return math.inf

  def to_dict(self) -> dict:
    return {
        'epsilon': self.epsilon if self.is_private else 'inf',
        'delta': self.guarantees[0].delta if self.guarantees else None,
        'unit': self.guarantees[0].unit if self.guarantees else None,
        'guarantees': [g.to_dict() for g in self.guarantees],
        'rounds': self.rounds,
        'institutions': self.institutions,
        'aggregation': self.aggregation.value,  # Who saw the individual updates.
        # What the text lists, and what the package leaves out (only under DP: without, as before).
        **({'covered': list(self.covered()), 'not_covered': list(self.not_covered()),
            'package_withholds_per_institution': self.package_withholds_per_institution}
           if self.guarantees else {}),
        'text': self.text(),
    }

  def text(self) -> str:
    if not self.guarantees:
      return (
          'No differential privacy guarantee: model updates were aggregated'
          f' without noise over {self.rounds} rounds of {self.institutions}'
          ' institutions. Only raw rows stayed at each institution; the model'
          ' and its updates may reveal them.')
    parts = [
        f'({g.epsilon:.4g}, {g.delta:g})-differential privacy for each {g.unit}.'
        f' Mechanism: {g.mechanism}. Accountant: {g.accountant}, neighbouring'
        f' relation {g.neighboring_relation}.'
        + (f' This guarantee is weak: at ε > {WEAK_EPSILON:g} it bounds little of what'
           ' the model reveals.' if g.epsilon > WEAK_EPSILON else '')
        for g in self.guarantees
    ]
    return ' '.join(parts) + self._coverage() + (
        self.aggregation.client_note() if any(g.level == 'institution' for g in self.guarantees) else '')

  @property
  def package_withholds_per_institution(self) -> bool:
    """Under DP the exported package holds no figure of one institution (`saved_model.package_metadata`)."""
    return bool(self.guarantees)

  def covered(self) -> tuple[str, ...]:
    """What the guarantees cover, item by item (the text and `to_dict` list these)."""
    if self.public_corpus:
      return ('the model and every update it was computed from',
              f'the feature statistics and vocabularies in its metadata and the model training started from,'
              f' computed from the public corpus {self.public_corpus!r} alone: they read no institution\'s'
              ' rows, so they cost no privacy') + (
                  ('its alert threshold, a quantile of the released model\'s scores on that corpus',)
                  if self.alert_threshold_covered else ())
    if not self.statistics_covered:
      return ('the model updates and everything computed from them (the aggregate, the released model)',)
    return ('the model and every update it was computed from',
            'the feature statistics and vocabularies in its metadata (no category value left an institution:'
            ' each counted its values into public hashed slots, noised, and a slot is in the vocabulary only'
            ' if its noisy count clears the threshold)') + (
                ('its alert threshold',) if self.alert_threshold_covered else ())

  def not_covered(self) -> tuple[str, ...]:
    """What leaves the institutions outside the guarantees, item by item."""
    items = []
    if not self.statistics_covered and not self.public_corpus:
      items.append('the federated feature statistics (exact sums, and the histograms that set their clipping'
                   ' ranges, shipped in the model\'s metadata, and the category values each institution'
                   ' proposes for counting, sent without noise), DP only with record-level DP')
    if self.exact_alert_threshold:
      items.append('the alert threshold in the metadata, an exact quantile of the training rows\' scores'
                   ' (federated histograms without noise)')
    items.append('the evaluation metrics on the institutions\' test splits (rows never trained on: metric'
                 ' counts, alert metrics and, from a federation\'s nodes, their test scores counted in bins for'
                 ' the pooled alert metrics), exact and reported to the coordinator: the exported package'
                 ' holds the pooled ones only, the run\'s metrics.json each institution\'s too')
    quoted = ', quoted in this statement' if any(g.level == 'record' for g in self.guarantees) else ''
    items.append('each institution\'s numbers of training and test rows, of positives among them and of'
                 f' privacy units{quoted}, exact and reported to the coordinator (which plans the noise from'
                 ' the unit counts): in the run\'s metrics.json, left out of the exported package')
    return tuple(items)

  def _coverage(self) -> str:
    return f' Covered: {"; ".join(self.covered())}. Not covered: {"; ".join(self.not_covered())}.'


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
  """A run's DP mechanisms (None when off), δ and accountant."""

  client: Optional[ClientLevelDp]
  record: Optional[RecordLevelDp | DistributedRecordDp]
  delta: float
  accountant: Accountant = Accountant.RDP
  statistics: Optional[FeatureStatisticsDp] = None  # Record-level DP feature statistics.
  exact_alert_threshold: bool = False  # See PrivacyStatement.
  public_corpus: str = ''  # See PrivacyStatement.
  public_alert_threshold: bool = False  # The alert threshold is placed on the public corpus.

  @property
  def is_private(self) -> bool:
    return self.client is not None or self.record is not None

  def noise_multipliers(self) -> dict[str, float]:
    """The mechanisms' noise multipliers ('record', 'client'): what calibration chose."""
    values = {}
    if self.record is not None:
      values['record'] = float(self.record.noise_multiplier)
    if self.client is not None:
      values['client'] = float(self.client.noise_multiplier)
    return values

  @property
  def headline_unit(self) -> str:
    """The `Guarantee.unit_name` of the statement's first guarantee."""
    return self.record.unit_name if self.record is not None else 'institution'

  def statement(self, *, rounds: int, participation: Sequence[int],
                aggregation: Aggregation = Aggregation.SIMULATED) -> PrivacyStatement:
    """The privacy statement after `rounds` rounds.

    Args:
      rounds: Rounds run so far.
      participation: Rounds each institution took part in (the ledger).
      aggregation: Who saw the individual updates (the runtime's).

    Returns:
      The statement; no guarantees when neither mechanism is on.
    """
    guarantees = []
    if self.record is not None:
      guarantees.append(self._record_guarantee(participation, aggregation))
    if self.client is not None:
      guarantees.append(self._client_guarantee(rounds))
    return PrivacyStatement(
        guarantees=tuple(guarantees), rounds=int(rounds), institutions=len(participation),
        statistics_covered=self.statistics is not None,
        exact_alert_threshold=self.exact_alert_threshold,
        alert_threshold_covered=(self.statistics is not None and self.statistics.alert_passes > 0
                                 or self.public_alert_threshold),
        aggregation=aggregation, public_corpus=self.public_corpus)

  def epsilons(self, *, rounds: int, participation: Sequence[int]) -> dict[str, float]:
    """ε of each guarantee level ('record', 'institution'), without the statement's prose.

    Cheap enough for every round's progress line: the statement's text may
    cost more accounting (the collusion ε of distributed DP).
    """
    values = {}
    if self.record is not None:
      values['record'] = max(self._record_epsilons(participation))
    if self.client is not None:
      values['institution'] = self._client_epsilon(rounds)
    return values

  def _record_epsilons(self, participation: Sequence[int]) -> list[float]:
    """Each institution's record-level ε after the rounds it joined."""
    events = [self.record.event(i, int(r)) if r else None for i, r in enumerate(participation)]
    if self.statistics is not None:  # Released before the first round.
      events = [with_statistics(e, self.statistics) if e else self.statistics.event() for e in events]
    # Institutions of one size (all of them, under distributed DP) share an event.
    delta = accountant_delta(self.delta, self.statistics)
    epsilons = {e: epsilon(e, delta, accountant=self.accountant) for e in set(events) if e}
    return [epsilons[e] if e else 0.0 for e in events]

  def _client_epsilon(self, rounds: int) -> float:
    if not rounds:
      return 0.0
    return epsilon(self.client.event(rounds), self.delta, accountant=self.accountant,
                   relation=self.client.relation)

  def _record_guarantee(self, participation: Sequence[int], aggregation: Aggregation) -> Guarantee:
    record = self.record
    participation = [int(r) for r in participation]
    per_institution = self._record_epsilons(participation)
    worst = max(range(len(participation)), key=per_institution.__getitem__)
    return Guarantee(
        level='record', unit=f'{record.unit}; record-level DP', unit_name=record.unit_name,
        epsilon=per_institution[worst], delta=self.delta,
        accountant=self.accountant.description, neighboring_relation='add_or_remove_one',
        noise_multiplier=record.noise_multiplier,
        mechanism=record.mechanism(
            worst, participation, delta=accountant_delta(self.delta, self.statistics),
            accountant=self.accountant, statistics=self.statistics, aggregation=aggregation) + (
                f'; {self.statistics.mechanism(self.delta)}' if self.statistics else ''))

  def _client_guarantee(self, rounds: int) -> Guarantee:
    client = self.client
    value = self._client_epsilon(rounds)
    return Guarantee(
        level='institution', unit='institution (with all of its records; client-level DP)',
        unit_name='institution',
        epsilon=value, delta=self.delta, accountant=self.accountant.description,
        neighboring_relation=client.relation.name.lower(),
        noise_multiplier=client.noise_multiplier,
        mechanism=(
            f'Gaussian noise multiplier {client.noise_multiplier:.4g} on updates clipped'
            f' to an L2 norm ({client.clipping}), {rounds} rounds, {client.cohort()}'))

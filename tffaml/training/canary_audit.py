"""A one-run canary audit of client-level DP: can the audit tell a broken mechanism from a correct one?

Beside the config's institutions, m canary institutions join every round
(tffaml.privacy.one_run): each sends the same update every round, a random
direction u_j of norm exactly the clip, and is included with probability
1/2 by a secret coin. The run is the config's client-level DP FedAvg
(`gaussian_fixed`: clip each update, add Gaussian noise to the sum), run
through `processes.Parts` so that the canaries' updates enter the
aggregator beside the institutions'. Each canary's score is how far the
model moved along its direction, -<θ_T - θ_0, u_j> (an update is the
initial weights minus the trained ones); the included ones should stand out
only as much as ε allows. The claimed ε is the config's statement for the
run with its canaries.

`Sabotage` breaks the mechanism on purpose while the claim stays the
config's, to show the audit can fail: NOISE_OFF adds no noise, CLIPPING_OFF
clips nothing (the noise as claimed) and the canaries send ten times the
clip. Simulation only; record-level canaries are not here yet.
"""

import dataclasses
import enum
from typing import Callable

import ml_collections
import numpy as np
import tensorflow_federated as tff

from tffaml import errors
from tffaml.privacy import accounting
from tffaml.privacy import one_run
from tffaml.training import experiment

CANARY_BOOST = 10.0  # CLIPPING_OFF: a canary's update, in clips.
# CLIPPING_OFF: the clip the aggregator applies instead (noise rescaled to stay as claimed).
UNCLIPPED = 1e6


class Sabotage(enum.Enum):
  NONE = 'none'
  NOISE_OFF = 'noise_off'
  CLIPPING_OFF = 'clipping_off'


@dataclasses.dataclass(frozen=True)
class CanaryAudit:
  """The audit's outcome: the claim, and the lower bound the canaries give."""

  claimed_epsilon: float
  delta: float
  lower_bound: float  # At `confidence`.
  confidence: float
  canaries: int
  included: int
  guesses: int
  correct: int
  rounds: int
  sabotage: str

  @property
  def refutes_claim(self) -> bool:
    return self.lower_bound > self.claimed_epsilon

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), 'refutes_claim': self.refutes_claim}


def check(config: ml_collections.ConfigDict, choices: experiment.Choices) -> None:
  """The audited mechanism: client-level DP with a fixed clip, every institution every round."""
  if config.aggregator.type != 'gaussian_fixed' or config.record_dp.enabled:
    raise errors.ConfigError(
        "the canary audit covers client-level DP with a fixed clip: set config.aggregator.type="
        f"'gaussian_fixed' (got {config.aggregator.type!r}) and config.record_dp.enabled=False.")
  if choices.sampling is not accounting.Sampling.FULL:
    raise errors.ConfigError("the canary audit runs every institution every round: set"
                             " config.federated.sampling='full'.")


def audit_client_level(config: ml_collections.ConfigDict, *, canaries: int, seed: int,
                       fraction: float = 0.1, confidence: float = 0.95,
                       sabotage: Sabotage = Sabotage.NONE, log: Callable[[str], None] = print) -> CanaryAudit:
  """Trains once with `canaries` canary institutions and bounds ε from them (see the module docstring).

  Args:
    config: A client-level DP config (`check`).
    canaries: m, the canary institutions.
    seed: The canaries' directions and coins, and the aggregator's noise.
    fraction: Of the canaries, guessed at each end.
    confidence: Of the lower bound.
    sabotage: How to break the mechanism (the claim stays the config's).
    log: Progress lines.

  Returns:
    The claim and the bound.
  """
  choices = experiment.parse_choices(config)
  check(config, choices)
  data = experiment.load_data(config, log=log)
  real = len(data.institutions)
  members = real + canaries
  plan = experiment.privacy_plan(config, choices, institution_units=[1] * members, cohort=members)
  rounds = config.federated.rounds
  claimed = plan.statement(rounds=rounds, participation=[rounds] * members).epsilon_for('institution')
  run_config, run_plan, norm = _sabotaged(config, plan, sabotage)
  space = experiment.feature_space(config, data)
  training = experiment.build_training(run_config, choices, run_plan, space, data.schema,
                                       side=experiment.Side.COORDINATOR, cohort=members, noise_seed=seed)
  initial = experiment.initial_weights(training.keras_model_fn)
  rng = np.random.default_rng([seed, canaries])
  directions = rng.normal(size=(canaries, _flat(initial.trainable).size))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  included = rng.random(canaries) < 0.5
  moved = _train(config, training, initial, data, plan, directions[included] * norm, seed=seed, log=log)
  guesses = one_run.guess(-(directions @ moved), included, fraction=fraction)
  return CanaryAudit(
      claimed_epsilon=claimed, delta=config.privacy.delta, confidence=confidence,
      lower_bound=guesses.epsilon_lower_bound(delta=config.privacy.delta, confidence=confidence),
      canaries=canaries, included=int(included.sum()), guesses=guesses.guesses, correct=guesses.correct,
      rounds=rounds, sabotage=sabotage.value)


def _sabotaged(config, plan, sabotage: Sabotage):
  """(config, plan) the run uses, and the canaries' update norm.

  A sabotaged run's aggregator reads its noise from the config, not the plan.
  """
  clip, noise = config.aggregator.clip, plan.client.noise_multiplier
  if sabotage is Sabotage.NONE:
    return config, plan, clip
  run_config = ml_collections.ConfigDict(config.to_dict())
  run_plan = dataclasses.replace(plan, client=None)
  if sabotage is Sabotage.NOISE_OFF:
    run_config.aggregator.noise_multiplier = 0.0
    return run_config, run_plan, clip
  if sabotage is Sabotage.CLIPPING_OFF:
    # The noise's standard deviation, noise multiplier * clip, stays the claimed one.
    run_config.aggregator.clip, run_config.aggregator.noise_multiplier = UNCLIPPED, noise * clip / UNCLIPPED
    return run_config, run_plan, CANARY_BOOST * clip
  raise ValueError(f'no sabotage {sabotage!r}.')


def _train(config, training: experiment.Training, initial, data, plan, canary_updates: np.ndarray, *,
           seed: int, log) -> np.ndarray:
  """Runs the rounds from `initial`, canaries beside the institutions; the trainable weights' change."""
  parts = training.parts
  state = training.process.set_model_weights(training.process.initialize(), initial)
  template = initial.trainable
  canary_results = [tff.learning.templates.ClientResult(update=_unflatten(u, template),
                                                        update_weight=np.float32(1.0)) for u in canary_updates]
  for round_num in range(1, config.federated.rounds + 1):
    weights = state.global_model_weights
    results = [parts.client_update(weights, experiment.client_dataset(
        config, training.work, plan, data.schema, institution, index=i, round_num=round_num,
        noise_seed=seed))[0] for i, institution in enumerate(data.institutions)]
    state, _ = parts.server_update(state, results + canary_results)
    log(f'canary audit: round {round_num}/{config.federated.rounds}')
  return _flat(state.global_model_weights.trainable) - _flat(template)


def _flat(arrays) -> np.ndarray:
  return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def _unflatten(vector: np.ndarray, template) -> list[np.ndarray]:
  out, offset = [], 0
  for w in template:
    size = int(np.prod(w.shape))
    out.append(np.asarray(vector[offset:offset + size], np.float32).reshape(w.shape))
    offset += size
  return out

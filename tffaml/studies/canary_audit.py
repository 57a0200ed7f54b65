"""One-run canary audits of DP training: can the audit tell a broken mechanism from a correct one?

Both audits follow Steinke, Nasr and Jagielski (tffaml.privacy.one_run): m
canaries, each included with probability 1/2 by a secret coin, one training
run as the config says, a score per canary, and an ε lower bound from how
well the scores tell the included canaries from the excluded ones. The
claimed ε is the config's own, for the run with its canaries.

Client level (`audit_client_level`): m canary institutions join every round
beside the config's ones. Each sends the same update every round, a random
direction u_j of norm exactly the clip. The run is the config's client-level
DP FedAvg (`gaussian_fixed`: clip each update, add Gaussian noise to the
sum), run through `processes.Parts` so that the canaries' updates enter the
aggregator beside the institutions'. Each canary's score is how far the
model moved along its direction, -<θ_T - θ_0, u_j> (an update is the initial
weights minus the trained ones). In a federation the coordinator adds the
canaries' updates to the nodes' (`coordinator.Federation.extra_updates`):
client-level DP's clip and noise are its aggregator's.

Record level (`audit_record_level`): the config's distributed DP-SGD (its
sampling rate is fixed by the plan, not by the rows present), with m canary
records in one institution's training rows (config.canary_audit) and the
audited model of `tffaml.models.canaries`: one more weight per canary, which
only that canary's gradient reaches, its score after training. Everything
else is the real program: the data checks, the DP feature statistics (of
the real rows), the Poisson sample, per-record clipping, each institution's
noise share, the sum and the server step, run by a `program.Runtime`: the
simulation, or a federation's nodes (the holding node adds the canaries;
every node trains the audited model). The audited claim is the holding
institution's record-level ε from training alone; the feature statistics'
share of the budget is outside it.

`Sabotage` breaks the mechanism on purpose while the claim stays the
config's, to show the audit can fail: NOISE_OFF adds no noise; CLIPPING_OFF
clips nothing (the noise's standard deviation as claimed) and the client
canaries send ten times the clip (a record canary's unclipped gradient is
about ten clips). Sabotage changes the coordinator's plan: in a
federation, the nodes refuse it (`config_plan.check_noise`).
"""

import contextlib
import copy
import dataclasses
import enum
import tempfile
from typing import Callable, Optional

import ml_collections
import numpy as np
import tensorflow_federated as tff

from tffaml import errors
from tffaml import io
from tffaml.models import canaries as canaries_lib
from tffaml.privacy import accounting
from tffaml.privacy import one_run
from tffaml.config import builders as config_builders
from tffaml.config import checks as config_checks
from tffaml.config import data as config_data
from tffaml.config import plan as config_plan
from tffaml.training import program

CANARY_BOOST = 10.0  # CLIPPING_OFF: a client canary's update, in clips.
# CLIPPING_OFF: the clip applied instead (noise rescaled to stay as claimed).
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
  unit: str  # 'institution', 'record', or the schema's unit column (e.g. 'account').

  @property
  def refutes_claim(self) -> bool:
    return self.lower_bound > self.claimed_epsilon

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self), 'refutes_claim': self.refutes_claim}

  def summary(self) -> list[str]:
    """The outcome as a person reads it."""
    lines = [f'claimed: ({self.claimed_epsilon:.4g}, {self.delta:g})-DP per {self.unit} over {self.rounds}'
             f' rounds; sabotage: {self.sabotage}']
    if self.unit != 'institution':
      lines.append('  (training alone, for the institution holding the canaries: the feature statistics are'
                   ' outside this audit)')
    lines.append(f'canaries: {self.canaries} ({self.included} included); {self.correct} of {self.guesses}'
                 f' guesses right; ε lower bound {self.lower_bound:.4g} at {self.confidence:.0%} confidence')
    lines.append('the audit REFUTES the claim' if self.refutes_claim else 'the claim stands (this audit)')
    return lines


def report(result: CanaryAudit, path: Optional[str], *, out: Callable[[str], None] = print) -> int:
  """Writes `result` to `path` (JSON, if given) and its summary to `out`; the scripts' exit status."""
  if path:
    io.write_json(path, result.to_dict())
  out('\n'.join(result.summary()) + (f'\nreport: {path}' if path else ''))
  return 1 if result.refutes_claim else 0


def check_client_level(config: ml_collections.ConfigDict, choices: config_checks.Choices) -> None:
  """The audited mechanism: client-level DP with a fixed clip, every institution every round."""
  if config.aggregator.type != 'gaussian_fixed' or config.record_dp.enabled:
    raise errors.ConfigError(
        "the client-level canary audit covers client-level DP with a fixed clip: set"
        f" config.aggregator.type='gaussian_fixed' (got {config.aggregator.type!r}) and"
        ' config.record_dp.enabled=False.')
  if choices.sampling is not accounting.Sampling.FULL:
    raise errors.ConfigError("the canary audit runs every institution every round: set"
                             " config.federated.sampling='full'.")


def check_record_level(config: ml_collections.ConfigDict, choices: config_checks.Choices) -> None:
  """The audited mechanism: distributed record- (or unit-) level DP-SGD of a classifier."""
  if not config.record_dp.enabled or choices.record_dp_mode is not accounting.RecordDpMode.DISTRIBUTED:
    # Local DP-SGD samples at expected batch / the institution's units, so there
    # the canaries would change the sampling rate the claim is for.
    raise errors.ConfigError(
        "the record-level canary audit covers distributed DP-SGD: set config.record_dp.enabled=True and"
        f" config.record_dp.mode='distributed' (got {config.record_dp.enabled}, {config.record_dp.mode!r}).")
  if not choices.model.is_classifier:
    raise errors.ConfigError(f'the record-level canary audit needs a classifier; config.model.name='
                             f'{config.model.name!r} is not one.')
  if config.data.stream:
    raise errors.ConfigError('the record-level canary audit adds rows in memory: set config.data.stream=False.')
  if config.canary_audit.canaries < 1:
    raise errors.ConfigError(f'a record-level canary audit needs canaries >= 1, got {config.canary_audit.canaries}.')


def audit(config: ml_collections.ConfigDict, **kwargs) -> CanaryAudit:
  """The audit of the config's finest DP unit: records under DP-SGD, else institutions."""
  program.refuse_own_runtime(config, 'the canary audit')
  if config.record_dp.enabled:
    return audit_record_level(config, **kwargs)
  return audit_client_level(config, **kwargs)


def audit_as_configured(config: ml_collections.ConfigDict, *, runtime: program.Runtime, workdir: str,
                        log: Callable[[str], None] = print) -> CanaryAudit:
  """The audit config.canary_audit describes (its canaries and seed), on `runtime` (a federation)."""
  a = config.canary_audit
  return audit(config, canaries=a.canaries, seed=a.seed, runtime=runtime, workdir=workdir, log=log)


def audit_client_level(config: ml_collections.ConfigDict, *, canaries: int, seed: int,
                       fraction: float = 0.1, confidence: float = 0.95, sabotage: Sabotage = Sabotage.NONE,
                       log: Callable[[str], None] = print, runtime: Optional[program.Runtime] = None,
                       workdir: Optional[str] = None) -> CanaryAudit:
  """Trains once with `canaries` canary institutions and bounds ε from them (see the module docstring).

  Args:
    config: A client-level DP config (`check_client_level`).
    canaries: m, the canary institutions.
    seed: The canaries' directions and coins, and the aggregator's noise.
    fraction: Of the canaries, guessed at each end.
    confidence: Of the lower bound.
    sabotage: How to break the mechanism (the claim stays the config's).
    log: Progress lines.
    runtime: None: the simulation. Or a federation (`coordinator.Federation`),
      whose coordinator adds the canaries' updates to the nodes' in its
      aggregator (client-level DP's noise is the coordinator's to add).
    workdir: The federation's working directory (its run id).

  Returns:
    The claim and the bound.
  """
  choices = config_checks.parse_choices(config)
  check_client_level(config, choices)
  rounds = config.federated.rounds
  if runtime is None:
    data = config_data.load_data(config, log=log)
    space = config_data.feature_space(config, data)
  else:
    runtime.check(config)  # The agreed config: the nodes' (a sabotage is the coordinator's alone).
    setup = program.prepare(config, choices, program.Paths(workdir), runtime, log)
    data, space = setup.data, runtime.feature_space(config, setup.data, noise=None)
  members = len(data.institutions) + canaries
  plan = config_plan.privacy_plan(config, choices, institution_units=[1] * members, cohort=members)
  claimed = plan.epsilons(rounds=rounds, participation=[rounds] * members)['institution']
  run_config, run_plan, norm = _client_sabotage(config, plan, sabotage)
  initial = config_builders.initial_weights(config_builders.keras_model_fn(config, choices, space))
  rng = np.random.default_rng([seed, canaries])
  directions = rng.normal(size=(canaries, _flat(initial.trainable).size))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  included = rng.random(canaries) < 0.5
  updates = [tff.learning.templates.ClientResult(update=_unflatten(u, initial.trainable),
                                                 update_weight=np.float32(1.0))
             for u in directions[included] * norm]
  if runtime is None:
    training = config_builders.build_training(run_config, choices, run_plan, space, data.schema,
                                         side=config_builders.Side.COORDINATOR, cohort=members, noise_seed=seed)
    trained = _train(config, training, initial, data.institutions, data.schema, plan, updates, seed=seed, log=log)
  else:
    setup = dataclasses.replace(setup, plan=run_plan if sabotage is not Sabotage.NONE else setup.plan)
    trained = _rounds_on(runtime, run_config, choices, setup, space, updates, seed=seed, log=log)
  moved = _flat(trained) - _flat(initial.trainable)
  return _outcome(config, one_run.guess(-(directions @ moved), included, fraction=fraction),
                  claimed=claimed, confidence=confidence, included=included, sabotage=sabotage,
                  unit='institution')


def _rounds_on(runtime, config, choices, setup, space, updates, *, seed: int, log) -> list[np.ndarray]:
  """The rounds on a federation, the coordinator adding `updates` to the nodes' each round; the trained weights."""
  runtime.extra_updates = updates
  built = runtime.build(config, choices, setup, space, seed)
  state = _every_round(config, built, len(setup.data.institutions), log)
  return [np.asarray(w) for w in state.global_model_weights.trainable]


def _every_round(config, built: program.Built, institutions: int, log):
  """The config's rounds from the model's initial weights, every institution each round; the final state."""
  state = built.process.set_model_weights(built.process.initialize(), built.initial_model())
  for round_num in range(1, config.federated.rounds + 1):
    state, _, _ = built.train_round(state, list(range(institutions)), round_num)
    log(f'canary audit: round {round_num}/{config.federated.rounds}')
  return state


def audit_record_level(config: ml_collections.ConfigDict, *, canaries: int, seed: int,
                       fraction: float = 0.1, confidence: float = 0.95, sabotage: Sabotage = Sabotage.NONE,
                       log: Callable[[str], None] = print, runtime: Optional[program.Runtime] = None,
                       workdir: Optional[str] = None) -> CanaryAudit:
  """Trains once with `canaries` canary records and bounds ε from them (see the module docstring).

  Arguments as `audit_client_level`'s, except: `config` is a distributed
  DP-SGD config (`check_record_level`); the canaries are records (in
  config.canary_audit.institution, the first by default), each its own
  privacy unit when the schema names a unit column; `seed` (the coins) also
  seeds a simulation's secret sampling and noise, unless
  config.privacy.noise_seed is set.

  Args:
    runtime: Where the institutions train: the simulation (default), or a
      federation's nodes, whose agreed config must hold the same
      config.canary_audit (a node then adds the canaries it holds).
    workdir: The runtime's working directory (a federation keeps its run id
      there); a temporary one by default.
  """
  config = _with_audit(config, canaries=canaries, seed=seed)
  choices = config_checks.parse_choices(config)
  check_record_level(config, choices)
  with contextlib.ExitStack() as stack:
    workdir = workdir or stack.enter_context(tempfile.TemporaryDirectory())
    plan, names, built, state = _run(config, choices, runtime or program.InProcess(), workdir, sabotage, log)
  holder = config_data.canary_holder(config, names)
  # The holder's ε from training alone (the feature statistics are outside the audit).
  claimed = accounting.epsilon(plan.record.event(holder, config.federated.rounds), plan.delta,
                               accountant=plan.accountant)
  scores = np.asarray(state.global_model_weights.trainable[canaries_lib.weights_index(built.keras_model_fn)])
  included = canaries_lib.coins(config.canary_audit.seed, canaries)  # The coins the data layer drew.
  return _outcome(config, one_run.guess(scores.ravel(), included, fraction=fraction), claimed=claimed,
                  confidence=confidence, included=included, sabotage=sabotage, unit=plan.record.unit_name)


def _with_audit(config, *, canaries: int, seed: int) -> ml_collections.ConfigDict:
  """`config` with config.canary_audit's count and seed (an institution it names is kept)."""
  audited = ml_collections.ConfigDict(config.to_dict())
  audited.canary_audit.canaries, audited.canary_audit.seed = canaries, seed
  return audited


def _run(config, choices, runtime: program.Runtime, workdir: str, sabotage: Sabotage, log):
  """The program's stages up to the rounds, then the rounds: (plan, names, built, final state).

  Every institution trains every round (distributed DP-SGD's sampling is full).
  """
  runtime.check(config)
  setup = program.prepare(config, choices, program.Paths(workdir), runtime, log)
  # A simulation's sampling and noise (a federation's nodes draw their own, or use the agreed seed).
  noise_seed = config.privacy.noise_seed if config.privacy.noise_seed is not None else config.canary_audit.seed
  space = runtime.feature_space(config, setup.data, noise=program.statistics_noise(setup.plan, noise_seed))
  built = runtime.build(config, choices, dataclasses.replace(setup, plan=_record_sabotage(setup.plan, sabotage)),
                        space, noise_seed)
  state = _every_round(config, built, len(setup.data.institutions), log)
  return setup.plan, [i.name for i in setup.data.institutions], built, state


def _outcome(config, guesses: one_run.Guesses, *, claimed: float, confidence: float, included: np.ndarray,
             sabotage: Sabotage, unit: str) -> CanaryAudit:
  return CanaryAudit(
      claimed_epsilon=claimed, delta=config.privacy.delta, confidence=confidence,
      lower_bound=guesses.epsilon_lower_bound(delta=config.privacy.delta, confidence=confidence),
      canaries=guesses.canaries, included=int(included.sum()), guesses=guesses.guesses,
      correct=guesses.correct, rounds=config.federated.rounds, sabotage=sabotage.value, unit=unit)


def _client_sabotage(config, plan, sabotage: Sabotage):
  """(config, plan) the client-level run uses, and the canaries' update norm.

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


def _record_sabotage(plan: accounting.PrivacyPlan, sabotage: Sabotage) -> accounting.PrivacyPlan:
  """The plan the record-level run trains with (its DP-SGD reads clip and noise from the plan)."""
  record = plan.record
  if sabotage is Sabotage.NONE:
    return plan
  if sabotage is Sabotage.NOISE_OFF:
    return dataclasses.replace(plan, record=_unchecked(record, noise_multiplier=0.0))
  if sabotage is Sabotage.CLIPPING_OFF:
    # The noise's standard deviation, noise multiplier * clip, stays the claimed one.
    return dataclasses.replace(plan, record=_unchecked(
        record, clip=UNCLIPPED, noise_multiplier=record.noise_multiplier * record.clip / UNCLIPPED))
  raise ValueError(f'no sabotage {sabotage!r}.')


def _unchecked(mechanism, **changes):
  """`mechanism` with `changes`, past its own validation (a sabotage's noise may be 0)."""
  changed = copy.copy(mechanism)
  for name, value in changes.items():
    object.__setattr__(changed, name, value)
  return changed


def _train(config, training: config_builders.Training, initial, institutions, schema, plan, extra_results, *,
           seed: int, log) -> list[np.ndarray]:
  """Runs the rounds from `initial`, `extra_results` beside the institutions'; the trained weights."""
  parts = training.parts
  state = training.process.set_model_weights(training.process.initialize(), initial)
  for round_num in range(1, config.federated.rounds + 1):
    weights = state.global_model_weights
    results = [parts.client_update(weights, config_builders.client_dataset(
        config, training.work, plan, schema, institution, index=i, round_num=round_num,
        noise_seed=seed))[0] for i, institution in enumerate(institutions)]
    state, _ = parts.server_update(state, results + list(extra_results))
    log(f'canary audit: round {round_num}/{config.federated.rounds}')
  return [np.asarray(w) for w in state.global_model_weights.trainable]


def _flat(arrays) -> np.ndarray:
  return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def _unflatten(vector: np.ndarray, template) -> list[np.ndarray]:
  out, offset = [], 0
  for w in template:
    size = int(np.prod(w.shape))
    out.append(np.asarray(vector[offset:offset + size], np.float32).reshape(w.shape))
    offset += size
  return out

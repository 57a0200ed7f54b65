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
weights minus the trained ones).

Record level (`audit_record_level`): the config's distributed DP-SGD (its
sampling rate is fixed by the plan, not by the rows present), with the
included canary records added to the first institution's training rows.
So that one record's influence can be read off the model, the audited model
has one more weight per canary, w_j, which only canary j's gradient reaches
(`canary_model`: an extra input column, -1 on real rows), and a canary's
gradient lies on w_j alone: the white-box "Dirac canary" of the paper.
Everything else is the real code: the Poisson sample, per-record clipping,
each institution's noise share, the sum and the server optimizer. Canaries
are labelled positive, so an included one's steps raise w_j: its score is
w_j after training. The audited claim is the first institution's
record-level ε from training alone; the feature statistics (computed before
the canaries are added, and exactly: the canaries' rows would not clear the
DP vocabulary threshold) are outside it.

`Sabotage` breaks the mechanism on purpose while the claim stays the
config's, to show the audit can fail: NOISE_OFF adds no noise; CLIPPING_OFF
clips nothing (the noise's standard deviation as claimed) and the client
canaries send ten times the clip (a record canary's unclipped gradient is
about CANARY_INPUT clips). Simulation only.
"""

import copy
import dataclasses
import enum
from typing import Callable

import ml_collections
import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import errors
from tffaml.data import schema as schema_lib
from tffaml.privacy import accounting
from tffaml.privacy import one_run
from tffaml.training import experiment

CANARY_BOOST = 10.0  # CLIPPING_OFF: a client canary's update, in clips.
# CLIPPING_OFF: the clip applied instead (noise rescaled to stay as claimed).
UNCLIPPED = 1e6
# A record canary's gradient: (1 - p) * CANARY_INPUT on its own weight w_j
# and nothing else, so clipped it is the clip along w_j, and unclipped ten
# times the clip.
CANARY_INPUT = 10.0
# A canary row's logit, whatever the model and w_j are (w_j enters through
# its gradient only): p stays near 0, so a canary's gradient never fades (an
# unclipped canary would otherwise push p to 1 within a few steps, and a
# model blown up by a broken clip could do it for every canary), and p stays
# above the 1e-7 where Keras's cross-entropy clips p and the gradient is 0.
CANARY_LOGIT = -8.0
CANARY_COLUMN = 'audit_canary'  # The canary's index; -1 on real rows.
CANARY_WEIGHTS = 'audit_canaries'  # The layer holding w.
CANARY_CATEGORY = '__audit_canary__'  # A canary's categorical values (and unit prefix).


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


def check_client_level(config: ml_collections.ConfigDict, choices: experiment.Choices) -> None:
  """The audited mechanism: client-level DP with a fixed clip, every institution every round."""
  if config.aggregator.type != 'gaussian_fixed' or config.record_dp.enabled:
    raise errors.ConfigError(
        "the client-level canary audit covers client-level DP with a fixed clip: set"
        f" config.aggregator.type='gaussian_fixed' (got {config.aggregator.type!r}) and"
        ' config.record_dp.enabled=False.')
  if choices.sampling is not accounting.Sampling.FULL:
    raise errors.ConfigError("the canary audit runs every institution every round: set"
                             " config.federated.sampling='full'.")


def check_record_level(config: ml_collections.ConfigDict, choices: experiment.Choices) -> None:
  """The audited mechanism: distributed record- (or unit-) level DP-SGD of a classifier."""
  if not config.record_dp.enabled or choices.record_dp_mode is not accounting.RecordDpMode.DISTRIBUTED:
    # Local DP-SGD samples at expected batch / the institution's rows, so there
    # the included canaries would change the sampling rate the claim is for.
    raise errors.ConfigError(
        "the record-level canary audit covers distributed DP-SGD: set config.record_dp.enabled=True and"
        f" config.record_dp.mode='distributed' (got {config.record_dp.enabled}, {config.record_dp.mode!r}).")
  if not choices.model.is_classifier:
    raise errors.ConfigError(f'the record-level canary audit needs a classifier; config.model.type='
                             f'{config.model.type!r} is not one.')


def audit(config: ml_collections.ConfigDict, **kwargs) -> CanaryAudit:
  """The audit of the config's finest DP unit: records under DP-SGD, else institutions."""
  if config.record_dp.enabled:
    return audit_record_level(config, **kwargs)
  return audit_client_level(config, **kwargs)


def audit_client_level(config: ml_collections.ConfigDict, *, canaries: int, seed: int,
                       fraction: float = 0.1, confidence: float = 0.95,
                       sabotage: Sabotage = Sabotage.NONE, log: Callable[[str], None] = print) -> CanaryAudit:
  """Trains once with `canaries` canary institutions and bounds ε from them (see the module docstring).

  Args:
    config: A client-level DP config (`check_client_level`).
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
  check_client_level(config, choices)
  data = experiment.load_data(config, log=log)
  members = len(data.institutions) + canaries
  plan = experiment.privacy_plan(config, choices, institution_units=[1] * members, cohort=members)
  rounds = config.federated.rounds
  claimed = plan.epsilons(rounds=rounds, participation=[rounds] * members)['institution']
  run_config, run_plan, norm = _client_sabotage(config, plan, sabotage)
  training = experiment.build_training(run_config, choices, run_plan, experiment.feature_space(config, data),
                                       data.schema, side=experiment.Side.COORDINATOR, cohort=members,
                                       noise_seed=seed)
  initial = experiment.initial_weights(training.keras_model_fn)
  rng = np.random.default_rng([seed, canaries])
  directions = rng.normal(size=(canaries, _flat(initial.trainable).size))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  included = rng.random(canaries) < 0.5
  updates = [tff.learning.templates.ClientResult(update=_unflatten(u, initial.trainable),
                                                 update_weight=np.float32(1.0))
             for u in directions[included] * norm]
  trained = _train(config, training, initial, data.institutions, data.schema, plan, updates, seed=seed, log=log)
  moved = _flat(trained) - _flat(initial.trainable)
  return _outcome(config, one_run.guess(-(directions @ moved), included, fraction=fraction),
                  claimed=claimed, confidence=confidence, included=included, sabotage=sabotage,
                  unit='institution')


def audit_record_level(config: ml_collections.ConfigDict, *, canaries: int, seed: int,
                       fraction: float = 0.1, confidence: float = 0.95,
                       sabotage: Sabotage = Sabotage.NONE, log: Callable[[str], None] = print) -> CanaryAudit:
  """Trains once with `canaries` canary records and bounds ε from them (see the module docstring).

  Arguments as `audit_client_level`'s, except: `config` is a distributed
  DP-SGD config (`check_record_level`); the canaries are records (the first
  institution holds the included ones), each its own privacy unit when the
  schema names a unit column; `seed` also seeds the run's secret sampling
  and noise.
  """
  choices = experiment.parse_choices(config)
  check_record_level(config, choices)
  data = experiment.load_data(config, log=log)
  sizes = experiment.census(data)
  # All m canaries, included or not: the plan must not depend on the coins.
  sizes[0] = {**sizes[0], 'units': sizes[0]['units'] + canaries, 'train_rows': sizes[0]['train_rows'] + canaries}
  plan = experiment.privacy_plan_for_census(config, choices, data.schema, sizes, cohort=len(sizes))
  rounds = config.federated.rounds
  # The canaries' institution's ε from training alone (the statistics are outside the audit).
  claimed = accounting.epsilon(plan.record.event(0, rounds), plan.delta, accountant=plan.accountant)
  space = experiment.feature_space(config, data)
  schema = dataclasses.replace(data.schema, numeric=data.schema.numeric + (CANARY_COLUMN,))
  training = experiment.build_training(
      config, choices, _record_sabotage(plan, sabotage), space, schema, side=experiment.Side.WHOLE,
      keras_model=canary_model(experiment.keras_model_fn(config, choices, space), canaries))
  included = np.random.default_rng([seed, canaries]).random(canaries) < 0.5
  institutions = _with_canaries(data.institutions, data.schema, np.flatnonzero(included))
  initial = experiment.initial_weights(training.keras_model_fn)
  trained = _train(config, training, initial, institutions, schema, plan, [], seed=seed, log=log)
  scores = np.asarray(trained[_canary_weights_index(training.keras_model_fn)]).ravel()
  return _outcome(config, one_run.guess(scores, included, fraction=fraction), claimed=claimed,
                  confidence=confidence, included=included, sabotage=sabotage, unit=plan.record.unit_name)


def _outcome(config, guesses: one_run.Guesses, *, claimed: float, confidence: float, included: np.ndarray,
             sabotage: Sabotage, unit: str) -> CanaryAudit:
  return CanaryAudit(
      claimed_epsilon=claimed, delta=config.privacy.delta, confidence=confidence,
      lower_bound=guesses.epsilon_lower_bound(delta=config.privacy.delta, confidence=confidence),
      canaries=guesses.canaries, included=int(included.sum()), guesses=guesses.guesses,
      correct=guesses.correct, rounds=config.federated.rounds, sabotage=sabotage.value, unit=unit)


def canary_model(base: Callable[[], tf.keras.Model], canaries: int) -> Callable[[], tf.keras.Model]:
  """`base`'s model with one more weight per canary record (see the module docstring).

  The new model's inputs are `base`'s and CANARY_COLUMN (the canary's index,
  -1 on a real row, which leaves the output and gradients `base`'s). Canary
  j's logit is CANARY_LOGIT, and its gradient that of CANARY_INPUT * w_j.
  """

  def build() -> tf.keras.Model:
    model = base()
    index = tf.keras.Input(shape=(), dtype=tf.float32, name=CANARY_COLUMN)
    # tf.one_hot of -1 is all zeros: a real row's gradient never reaches w.
    one_hot = tf.one_hot(tf.cast(index, tf.int32), canaries) * CANARY_INPUT
    shift = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer='zeros', name=CANARY_WEIGHTS)(one_hot)
    shift -= tf.stop_gradient(shift)  # 0, with the gradient of CANARY_INPUT * w_j.
    p = tf.clip_by_value(model.output, 1e-7, 1 - 1e-7)
    # A canary row's logit does not depend on the model: none of its gradient reaches the model's weights.
    logit = tf.where(index[:, None] >= 0, CANARY_LOGIT, tf.math.log(p) - tf.math.log1p(-p))
    probability = tf.sigmoid(logit + shift)
    return tf.keras.Model({**model.input, CANARY_COLUMN: index}, probability, name=f'{model.name}_audited')

  return build


def _canary_weights_index(keras_model: Callable[[], tf.keras.Model]) -> int:
  names = [w.name for w in keras_model().trainable_weights]
  return next(i for i, name in enumerate(names) if name.startswith(f'{CANARY_WEIGHTS}/'))


def _with_canaries(institutions, schema: schema_lib.Schema, canaries: np.ndarray) -> list:
  """The institutions with CANARY_COLUMN, and the first holding `canaries`' records (label 1).

  A canary's features are any valid values (zeros, and an out-of-vocabulary
  category): its logit does not read them.
  """
  real = [dataclasses.replace(i, train=i.train.assign(**{CANARY_COLUMN: -1.0})) for i in institutions]
  first = real[0].train
  rows = pd.DataFrame({c: np.zeros(len(canaries), first[c].dtype) for c in schema.numeric})
  for c in schema.categorical:
    rows[c] = CANARY_CATEGORY
  rows[schema_lib.LABEL_COLUMN] = np.ones(len(canaries), first[schema_lib.LABEL_COLUMN].dtype)
  if schema_lib.UNIT_COLUMN in first:
    rows[schema_lib.UNIT_COLUMN] = [f'{CANARY_CATEGORY}{j}' for j in canaries]
  rows[CANARY_COLUMN] = canaries.astype(np.float64)
  real[0] = dataclasses.replace(real[0], train=pd.concat([first, rows[first.columns]], ignore_index=True))
  return real


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


def _train(config, training: experiment.Training, initial, institutions, schema, plan, extra_results, *,
           seed: int, log) -> list[np.ndarray]:
  """Runs the rounds from `initial`, `extra_results` beside the institutions'; the trained weights."""
  parts = training.parts
  state = training.process.set_model_weights(training.process.initialize(), initial)
  for round_num in range(1, config.federated.rounds + 1):
    weights = state.global_model_weights
    results = [parts.client_update(weights, experiment.client_dataset(
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

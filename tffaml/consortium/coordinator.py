"""The coordinator's runtime: the same training program, with the rows at the nodes.

`Federation` is a `program.Runtime`: `program.run(config, workdir,
runtime=Federation(...))` runs the round loop, privacy ledger, checkpoints,
metrics and signed export of the simulation, while every computation on rows
happens at the institutions' nodes (`node.Node`), reached through a
`Transport` (Flower between machines, `InProcessTransport` in tests). The
coordinator runs TFF's aggregator (client-level DP, robust aggregation) and
the server optimizer on the updates the nodes send, on the same state as the
simulation, so with the same seeds and no noise the two give the same model.

What the coordinator sees: each node's sizes (rows, positives, DP units),
its answers to the statistics requests (its candidate category values, and
histograms and sums: noised under DP), each node's test metric counts, and
each round's updates: with secure aggregation (config.federation, the
default with distributed DP-SGD) only their sum, through Flower's SecAgg+
between the nodes; without it each node's update, so that under distributed
record-level DP, whose updates carry only a share of the noise, the
record-level ε holds against the coordinator only at the collusion ε the
statement gives. Against everyone who sees the released model it holds as
stated either way.

Each round the coordinator rewrites `<workdir>/status.json` (`status`) and
logs it in one line; at the end `Federation.deliver` signs the export and
delivers it to every node with its own metrics and the privacy statement
(`delivery`).
"""

import contextlib
import dataclasses
import os
import secrets
import threading
import time
from typing import Callable, Iterator, Mapping, Optional, Protocol, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import errors
from tffaml import features
from tffaml import io
from tffaml.data import loading
from tffaml.data import schema as schema_lib
from tffaml.federated import aggregators
from tffaml.federated import processes
from tffaml.federated import quantiles
from tffaml.consortium import delivery
from tffaml.consortium import flower
from tffaml.consortium import messages
from tffaml.consortium import node as node_lib
from tffaml.consortium import status as status_lib
from tffaml.privacy import accounting
from tffaml.training import evaluation
from tffaml.config import builders as config_builders
from tffaml.config import checks as config_checks
from tffaml.config import data as config_data
from tffaml.training import program
from tffaml.security import signing


class Transport(Protocol):
  """Delivers signed requests to named nodes and returns their signed replies."""

  # Whether `exchange` may run on another thread while this process builds its own TFF
  # computations (nodes in other processes); nodes in this process share its TensorFlow.
  concurrent: bool

  def exchange(self, requests: Mapping[str, bytes]) -> dict[str, bytes]:
    """Each node's reply; a node that did not answer is missing from the result."""

  def secure_exchange(self, requests: Mapping[str, bytes], *, settings: flower.SecureAggregation,
                      round_num: int) -> flower.SecureSum:
    """Training requests through secure aggregation: the replies, the weighted mean of the updates."""


class InProcessTransport:
  """Nodes in this process (tests, and a coordinator's own checks): `Node.handle` called directly.

  Its secure aggregation is simulated: the updates are averaged here in the clear.
  """

  concurrent = False  # Its nodes would build their TFF computations beside this process's own.

  def __init__(self, nodes: Sequence[node_lib.Node]):
    self._nodes = {n.name: n for n in nodes}

  def exchange(self, requests: Mapping[str, bytes]) -> dict[str, bytes]:
    return {name: self._nodes[name].handle(blob) for name, blob in requests.items()}

  def secure_exchange(self, requests: Mapping[str, bytes], *, settings: flower.SecureAggregation,
                      round_num: int) -> flower.SecureSum:
    del round_num
    answers = {name: self._nodes[name].handle_secure(blob, summed_with=len(requests))
               for name, blob in requests.items()}
    answers = {name: a for name, a in answers.items() if a.update}  # As SecAgg+ drops a refusing node.
    sent = _mean_bytes(requests.values())
    received = sum(len(a.reply) + sum(u.nbytes for u in a.update) for a in answers.values())
    if not answers:
      return flower.SecureSum(replies={}, mean=None, sent=sent, received=0.0)
    # As SecAgg+ does: each update scaled by its weight over max_weight, then clipped; a NaN becomes
    # -clipping_range, as Flower 1.12's quantizer makes it (its int cast, INT_MIN, is 0 modulo the field).
    weights = np.array([a.weight for a in answers.values()], np.float64) / settings.max_weight
    cut = settings.clipping_range
    scaled = [[np.where(np.isnan(u), -cut, np.clip(w * u, -cut, cut)) for u in a.update]
              for w, a in zip(weights, answers.values())]
    mean = [sum(u[k] for u in scaled) / weights.sum() for k in range(len(scaled[0]))]
    return flower.SecureSum(replies={name: a.reply for name, a in answers.items()}, mean=mean, sent=sent,
                            received=received / len(answers))


@dataclasses.dataclass(frozen=True)
class _Member:
  name: str


@dataclasses.dataclass(frozen=True)
class Roster:
  """The federation as the coordinator knows it: names, schema and sizes, no rows."""

  schema: schema_lib.Schema
  institutions: tuple[_Member, ...]
  summaries: tuple[dict, ...]
  census: tuple[dict, ...]

  def summary(self) -> list[dict]:
    return list(self.summaries)


def at_coordinator(config: ml_collections.ConfigDict) -> None:
  """Makes the agreed `config` the coordinator's: the same but for where the rows are (at the nodes)."""
  config.data.source = loading.at_nodes(config_data.data_source(config)).value
  config.data.dir = config.data.path = ''


def check(config: ml_collections.ConfigDict) -> None:
  """Refuses what needs rows in the coordinator's process, before any work."""
  if config.data.stream:
    raise errors.ConfigError('config.data.stream=True stores the rows in the coordinator\'s workdir; a'
                             ' federation\'s rows are at its nodes: set it to False.')
  program.refuse_needing_rows(config, runtime='a federation', fix='use scripts/train.py', alerts=True)
  choices = config_checks.parse_choices(config)
  if choices.algorithm is not processes.Algorithm.FEDAVG:
    raise errors.ConfigError(
        f'config.federated.algorithm={config.federated.algorithm!r} is built whole by TFF and runs only in'
        " simulation; use 'fedavg' (FedAdam and FedYogi are fedavg with a server optimizer).")
  if config.federation.secure_aggregation and choices.aggregator.needs_each_update:
    sum_only = ', '.join(t.value for t in aggregators.AggregatorType if not t.needs_each_update)
    raise errors.ConfigError(
        f'config.aggregator.type={config.aggregator.type!r} needs each node\'s update, which secure'
        f' aggregation hides: set config.aggregator.type to one of {sum_only}, or'
        ' config.federation.secure_aggregation=False (the coordinator then sees every update, and the'
        ' privacy statement says so).')
  if config_data.canary_records(config) and not config.canary_audit.institution:
    raise errors.ConfigError('a record-level canary audit in a federation needs the node that holds the'
                             ' canaries: set config.canary_audit.institution to its institution name.')
  if (config.model.alert_budget and config.record_dp.enabled and config.record_dp.tolerated_dropouts
      and choices.record_dp_mode is accounting.RecordDpMode.DISTRIBUTED):
    raise errors.ConfigError(
        f'config.record_dp.tolerated_dropouts={config.record_dp.tolerated_dropouts} lets a round lose nodes,'
        f' but the DP alert threshold of config.model.alert_budget={config.model.alert_budget:g} sums every'
        ' node\'s noise share (one lost would leave less noise than its ε counts): set'
        ' config.record_dp.tolerated_dropouts=0, or config.model.alert_budget=0 with a config.model.threshold.')
  if not 0 < config.federation.reconstruction_threshold <= 1:
    raise errors.ConfigError(f'config.federation.reconstruction_threshold='
                             f'{config.federation.reconstruction_threshold!r} must be in (0, 1].')


# SecAgg+ among fewer nodes hides little: with two, each learns the other's update from the sum.
MIN_SECURE_COHORT = 3


def secure_aggregation(config, choices: config_checks.Choices, census: Sequence[dict],
                       cohort: int) -> Optional[flower.SecureAggregation]:
  """The SecAgg+ settings of `config.federation`, None when it is off."""
  f = config.federation
  if not f.secure_aggregation:
    return None
  if cohort < MIN_SECURE_COHORT:
    raise errors.ConfigError(
        f'config.federation.secure_aggregation=True needs at least {MIN_SECURE_COHORT} nodes a round; this'
        f' federation has {cohort}: add institutions or raise config.federated.clients_per_round.')
  weighted = choices.weighting is processes.Weighting.EXAMPLES
  most = max(weight_bound(config, s) for s in census)
  return flower.SecureAggregation(reconstruction_threshold=f.reconstruction_threshold,
                                  clipping_range=f.clipping_range, max_weight=float(most) if weighted else 1.0)


def weight_bound(config: ml_collections.ConfigDict, entry: Mapping) -> float:
  """The largest update weight a node's census `entry` allows: its training rows times the epochs.

  Weighted by examples, a round's weight is the examples the node trained
  on (FedAvg: its rows, each epoch); otherwise it is 1. Either way an honest
  node stays within this.
  """
  return float(entry['train_rows'] * int(np.ceil(config.federated.client_epochs)))


def update_problem(reply: messages.Message, *, bound: float, shapes: Sequence[tuple[int, ...]]) -> Optional[str]:
  """Why a node's update in the clear must not be aggregated, or None.

  A claimed weight beyond its census entry (`bound`) is refused rather than
  cut to the bound: no honest node claims it, so the node is broken or
  hostile and its update is as suspect as its weight (one claiming 1e9
  rescaled a whole model), and a bounded weight would still let it count as
  the largest node. The round goes on without it, as without a silent node.
  """
  weight = reply.header.get('update_weight')
  if not isinstance(weight, (int, float)) or not 0 < weight <= bound:
    return (f'it claims update weight {weight!r}, beyond its census entry ({bound:g}: its training rows'
            ' times config.federated.client_epochs)')
  arrays = reply.arrays
  if len(arrays) != len(shapes) or any(a.shape != tuple(s) or a.dtype.kind != 'f' for a, s in zip(arrays, shapes)):
    return 'its update does not have the global model\'s layout'
  metrics = reply.header.get('metrics')
  if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
    return 'its training metrics are not numbers'
  if not (np.all([np.all(np.isfinite(a)) for a in arrays]) and np.all(np.isfinite(list(metrics.values())))):
    return 'its update or metrics hold non-finite values (NaN or Inf)'
  return None


def metric_keys(replies) -> frozenset:
  """The training metrics' names most replies give (ties: the earliest reply's): every honest node's.

  Honest nodes run the same agreed training, so they report the same
  metrics; a reply with other names is broken or hostile.
  """
  sets = [frozenset(r.header['metrics']) for r in replies if isinstance(r.header.get('metrics'), dict)]
  return max(sets, key=sets.count, default=frozenset())


def metrics_problem(reply: messages.Message, keys: frozenset) -> Optional[str]:
  """Why a reply's training metrics cannot be combined with the others' (`keys`), or None."""
  metrics = reply.header.get('metrics')
  if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
    return 'its training metrics are not numbers'
  if set(metrics) != keys:
    differ = [f'{what} {", ".join(sorted(names))}' for what, names in
              (('lack', keys - set(metrics)), ('add', set(metrics) - keys)) if names]
    return (f'its training metrics {" and ".join(differ)}, unlike the other nodes\' (it runs other client'
            ' code than the agreed)')
  return None


@dataclasses.dataclass(frozen=True)
class SumBound:
  """The largest L2 norm a round's securely summed updates may have, by what the nodes clip.

  The coordinator sees only the decoded sum, and Flower's quantizer turns a
  NaN into a finite value (-clipping_range), so a broken or hostile node's
  update can pass for a good one; what its clip allows bounds the sum:
    * client-level DP (gaussian_fixed): each update is clipped to L2
      config.aggregator.clip at its node, so K of them sum to at most K·clip;
    * distributed DP-SGD: each update is K/B (Σ of the sampled units'
      gradients, each clipped to C, plus its noise share), B the federation's
      expected batch: with n units sampled in all and the K' shares' noise
      N(0, K'(σ_share C)² I_d) in the sum, the sum is at most
      K/B·C·(n + σ_share √K' (√d + 10)). A Gaussian's norm exceeds
      σ(√d + t) with probability at most exp(-t²/2), and n (Poisson, mean B)
      exceeds B + 10√B + 34 with probability at most exp(-50) (Bernstein):
      the bound fails an honest round with probability below 1e-21.
  Each also allows Flower's quantization (a step of 2·clipping_range/2^22 per
  coordinate and node) and float rounding. Without a clip (plain FedAvg
  under SecAgg+) there is no bound to check: the nodes' own refusal to send
  a non-finite update (`node.Node`) is what protects the sum.
  """

  per_update: float  # Each update's L2 norm is at most this (client-level DP's clip).
  fixed: float = 0.0  # The sum's clipped gradients, at most (distributed DP-SGD).
  noise: float = 0.0  # Distributed DP-SGD: σ_share·C·K/B, each share's noise stddev in the update's units.
  what: str = ''  # What sets the bound, for the message.

  def limit(self, updates: int, dim: int, clipping_range: float) -> float:
    noise = self.noise * np.sqrt(updates) * (np.sqrt(dim) + 10.0)
    quantization = updates * np.sqrt(dim) * 2.0 * clipping_range / 2 ** 22
    return (updates * self.per_update + self.fixed + noise) * (1.0 + 1e-4) + quantization


def sum_bound(config: ml_collections.ConfigDict, plan, work: config_builders.ClientWork) -> Optional[SumBound]:
  """What the clip allows of a round's securely summed updates (`SumBound`); None without a clip."""
  if work is config_builders.ClientWork.DISTRIBUTED_DP_SGD:
    r = plan.record
    scale = len(r.units) / r.expected_batch_size  # Each update is its noised gradient sum over B/K.
    batch = r.expected_batch_size
    most = min(sum(r.units), batch + 10.0 * np.sqrt(batch) + 34.0)  # Units sampled in all, at most.
    return SumBound(per_update=0.0, fixed=scale * r.clip * most, noise=scale * r.noise_share * r.clip,
                    what=f'DP-SGD\'s clip {r.clip:g} a unit, noise multiplier {r.noise_share:.4g} a share')
  if config.aggregator.type == 'gaussian_fixed':  # As node.clip_for_secure_sum clips.
    clip = config.aggregator.clip
    return SumBound(per_update=clip, what=f'config.aggregator.clip {clip:g} an update')
  return None


class Federation:
  """`program.Runtime` whose institutions are nodes behind `transport`."""

  def __init__(self, transport: Transport, *, key: messages.PrivateKey,
               node_keys: Mapping[str, messages.PublicKey], min_nodes: int = 1,
               log: Callable[[str], None] = print):
    """`node_keys`: each registered institution's public key, by name; `min_nodes` per round."""
    # Kept as given: a live registry (`registry.LiveKeys`) applies a rotated or revoked key mid-run.
    self._transport, self._key, self._node_keys = transport, key, node_keys
    self.min_nodes, self.log = min_nodes, log
    self._agreement: Optional[str] = None
    self.names: list[str] = sorted(node_keys)  # The federation's order: institution indices.
    self.traffic = {'sent': 0.0, 'received': 0.0}  # Mean bytes per node of the last exchange.
    self.run_id = ''  # Set by `load` (kept in the workdir).
    self.root = ''  # The run's workdir, set by `load`: where status.json goes.
    # Aggregated beside the nodes' updates every round: a client-level canary
    # audit's canary institutions (tffaml.studies.canary_audit); none otherwise.
    self.extra_updates: Sequence[tff.learning.templates.ClientResult] = ()

  def check(self, config: ml_collections.ConfigDict) -> None:
    check(config)
    schema = config_data.agreed_schema(config)
    self._agreement = node_lib.agreement(config, schema)

  def ask(self, kind: str, headers: Mapping[str, dict], arrays: Sequence[np.ndarray] = (), *,
          required: bool = True) -> dict[str, messages.Message]:
    """Sends `kind` to the nodes in `headers`; their verified replies (all of them if `required`)."""
    requests = self._seal(kind, headers, arrays)
    answers = self._transport.exchange(requests)
    self.traffic = {'sent': _mean_bytes(requests.values()), 'received': _mean_bytes(answers.values())}
    return self._verify(kind, headers, requests, answers, required=required)

  def ask_secure(self, headers: Mapping[str, dict], arrays: Sequence[np.ndarray], *,
                 settings: flower.SecureAggregation, round_num: int
                 ) -> tuple[dict[str, messages.Message], Optional[list[np.ndarray]]]:
    """A training round through secure aggregation: (verified replies, the mean of their updates)."""
    requests = self._seal(node_lib.TRAIN, headers, arrays)
    secure = self._transport.secure_exchange(requests, settings=settings, round_num=round_num)
    replies = self._verify(node_lib.TRAIN, headers, requests, secure.replies, required=False)
    self.traffic = {'sent': secure.sent, 'received': secure.received}  # The whole protocol's.
    if set(replies) != set(secure.replies):  # A reply that does not verify: its update is in the mean.
      raise errors.RunFailed(f'round {round_num}: the securely summed updates include a node whose reply'
                             ' did not verify (see the log above); the round is discarded.')
    return replies, secure.mean

  def _seal(self, kind: str, headers: Mapping[str, dict], arrays: Sequence[np.ndarray]) -> dict[str, bytes]:
    return {name: messages.seal(messages.Message(kind, {**h, 'agreement': self._agreement}, tuple(arrays)),
                                self._key)
            for name, h in headers.items()}

  def _verify(self, kind: str, headers: Mapping[str, dict], requests: Mapping[str, bytes],
              answers: Mapping[str, bytes], *, required: bool) -> dict[str, messages.Message]:
    """The verified, accepted replies; every problem logged, and raised if `required`."""
    replies, problems = {}, {}
    for name, blob in answers.items():
      if name not in self._node_keys:
        problems[name] = 'its key was revoked (scripts/keys.py)'
        continue
      try:
        reply = messages.unseal(blob, self._node_keys[name], sender=name,
                                kinds=(node_lib.reply_kind(kind), node_lib.REFUSED))
      except messages.Refused as e:
        problems[name] = str(e)
        continue
      if reply.header.get('answers') != messages.digest(requests[name]):
        problems[name] = 'its reply answers another request (a replay)'
      elif reply.kind == node_lib.REFUSED:
        problems[name] = f'refused: {reply.header["reason"]}'
      else:
        replies[name] = reply
    problems.update({n: 'no reply' for n in headers if n not in replies and n not in problems})
    for name, problem in problems.items():
      self.log(f'{kind}: node {name}: {problem}')
    if problems and required:
      raise errors.RunFailed(f'{kind}: ' + '; '.join(f'node {n}: {p}' for n, p in sorted(problems.items())))
    return replies

  def load(self, config: ml_collections.ConfigDict, paths: program.Paths, *, log) -> Roster:
    del log
    self.run_id, self.root = _run_id(paths.root), paths.root
    replies = self.ask(node_lib.HELLO, {n: {} for n in self.names})
    schema = config_data.agreed_schema(config)
    for name, reply in replies.items():
      if reply.header['institution'] != name:
        raise errors.RunFailed(f'node {name} says it is {reply.header["institution"]!r}.')
    # Each node checked its own files; only here are all codings of the label seen together.
    schema_lib.check_label_agreement(schema, [schema_lib.LabelSighting(
        f'node {n}', {v: (text, None) for v, text in replies[n].header.get('labels', {}).items()})
        for n in self.names])
    ordered = [replies[n] for n in self.names]
    return Roster(schema=schema, institutions=tuple(_Member(n) for n in self.names),
                  summaries=tuple(r.header['summary'] for r in ordered),
                  census=tuple({'institution': r.header['institution'], 'units': r.header['units'],
                                'train_rows': r.header['summary']['train_rows']} for r in ordered))

  @contextlib.contextmanager
  def _preparing(self, plan: dict) -> Iterator[None]:
    """Has every node build its client work for `plan` while this process builds its own.

    A node's first build (tracing its DP-SGD step) takes seconds to tens of
    seconds; done here, it is off round 1's reply time. Best effort: a node
    that refuses or does not answer is logged, and round 1 asks it again.
    """
    headers = {n: {**plan, 'run': self.run_id, 'index': i} for i, n in enumerate(self.names)}
    started, replies, failed = time.monotonic(), {}, []

    def prepare():
      try:
        replies.update(self.ask(node_lib.PREPARE, headers, required=False))
      except errors.RunFailed as e:  # The transport's: round 1 meets it again and stops the run there.
        failed.append(e)
    if not self._transport.concurrent:
      prepare()
      yield
    else:
      # A daemon thread, not an executor: a failed build must not wait out the nodes' reply timeout.
      thread = threading.Thread(target=prepare, name='prepare', daemon=True)
      thread.start()
      yield
      thread.join()
    slowest = max((float(r.header.get('seconds', 0.0)) for r in replies.values()), default=0.0)
    self.log(f'prepare: {len(replies)} of {len(headers)} nodes built their client work for the plan'
             f' (slowest {slowest:.1f} s; {time.monotonic() - started:.1f} s here, beside this build)'
             + ''.join(f'; {e}' for e in failed))

  def census(self, data: Roster) -> list[dict]:
    return list(data.census)

  def feature_space(self, config: ml_collections.ConfigDict, data: Roster, noise) -> features.FeatureSpace:
    def ask(request: features.Request, params: dict) -> list:
      headers = {n: {'request': request.value, 'params': params, 'index': i, 'run': self.run_id}
                 for i, n in enumerate(self.names)}
      replies = self.ask(node_lib.STATISTICS, headers)
      return [_statistics_answer(replies[n]) for n in self.names]
    return config_data.feature_space(config, data, noise, ask=ask)

  def build(self, config, choices: config_checks.Choices, setup, space: features.FeatureSpace,
            noise_seed: int) -> program.Built:
    plan = {'space': _jsonable(space.to_dict()), 'census': self.census(setup.data),
            'noise': setup.plan.noise_multipliers()}
    with self._preparing(plan):
      training = config_builders.build_training(config, choices, setup.plan, space, setup.data.schema,
                                                side=config_builders.Side.COORDINATOR, cohort=setup.cohort,
                                                noise_seed=noise_seed)
    secure = secure_aggregation(config, choices, plan['census'], setup.cohort)
    rounds = _Rounds(self, training.parts, training.model_fn, plan, secure,
                     tolerated_losses=setup.plan.record.dropouts
                     if training.work is config_builders.ClientWork.DISTRIBUTED_DP_SGD else None,
                     weight_bounds={e['institution']: weight_bound(config, e) for e in plan['census']},
                     sum_bound=sum_bound(config, setup.plan, training.work),
                     progress=_Progress(rounds=config.federated.rounds, unit=setup.plan.headline_unit,
                                        delta=setup.plan.delta if setup.plan.is_private else None))
    return program.Built(keras_model_fn=training.keras_model_fn, process=training.process,
                         train_round=rounds.train_round, evaluate=rounds.evaluate,
                         score_histogram=rounds.score_histogram, alert_metrics=rounds.alert_metrics,
                         on_round=rounds.on_round, aggregation=accounting.Aggregation.SECURE if secure
                         else accounting.Aggregation.VISIBLE_UPDATES)


@dataclasses.dataclass(frozen=True)
class _Progress:
  """What the status needs of the run's plan: its rounds, the headline unit of ε, δ (None without DP)."""

  rounds: int
  unit: str
  delta: Optional[float]


def deliver(federation: Federation, result: program.RunResult, *, key_file: str) -> dict[str, str]:
  """Signs the run's export with the coordinator's key, then delivers it to every node (`delivery`).

  Each node gets the package, its own final metrics (not another bank's)
  and the privacy statement, and keeps them once the package verifies
  against the coordinator's public key. A node that does not (down, or
  refusing) is logged in one line; the signed export stays in the workdir.

  Returns:
    {institution: what its node did} for the nodes that answered.
  """
  signing.sign(result.paths.export, key_file)
  header, arrays = delivery.package(result.paths.export)
  with open(result.paths.privacy) as f:
    statement = f.read()
  headers = {n: {**header, 'run': federation.run_id, 'institution': n, 'privacy': statement,
                 'metrics': _jsonable(delivery.own_metrics(result.metrics, n))} for n in federation.names}
  replies = federation.ask(node_lib.DELIVER, headers, arrays, required=False)
  kept = {n: str(r.header.get('kept', '')) for n, r in replies.items()}
  for name, what in kept.items():
    federation.log(f'deliver: node {name}: the signed model verified and {what}')
  missing = [n for n in federation.names if n not in kept]
  if missing:
    federation.log(f'deliver: the model did not reach {", ".join(missing)} (see above); it is signed in'
                   f' {result.paths.export}: rerun the same command to deliver it again.')
  return kept


class _Rounds:
  """A round and an evaluation over the nodes."""

  def __init__(self, federation: Federation, parts, model_fn, plan: dict,
               secure: Optional[flower.SecureAggregation], *, tolerated_losses: Optional[int],
               weight_bounds: Mapping[str, float], sum_bound: Optional[SumBound],
               progress: Optional[_Progress] = None):
    self._federation, self._parts, self._model_fn, self._plan = federation, parts, model_fn, plan
    self._secure = secure  # None: updates in the clear.
    self._weight_bounds, self._sum_bound = weight_bounds, sum_bound  # By each node's census entry; its clip.
    # Distributed DP-SGD's noise is planned as shares: how many a round may lose (None: any).
    self._tolerated_losses = tolerated_losses
    self._evaluator = None  # Made at the first evaluation (a Keras model for its finalizers).
    self.names = federation.names
    self._progress = progress
    self._round_nodes: tuple[int, list[str], list[str]] = (0, [], [])  # The last round trained, asked, answered.

  def on_round(self, round_num: int, values: Mapping[str, float], eta: float) -> None:
    """Rewrites status.json after a round, and logs it in one line (`status`)."""
    if self._progress is None or not self._federation.root:
      return
    epsilon = {}
    if 'privacy/epsilon' in values:
      epsilon[self._progress.unit] = float(values['privacy/epsilon'])
    if 'privacy/institution_epsilon' in values:
      epsilon['institution'] = float(values['privacy/institution_epsilon'])
    trained, asked, answered = self._round_nodes
    if trained != round_num:  # A Poisson round that drew nobody: no node was asked.
      asked, answered = [], []
    written = status_lib.write_status(
        self._federation.root, round_num=round_num, rounds=self._progress.rounds, registered=self.names,
        asked=asked, answered=answered, epsilon=epsilon, delta=self._progress.delta,
        round_seconds=float(values.get('round_seconds', 0.0)), eta_seconds=eta)
    self._federation.log(status_lib.status_line(written))

  def train_round(self, state, members: list[int], round_num: int):
    weights = state.global_model_weights
    headers = {self.names[i]: {**self._plan, 'run': self._federation.run_id, 'round': round_num, 'index': i}
               for i in members}
    replies, results = self._updates(headers, _flat(weights), weights.trainable, round_num)
    took_part = [i for i in members if self.names[i] in replies]
    missing = [self.names[i] for i in members if i not in took_part]
    self._round_nodes = (round_num, [self.names[i] for i in members], [self.names[i] for i in took_part])
    if self._tolerated_losses is not None and len(missing) > self._tolerated_losses:
      t = self._tolerated_losses
      needs = (f'the noise shares of all but {t} institutions' if t else 'every institution\'s share of the'
               ' noise')
      raise errors.RunFailed(
          f'round {round_num}: no update from {", ".join(missing)}; distributed DP-SGD needs {needs} each'
          ' round (its ε counts on it), so the round is discarded and the run stopped at its last checkpoint'
          f' (round {round_num - 1}); rerun the same command to resume once the nodes are back'
          ' (config.record_dp.tolerated_dropouts sets how many a round may lose, at a cost in noise).')
    if len(took_part) < self._federation.min_nodes:
      raise errors.RunFailed(
          f'round {round_num}: {len(took_part)} of {len(members)} nodes sent an update, fewer than the'
          f' minimum {self._federation.min_nodes}; the run stopped at its last checkpoint'
          f' (round {round_num - 1}); rerun the same command to resume once nodes are back.')
    ordered = [replies[self.names[i]] for i in took_part]
    if self._secure is not None:  # Their updates are in the sum; a malformed reply's metrics only are left out.
      keys = metric_keys(ordered)
      for name in [self.names[i] for i in took_part if metrics_problem(replies[self.names[i]], keys)]:
        self._federation.log(f'round {round_num}: node {name}: {metrics_problem(replies[name], keys)}: its'
                             ' metrics are left out of the round\'s training metrics.')
      ordered = [r for r in ordered if not metrics_problem(r, keys)]
    state, measurements = self._parts.server_update(state, results + list(self._federation.extra_updates))
    values = {**_train_metrics([r.header['metrics'] for r in ordered]),
              **program.flatten_metrics(measurements, 'aggregator/'),
              **{f'federation/bytes_{k}_per_node': v for k, v in self._federation.traffic.items()}}
    if values.get('train/clipped_coordinates'):
      self._federation.log(f'round {round_num}: {values["train/clipped_coordinates"]:g} update coordinates'
                            ' were clipped to config.federation.clipping_range before secure aggregation.')
    return state, values, took_part

  def _updates(self, headers: dict, arrays: list[np.ndarray], template, round_num: int):
    """(verified replies, the `ClientResult`s to aggregate): one per node, or their secure mean."""
    if self._secure is None:
      replies = self._federation.ask(node_lib.TRAIN, headers, arrays, required=False)
      replies = self._accepted(replies, [np.shape(t) for t in tf.nest.flatten(template)], round_num)
      return replies, [_client_result(template, replies[n]) for n in headers if n in replies]
    replies, mean = self._federation.ask_secure(headers, arrays, settings=self._secure, round_num=round_num)
    if mean is None:
      return {}, []
    self._check_secure(replies, mean, round_num)
    # K copies of the mean of K updates: their mean is it and their sum is the updates' sum, and
    # clipping leaves each copy as it is (the mean of updates clipped at the nodes is within the
    # clip), so the aggregator (a mean, or gaussian_fixed's clip, sum and noise) takes the same step.
    update = tf.nest.pack_sequence_as(template, [np.asarray(m, np.float32) for m in mean])
    return replies, [tff.learning.templates.ClientResult(update=update, update_weight=np.float32(1.0))
                     for _ in replies]

  def _accepted(self, replies: dict[str, messages.Message], shapes, round_num: int) -> dict[str, messages.Message]:
    """The replies whose update may be aggregated; each other one dropped from the round, in one line."""
    accepted, keys = {}, metric_keys(replies.values())
    for name, reply in replies.items():
      problem = (update_problem(reply, bound=self._weight_bounds[name], shapes=shapes)
                 or metrics_problem(reply, keys))
      if problem:
        self._federation.log(f'round {round_num}: node {name}: {problem}: its update is refused and dropped'
                             ' from the round.')
      else:
        accepted[name] = reply
    return accepted

  def _check_secure(self, replies: Mapping[str, messages.Message], mean: list[np.ndarray], round_num: int) -> None:
    """Refuses a round whose securely summed updates the nodes' weights or clip cannot have made.

    Their updates are already in the sum: a node's wrong weight or update
    discards the round, which stops where it can resume.
    """
    stop = (f'the round is refused, nothing is exported, and the run stopped at its last checkpoint'
            f' (round {round_num - 1}): rerun the same command to resume.')
    for name, reply in sorted(replies.items()):
      weight = reply.header.get('update_weight')
      if not isinstance(weight, (int, float)) or not 0 < weight <= self._weight_bounds[name]:
        raise errors.RunFailed(f'round {round_num}: node {name} claims update weight {weight!r}, beyond its'
                               f' census entry ({self._weight_bounds[name]:g}); {stop}')
    if self._sum_bound is None:
      return
    # Both clipped modes weigh every update 1 (DP needs uniform weighting): the sum is K times the mean.
    total = len(replies) * float(np.sqrt(sum(np.sum(np.square(m, dtype=np.float64)) for m in mean)))
    limit = self._sum_bound.limit(len(replies), sum(int(np.size(m)) for m in mean), self._secure.clipping_range)
    if not total <= limit:  # Also when NaN.
      raise errors.RunFailed(
          f'round {round_num}: the securely summed updates of {len(replies)} nodes have L2 norm {total:.4g},'
          f' beyond the {limit:.4g} that {self._sum_bound.what} allows: a node sent an update outside its'
          f' clip (a non-finite value, which SecAgg+ makes finite, or a modified node); {stop}')

  def evaluate(self, weights, per_institution: bool) -> dict:
    # The run named too (as in every request of a run), for the nodes' answers logs.
    headers = {n: {**self._plan, 'run': self._federation.run_id, 'index': i} for i, n in enumerate(self.names)}
    replies = self._federation.ask(node_lib.EVALUATE, headers, _flat(weights), required=False)
    if len(replies) < self._federation.min_nodes:
      raise errors.RunFailed(f'evaluation: {len(replies)} nodes answered, fewer than the minimum'
                             f' {self._federation.min_nodes}.')
    states = {n: _metric_state(replies[n]) for n in self.names if n in replies}
    if self._evaluator is None:
      self._evaluator = evaluation.LocalEvaluator(self._model_fn)
    result = self._evaluator.pool(states, per_institution=per_institution)
    missing = [n for n in self.names if n not in replies]
    if missing:  # Pooled over the nodes that answered only: said where the metrics are.
      result['not_evaluated'] = missing
    return result


  def score_histogram(self, weights, request: quantiles.HistogramRequest) -> np.ndarray:
    """The nodes' histograms of their training scores, summed.

    A DP pass needs every node's noise share (each is sized σ/√K, for all K
    of the census); an exact one goes on without a lost node, the threshold
    then flagging the budget of the answering nodes' rows.
    """
    headers = {n: {**self._plan, 'run': self._federation.run_id, 'index': i, 'histogram': request.to_dict()}
               for i, n in enumerate(self.names)}
    replies = self._federation.ask(node_lib.SCORES, headers, _flat(weights), required=False)
    missing = [n for n in self.names if n not in replies]
    if missing and request.stddev:
      raise errors.RunFailed(
          f'alert threshold: no histogram from {", ".join(missing)}; each DP pass sums every node\'s noise'
          ' share, so without it the threshold would have less noise than its ε counts: rerun the same command'
          ' once the node is back (the trained rounds are checkpointed).')
    self._enough('alert threshold', replies)
    return np.sum([r.arrays[0] for r in replies.values()], axis=0)

  def _enough(self, step: str, replies: Mapping[str, messages.Message]) -> None:
    if len(replies) < self._federation.min_nodes:
      raise errors.RunFailed(f'{step}: {len(replies)} nodes answered, fewer than the minimum'
                             f' {self._federation.min_nodes} (--min_nodes); rerun the same command once nodes'
                             ' are back.')

  def alert_metrics(self, weights, threshold: Optional[float], budgets: tuple[float, ...]) -> dict:
    """Each node's test alert metrics; pooled from their binned scores (`evaluation.combined`)."""
    headers = {n: {**self._plan, 'run': self._federation.run_id, 'index': i, 'threshold': threshold,
                   'budgets': list(budgets)}
               for i, n in enumerate(self.names)}
    replies = self._federation.ask(node_lib.ALERTS, headers, _flat(weights), required=False)
    self._enough('test alerts', replies)
    answered = [n for n in self.names if n in replies]
    counts = lambda header, key: None if header.get(key) is None else tuple(header[key])
    ranked = [evaluation.Ranked(positives=r.arrays[0], rows=r.arrays[1], alerted=counts(r.header, 'alerted'),
                                validated=counts(r.header, 'validated'))
              for r in (replies[n] for n in answered)]
    result = {'pooled': evaluation.ranked_metrics(evaluation.combined(ranked), budgets=budgets),
              'institutions': {n: replies[n].header['metrics'] for n in answered},
              'pooled_ranking': f'scores binned in {evaluation.RANKING_BINS} log-score bins at the nodes'}
    if len(answered) < len(self.names):  # Pooled over the nodes that answered only: said where the metrics are.
      result['not_evaluated'] = [n for n in self.names if n not in replies]
    return result


def _run_id(root: str) -> str:
  """This run's id, kept in its workdir so that a resumed run keeps it (nodes order rounds by run)."""
  path = os.path.join(root, 'federation_run_id')
  if not os.path.exists(path):
    io.write_text(path, secrets.token_hex(16) + '\n')
  with open(path) as f:
    return f.read().strip()


def _mean_bytes(blobs) -> float:
  blobs = list(blobs)
  return sum(map(len, blobs)) / max(len(blobs), 1)


def _flat(weights) -> list[np.ndarray]:
  return [np.asarray(w) for w in tf.nest.flatten(weights)]


def _client_result(template, reply: messages.Message):
  return tff.learning.templates.ClientResult(
      update=tf.nest.pack_sequence_as(template, list(reply.arrays)),
      update_weight=np.float32(reply.header['update_weight']))


# Metrics that add up over institutions; the others are averaged, weighted by examples.
_SUMMED = ('num_examples', 'num_batches', 'steps', 'sampled_examples', 'positives')


def _train_metrics(per_node: Sequence[dict]) -> dict[str, float]:
  """The round's training metrics over the nodes that took part (`train/...`)."""
  weights = np.array([m.get('num_examples', 1.0) for m in per_node], np.float64)
  out = {}
  for key in per_node[0]:
    values = np.array([m[key] for m in per_node], np.float64)
    total = values.sum() if key in _SUMMED else float(values @ weights / max(weights.sum(), 1.0))
    out[f'train/{key}'] = float(total)
  return out


def _statistics_answer(reply: messages.Message):
  if 'candidates' in reply.header:
    return reply.header['candidates']
  return dict(zip(reply.header['keys'], reply.arrays))


def _metric_state(reply: messages.Message) -> dict:
  state, offset = {}, 0
  for name, count in reply.header['layout']:
    state[name] = list(reply.arrays[offset:offset + count])
    offset += count
  return state


def _jsonable(value):
  """JSON-ready: tuples as lists, numpy scalars as floats."""
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value

"""An institution's node: its own rows, its own client code, answers to signed requests.

A node runs at its institution and is the only process that reads its
rows. The coordinator sends signed messages (`messages`), never code:

    hello        -> the node's schema, sizes (rows, positives, DP units) and
                    label values, which the coordinator checks all nodes share
    statistics   -> its answer to a `features.Request` (DP noise share added here)
    prepare      -> once the run's plan is set (feature space, census, noise),
                    before round 1: it builds its client work for that plan
                    and checks its census entry, so round 1 is not its build
    train        -> its update from the signed global model, with the client
                    work installed here (FedAvg, or DP-SGD with its own secret
                    sample and noise), for the round and index in the plan;
                    with secure aggregation (config.federation) the update
                    leaves only masked by SecAgg+ (`handle_secure`), beside
                    the signed reply, and never in the clear
    evaluate     -> its unfinalized test metrics (counts and sums, no rows)
    scores       -> its histogram of its training rows' log-scores under the
                    signed model (`quantiles.answer`, DP noise share added
                    here): one pass of the alert threshold's search
    alerts       -> its test rows' alert metrics, and their scores binned
                    (`evaluation.binned`) for the pooled ranking
    deliver      -> at the end of a run: the coordinator's signed export, this
                    node's own metrics and the privacy statement, kept in its
                    workdir once the package verifies (`delivery.Inbox`)

Every request carries the hash of the agreed config (`agreement`); a node
refuses one whose hash differs from its operator's config, a request its
coordinator did not sign, and a training round older than one it already
served. Each reply is signed with the node's key and names the request it
answers. With an answers log (`status.AnswerLog`) each answer or refusal is
recorded there first: what was asked, whether the answer carried DP noise,
and the ε its rows have spent by its own count.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Iterator, Optional

import ml_collections
import numpy as np
import tensorflow as tf

from tffaml import errors
from tffaml import features
from tffaml import io
from tffaml.data import csv_dir
from tffaml.data import federated_data
from tffaml.data import loading
from tffaml.data import schema as schema_lib
from tffaml.data import transactions
from tffaml.federated import client_data
from tffaml.federated import dp_sgd
from tffaml.federated import processes
from tffaml.federated import quantiles
from tffaml.consortium import delivery
from tffaml.consortium import messages
from tffaml.consortium import status as status_lib
from tffaml.models import canaries
from tffaml.privacy import accounting
from tffaml.training import evaluation
from tffaml.config import builders as config_builders
from tffaml.config import checks as config_checks
from tffaml.config import data as config_data
from tffaml.config import plan as config_plan

HELLO, STATISTICS, TRAIN, EVALUATE, SCORES, ALERTS = 'hello', 'statistics', 'train', 'evaluate', 'scores', 'alerts'
DELIVER = 'deliver'
# Sent once a run's plan is known, before round 1: the node builds (traces) its client work then,
# beside the coordinator's own build, instead of inside round 1's reply time.
PREPARE = 'prepare'
KINDS = (HELLO, STATISTICS, PREPARE, TRAIN, EVALUATE, SCORES, ALERTS, DELIVER)
REFUSED = 'refused'
# Where a config may differ between parties: where each one's rows (or none) are.
_LOCAL_KEYS = ('source', 'dir', 'schema_file', 'path')


def reply_kind(kind: str) -> str:
  return f'{kind}_reply'


def agreement(config: ml_collections.ConfigDict, schema: schema_lib.Schema) -> str:
  """The hash of what the parties agree on: the config (but where rows live) and the schema."""
  value = json.loads(config.to_json_best_effort())
  for key in _LOCAL_KEYS:
    value['data'].pop(key, None)
  value['privacy'].pop('noise_seed', None)  # Each party's own secret.
  text = json.dumps({'config': value, 'schema': schema.to_dict()}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def clip_for_secure_sum(config: ml_collections.ConfigDict, update: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
  """The update as it enters a secure sum: clipped to config.aggregator.clip (L2) under gaussian_fixed.

  The coordinator's DP aggregator would clip each update the same way
  (TFF's global L2 norm); under secure aggregation it sees only the sum.
  """
  if config.aggregator.type != 'gaussian_fixed':
    return update
  clipped, _ = tf.clip_by_global_norm([tf.constant(a) for a in update], config.aggregator.clip)
  return tuple(np.asarray(a) for a in clipped)


class Ledger:
  """What a node has released under each agreed config: its own guard on its rows' privacy budget.

  A node's DP noise is seeded (so that a resumed coordinator gets the same
  update again), which makes two answers with the same seed and different
  inputs dangerous: their difference has no noise. So, per agreed config,
  a node with a secret noise seed
    * serves one coordinator run: the config's ε is one run's (statistics
      and config.federated.rounds rounds); a second run would spend more;
    * answers a release again (a training round, a statistics release)
      only for the same input (the same global model, the same request),
      which gives the same answer and costs nothing.
  Kept in `path` (JSON) when given, so that it outlives the process.
  """

  def __init__(self, path: Optional[str] = None):
    self._path = path
    self._entries: dict[str, dict] = {}  # agreement -> {'run': id, 'released': {release: input digest}}
    if path and os.path.exists(path):
      with open(path) as f:
        self._entries = json.load(f)

  def check(self, agreement: str, run: str, release: str, digest: str) -> None:
    """Refuses a release of another run, or one already made from another input."""
    entry = self._entries.get(agreement)
    if entry is None:
      return
    if entry['run'] != run:
      raise messages.Refused(
          f'this node already served coordinator run {entry["run"][:12]}… under this config: its privacy'
          f' budget (the config\'s ε) is spent; it serves no other run{self._where()}.')
    if entry['released'].get(release, digest) != digest:
      raise messages.Refused(
          f'{release} was already answered for another input; answering it again would reuse its DP'
          ' noise (the difference of the two answers would have none).')

  def add(self, agreement: str, run: str, release: str, digest: str) -> None:
    entry = self._entries.setdefault(agreement, {'run': run, 'released': {}})
    if entry['released'].get(release) != digest:
      entry['released'][release] = digest
      if self._path:
        io.write_json(self._path, self._entries)

  def _where(self) -> str:
    return f' (to grant a new budget, its operator removes {self._path})' if self._path else ''


def _digest(request: messages.Message) -> str:
  """A request's whole input: its header (plan, index, parameters) and its arrays (the global model)."""
  h = hashlib.sha256(json.dumps(request.header, sort_keys=True).encode())
  for a in request.arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class SecureUpdate:
  """A node's answer for secure aggregation: its signed reply, and apart from it what SecAgg+ masks."""

  reply: bytes  # Signed; a train reply's header only (metrics, weight), or a refusal.
  update: tuple[np.ndarray, ...]  # Empty when refused.
  weight: int  # The update's weight in the secure mean (1 when unweighted).


@dataclasses.dataclass(frozen=True)
class _Work:
  """What the node builds from the plan's feature space and census (cached per plan)."""

  model_fn: Callable[[], Any]
  template: Any  # tff.learning.models.ModelWeights: the layout of the weights sent.
  parts: Any  # processes.Parts: only the client work runs here.
  work: config_builders.ClientWork
  plan: Any
  evaluate: evaluation.LocalEvaluator  # Its metric state of the weights sent, on its test rows.
  test: Any  # The test split as batches.
  scores: client_data.Scorer  # The model's scores of this institution's rows.


def own_rows(config: ml_collections.ConfigDict, schema: schema_lib.Schema, *, folder: str = '',
             bank: str = '') -> federated_data.Institution:
  """A node's rows: bank `bank`'s of the AMLworld file config.data.path, or `folder`'s {train,test}.csv."""
  return _own_rows_and_labels(config, schema, folder=folder, bank=bank)[0]


def _own_rows_and_labels(config: ml_collections.ConfigDict, schema: schema_lib.Schema, *, folder: str,
                         bank: str) -> tuple[federated_data.Institution, dict[str, str]]:
  """`own_rows`, and the label values its files hold ({normalised: as written}; {} for AMLworld's).

  Its two files are checked to agree here; only the coordinator sees every
  node's values (`schema.check_label_agreement`), unless the schema names both.
  """
  if config_data.data_source(config) is loading.Source.AMLWORLD:
    if not bank:
      raise errors.InputError('an AMLworld node needs its bank code (scripts/node.py --bank).')
    with errors.named_as(config_data.DATA_KEYS):
      return transactions.load_bank(config_data.data_spec(config).selection, bank), {}
  institution, sightings = csv_dir.read_institution(folder, schema)
  return institution, {value: text for s in sightings for value, (text, _) in s.values.items()}


class Node:
  """One institution's side of the federation (transport-free: `handle` takes and returns bytes)."""

  def __init__(self, config: ml_collections.ConfigDict, *, key: messages.PrivateKey,
               coordinator_key: messages.PublicKey, noise_seed: int, folder: str = '', bank: str = '',
               ledger: Optional[Ledger] = None, log: Callable[[str], None] = print,
               inbox: Optional[delivery.Inbox] = None, answers: Optional[status_lib.AnswerLog] = None):
    """Checks the config and loads the institution's rows (`own_rows`).

    `ledger`: the rounds it served (in memory only when None); `inbox`: where
    it keeps a delivered model (none: it refuses deliveries); `answers`: its
    append-only log of what it answered (none: not logged).
    """
    self._config, self._choices = config, config_checks.parse_choices(config)
    self._schema = config_data.agreed_schema(config)
    config_checks.check_model_fits(config, self._choices, self._schema)
    self.institution, self._labels = _own_rows_and_labels(config, self._schema, folder=folder, bank=bank)
    self.name = self.institution.name
    if config_data.canary_records(config):  # A canary audit: the agreed config says who holds the canaries.
      self.institution = config_data.audited_institution(
          config, self.institution, self._schema, holds=config.canary_audit.institution == self.name)
    self.agreement = agreement(config, self._schema)
    self._codes = dp_sgd.unit_codes(self.institution.train)  # Each training row's DP unit.
    self._units = int(self._codes.max()) + 1
    self._key, self._coordinator_key, self._noise_seed, self._log = key, coordinator_key, noise_seed, log
    self._last_round: dict[str, int] = {}  # Per coordinator run: the latest round trained.
    self._trained: dict[str, set[int]] = {}  # Per coordinator run: the rounds trained.
    self._works: dict[str, _Work] = {}
    self._ledger = ledger or Ledger()
    self._inbox, self._answers = inbox, answers

  def handle(self, blob: bytes) -> bytes:
    """The signed reply to one signed request (a signed refusal when refused)."""
    return self._respond(blob, secure=False).reply

  def handle_secure(self, blob: bytes, *, summed_with: int) -> 'SecureUpdate':
    """A train request answered for secure aggregation: the update apart from the signed reply.

    `summed_with`: the nodes whose updates the secure sum will hold, this
    one included (what the protocol showed the node, not what the plan says).
    """
    return self._respond(blob, secure=True, summed_with=summed_with)

  def _respond(self, blob: bytes, *, secure: bool, summed_with: int = 0) -> 'SecureUpdate':
    update, weight, request = (), 0, None
    try:
      request = messages.unseal(blob, self._coordinator_key, sender='the coordinator', kinds=KINDS)
      self._check_agreement(request)
      self._check_channel(request, secure)
      if secure:
        self._check_shares(request, summed_with)
      reply = self._answer(request)
      if request.kind == TRAIN:
        self._refuse_non_finite(request, reply)
      if secure:
        reply, update, weight = self._for_masking(reply)
    except (messages.Refused, errors.Refusal) as e:
      self._log(f'refused a request: {e}')
      reply = messages.Message(REFUSED, {'reason': str(e)})
    self._record(request, reply)
    reply.header['answers'] = messages.digest(blob)
    return SecureUpdate(reply=messages.seal(reply, self._key), update=update, weight=weight)

  def _record(self, request: Optional[messages.Message], reply: messages.Message) -> None:
    """Appends what this node answers (or refuses) to its answers log, before the reply leaves."""
    if self._answers is None:
      return
    header = request.header if request is not None else {}
    entry = {'kind': request.kind if request is not None else 'unverified', 'run': header.get('run'),
             'round': header.get('round'), 'noised': False}
    if reply.kind == REFUSED:
      entry['refused'] = reply.header['reason']
    else:
      entry['noised'] = self._noised(request)
      if request.kind == TRAIN:
        entry['epsilon'] = self._epsilon_so_far(header)
    self._answers.append(entry)

  def _noised(self, request: messages.Message) -> bool:
    """Whether this node's answer carried its own DP noise (client-level DP's noise is the coordinator's)."""
    record = bool(self._config.record_dp.enabled)
    if request.kind == TRAIN:
      return record
    if request.kind == STATISTICS:
      return record and self._config.features.noise_multiplier is not None
    if request.kind == SCORES:
      return bool(request.header['histogram'].get('stddev'))
    return False

  def _epsilon_so_far(self, header: dict) -> Optional[float]:
    """The record-level ε its rows have spent in this run, by its own count of the rounds it trained."""
    plan = self._work(header).plan
    if plan.record is None:
      return None
    rounds = self._answers.rounds_trained(header['run'], header['round'])
    participation = [rounds if i == header['index'] else 0 for i in range(len(plan.record.units))]
    return float(plan.epsilons(rounds=rounds, participation=participation)['record'])

  def _refuse_non_finite(self, request: messages.Message, reply: messages.Message) -> None:
    """Sends no update, weight or metric that is not finite (NaN or Inf).

    In the clear one would spoil the model; under secure aggregation worse:
    Flower's quantizer turns a NaN into a finite value, so the coordinator
    cannot see it in the sum. Without a clip (plain FedAvg under SecAgg+)
    this refusal is all that keeps it out.
    """
    values = [reply.header['update_weight'], *reply.header['metrics'].values()]
    if all(np.all(np.isfinite(a)) for a in reply.arrays) and np.all(np.isfinite(values)):
      return
    raise messages.Refused(
        f'{self.name}: round {request.header["round"]}: its update or training metrics hold non-finite values'
        ' (NaN or Inf; its training diverged: a learning rate too large for its rows, or extreme feature'
        ' values), so it sends nothing this round.')

  def _check_channel(self, request: messages.Message, secure: bool) -> None:
    """Updates travel only the way the agreed config says: masked (SecAgg+) or in the clear."""
    if secure and request.kind != TRAIN:
      raise messages.Refused(f'{self.name}: only training rounds run through secure aggregation.')
    if request.kind == TRAIN and secure != self._config.federation.secure_aggregation:
      raise messages.Refused(
          f'{self.name}: its config sends updates {"only" if not secure else "never"} through secure'
          f' aggregation (config.federation.secure_aggregation={not secure}), and this request asks'
          f' {"for it" if secure else "for the update in the clear"}.')

  def _check_shares(self, request: messages.Message, summed_with: int) -> None:
    """Under distributed DP-SGD, refuses a sum that would hold fewer or more noise shares than planned.

    Each node adds σ/√(K - t) of the noise for the K institutions of the
    census, t = config.record_dp.tolerated_dropouts: the sum has the planned
    noise only if it holds K - t of them or more (fewer: too little noise;
    a census inflated beyond the nodes really taking part: the same).
    """
    if not (self._config.record_dp.enabled
            and self._choices.record_dp_mode is accounting.RecordDpMode.DISTRIBUTED):
      return
    planned, tolerated = len(request.header['census']), self._config.record_dp.tolerated_dropouts
    if not planned - tolerated <= summed_with <= planned:
      needed = f'{planned - tolerated} to {planned}' if tolerated else f'all {planned}'
      raise messages.Refused(
          f'{self.name}: the secure sum would hold {summed_with} institutions\' noise shares, and the'
          f' plan\'s noise counts on {needed}; distributed DP-SGD needs every planned share.')

  def _for_masking(self, reply: messages.Message) -> tuple[messages.Message, tuple[np.ndarray, ...], int]:
    """(the reply without its update, the update, its weight): SecAgg+ masks the update apart."""
    f = self._config.federation
    update = clip_for_secure_sum(self._config, reply.arrays)
    clipped = sum(int(np.sum(np.abs(a) > f.clipping_range)) for a in update)
    header = dict(reply.header, metrics={**reply.header['metrics'], 'clipped_coordinates': float(clipped)})
    weighted = self._choices.weighting is processes.Weighting.EXAMPLES
    return (messages.Message(reply.kind, header), update,
            int(round(reply.header['update_weight'])) if weighted else 1)

  def _check_agreement(self, request: messages.Message) -> None:
    if request.header.get('agreement') != self.agreement:
      raise messages.Refused(
          f'{self.name}: the plan is for another config or schema (hash'
          f' {str(request.header.get("agreement"))[:12]}…, this node accepted {self.agreement[:12]}…);'
          ' the coordinator and the nodes must run the same config file and overrides.')

  def _answer(self, request: messages.Message) -> messages.Message:
    if request.kind == HELLO:
      return messages.Message(reply_kind(HELLO), {
          'institution': self.name, 'schema': self._schema.to_dict(),
          'summary': {'institution': self.name, **federated_data.split_counts(self.institution)},
          'units': self._units, 'labels': self._labels})
    if request.kind == STATISTICS:
      return self._statistics(request.header)
    if request.kind == PREPARE:
      return self._prepare(request.header)
    if request.kind == TRAIN:
      return self._train(request)
    if request.kind == EVALUATE:
      return self._evaluate(request)
    if request.kind == SCORES:
      return self._score_histogram(request)
    if request.kind == ALERTS:
      return self._alerts(request)
    if request.kind == DELIVER:
      return self._keep(request)
    raise ValueError(f'no answer to {request.kind!r}.')

  def _statistics(self, header: dict) -> messages.Message:
    request = features.Request(header['request'])
    self._check_statistics_noise(request, header['params'])
    release = f'statistics {request.value} {header["params"].get("release")}'
    with self._releasing(header['run'], release, messages.Message(STATISTICS, header)):
      answer = features.answer(canaries.real_rows(self.institution.train), self._schema, request, header['params'],
                               noise_key=(self._run_seed(header['run']), header['index']))
    if request is features.Request.CANDIDATES:
      return messages.Message(reply_kind(STATISTICS), {'candidates': answer})
    return messages.Message(reply_kind(STATISTICS), {'keys': list(answer)}, tuple(answer.values()))

  def _check_statistics_noise(self, request: features.Request, params: dict) -> None:
    """Where its config makes the statistics DP: only the planned releases, each noised.

    A coordinator asking for a count without noise, or for a release number
    outside the plan (each would draw fresh noise and spend budget the
    statement does not count), is refused. The share's size rests on the
    census the coordinator states (as the training's does).
    """
    if not (self._config.record_dp.enabled and self._config.features.noise_multiplier is not None):
      return
    share, release = params.get('noise_share'), params.get('release')
    if request not in features.DP_RELEASES or not share or release != features.DP_RELEASES[request]:
      raise messages.Refused(
          f'{self.name}: its config makes the feature statistics DP, and this request asks for'
          f' {request.value} release {release!r} with noise share {share!r}; it answers only the planned'
          f' releases ({", ".join(f"{r.value} {n}" for r, n in features.DP_RELEASES.items())}), noised.')

  @contextlib.contextmanager
  def _releasing(self, run: str, release: str, request: messages.Message) -> Iterator[None]:
    """Checks `release` of `run`, made from `request`, against the ledger, and records it once made.

    Only where this node adds DP noise from a secret seed: without record-level
    DP it adds none, and an agreed config.privacy.noise_seed is known to the
    coordinator, which could remove the noise anyway.
    """
    if not self._config.record_dp.enabled or self._config.privacy.noise_seed is not None:
      yield
      return
    digest = _digest(request)
    self._ledger.check(self.agreement, run, release, digest)
    yield
    self._ledger.add(self.agreement, run, release, digest)

  def _run_seed(self, run: str) -> int:
    """The noise seed of coordinator run `run`: the node's secret one, fresh per run.

    A fixed config.privacy.noise_seed (research) is used as it is, so that the
    federation reproduces the simulation.
    """
    if self._config.privacy.noise_seed is not None:
      return self._noise_seed
    return config_builders.stable_seed(self._noise_seed, int(hashlib.sha256(run.encode()).hexdigest()[:15], 16))

  def _work(self, header: dict) -> _Work:
    key = json.dumps([header['space'], header['census'], header['noise']], sort_keys=True)
    if key not in self._works:
      self._works[key] = self._build(header)
    return self._works[key]

  def _build(self, header: dict) -> _Work:
    """The client work for the plan's feature space, census and noise (checked, not recalibrated)."""
    config, choices, schema = self._config, self._choices, self._schema
    census = header['census']
    own = census[header['index']]
    if (own['institution'], own['units'], own['train_rows']) != (self.name, self._units, len(self.institution.train)):
      raise messages.Refused(f'{self.name}: the plan\'s census entry {own} is not this institution\'s'
                             f' ({self._units} units, {len(self.institution.train)} training rows).')
    try:
      plan = config_plan.privacy_plan_for_census(
          config, choices, schema, census, noise=header['noise'],
          cohort=config_plan.clients_per_round(config, choices.sampling, len(census)))
    except ValueError as e:  # E.g. a noise multiplier of 0: no plan this node could train under.
      raise messages.Refused(f'{self.name}: the plan\'s noise {header["noise"]} is not a DP mechanism: {e}') from None
    config_plan.check_noise(config, plan, header['index'])
    training = config_builders.build_training(config, choices, plan, features.FeatureSpace.from_dict(
        header['space'], schema), schema, side=config_builders.Side.NODE)
    test = client_data.institution_dataset(self.institution, 'test', config_data.training_schema(config, schema),
                                           batch_size=config.federated.eval_batch_size)
    evaluator = evaluation.LocalEvaluator(training.model_fn)  # Its model gives the weights' layout too.
    work = _Work(model_fn=training.model_fn, template=evaluator.layout, work=training.work, plan=plan,
                 parts=training.parts, evaluate=evaluator, test=test,
                 scores=client_data.Scorer(training.keras_model_fn, schema))
    self._warm(work, header['index'])
    return work

  def _prepare(self, header: dict) -> messages.Message:
    """Builds (and warms, `_build`) the client work for the plan, checking its census entry and noise."""
    started = time.monotonic()
    self._work(header)
    return messages.Message(reply_kind(PREPARE), {'seconds': time.monotonic() - started})

  def _warm(self, work: _Work, index: int) -> None:
    """Runs the client work once on no rows, and traces the evaluation's forward pass.

    The first run of a TFF computation and the first trace cost seconds each,
    which round 1 would otherwise carry; on no rows nothing is sampled into
    the run, noised or sent. Done as the work is built: Keras models made
    since (TFF makes them in graph mode) would leave this one's class v1.
    """
    # Only the dataset's type is used (take(0)): no row of the throwaway sample (seed 0) reaches the run.
    dataset = config_builders.client_dataset(self._config, work.work, work.plan, self._schema, self.institution,
                                             index=index, round_num=0, noise_seed=0)
    work.parts.client_update(work.template, dataset.take(0))
    work.evaluate.trace(work.test.element_spec)

  def _train(self, request: messages.Message) -> messages.Message:
    run, round_num = request.header['run'], request.header['round']
    if round_num < self._last_round.get(run, 0):
      raise messages.Refused(f'{self.name}: round {round_num} is stale (this node already trained round'
                             f' {self._last_round[run]} of this run); a replayed or out-of-date plan.')
    work = self._work(request.header)
    weights = tf.nest.pack_sequence_as(work.template, list(request.arrays))
    with self._releasing(run, f'round {round_num}', request):
      dataset = config_builders.client_dataset(
          self._config, work.work, work.plan, self._schema, self.institution,
          index=request.header['index'], round_num=round_num, noise_seed=self._run_seed(run))
      result, measurements = work.parts.client_update(weights, dataset)
    self._last_round[run] = round_num
    self._trained.setdefault(run, set()).add(round_num)
    self._log(f'{self.name}: trained round {round_num}{self._spent(work.plan, run, request.header["index"])}')
    return messages.Message(
        reply_kind(TRAIN),
        {'round': round_num, 'update_weight': float(result.update_weight),
         'metrics': _scalars(measurements['train'])},
        tuple(np.asarray(u) for u in tf.nest.flatten(result.update)))

  def _spent(self, plan, run: str, index: int) -> str:
    """Once the run's last round is trained: the record-level ε this node's rows spent, by its own count."""
    rounds = len(self._trained[run])
    if plan.record is None or rounds < self._config.federated.rounds:
      return ''
    participation = [rounds if i == index else 0 for i in range(len(plan.record.units))]
    epsilon = plan.epsilons(rounds=rounds, participation=participation)['record']
    return (f'; all {rounds} rounds served: its rows\' record-level ε = {epsilon:.4g} at δ = {plan.delta:g}'
            ' (this node\'s own count)')

  def _evaluate(self, request: messages.Message) -> messages.Message:
    work = self._work(request.header)
    weights = tf.nest.pack_sequence_as(work.template, list(request.arrays))
    state = work.evaluate.state(weights, work.test)
    return messages.Message(reply_kind(EVALUATE), {'layout': [[k, len(v)] for k, v in state.items()]},
                            tuple(a for parts in state.values() for a in parts))


  def _score_histogram(self, request: messages.Message) -> messages.Message:
    """One pass of the alert threshold's search over its training rows, its share of the noise added."""
    work, header = self._work(request.header), request.header
    asked = quantiles.HistogramRequest(**header['histogram'])
    self._check_threshold_noise(asked, work.plan.statistics)
    train = self.institution.train
    with self._releasing(header['run'], f'alert threshold {asked.release}', request):
      scores = work.scores(tf.nest.pack_sequence_as(work.template, list(request.arrays)), 'train', lambda: train)
      histogram = quantiles.answer(scores, self._codes, asked, institutions=len(header['census']),
                                   seed=self._run_seed(header['run']), index=header['index'])
    return messages.Message(reply_kind(SCORES), {}, (histogram,))

  def _check_threshold_noise(self, asked: quantiles.HistogramRequest, statistics) -> None:
    """Under DP statistics, only the threshold's planned passes, with the planned noise and unit cap."""
    if statistics is None:
      return  # No DP statistics: the threshold is exact, and the statement says it is not covered.
    planned = range(quantiles.FIRST_RELEASE, quantiles.FIRST_RELEASE + statistics.alert_passes)
    if asked.release not in planned or asked.stddev < statistics.alert_stddev or asked.cap != statistics.alert_rows:
      raise messages.Refused(
          f'{self.name}: the alert threshold\'s pass {asked.release} with noise {asked.stddev:g} and unit cap'
          f' {asked.cap} is not the plan\'s (passes {list(planned)}, noise {statistics.alert_stddev:g}, cap'
          f' {statistics.alert_rows}).')

  def _alerts(self, request: messages.Message) -> messages.Message:
    """Its test rows' alert metrics, and their scores binned for the federation's pooled ranking."""
    work, header = self._work(request.header), request.header
    test = self.institution.test
    labels = test[schema_lib.LABEL_COLUMN].to_numpy()
    scores = work.scores(tf.nest.pack_sequence_as(work.template, list(request.arrays)), 'test', lambda: test)
    budgets = tuple(header['budgets'])
    # Its validation threshold is its own: chosen here on its exact scores, as the agreed config says.
    fraction = self._config.evaluation.validation_fraction
    binned = evaluation.binned(labels, scores, header['threshold'], fraction)
    exact = dataclasses.replace(evaluation.ranked(labels, scores, header['threshold']), validated=binned.validated)
    return messages.Message(reply_kind(ALERTS), {
        'metrics': evaluation.ranked_metrics(exact, budgets=budgets),
        'alerted': binned.alerted, 'validated': binned.validated}, (binned.positives, binned.rows))


  def _keep(self, request: messages.Message) -> messages.Message:
    """Keeps the delivered model, its own metrics and the statement in its workdir (`delivery.Inbox`)."""
    if self._inbox is None:
      raise messages.Refused(f'{self.name}: this node keeps no delivered model (it runs without a workdir).')
    if request.header.get('institution') != self.name:
      raise messages.Refused(f'{self.name}: the delivery is addressed to {request.header.get("institution")!r},'
                             ' with that institution\'s metrics; nothing was kept.')
    kept = self._inbox.keep(request, self.name)
    self._log(f'{self.name}: the model of run {str(request.header.get("run"))[:12]}… verified and {kept}')
    return messages.Message(reply_kind(DELIVER), {'kept': kept})


def _scalars(metrics) -> dict:
  return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}

"""The coordinator's runtime: the same training program, with the rows at the nodes.

`Federation` is a `program.Runtime`: `program.run(config, workdir,
runtime=Federation(...))` runs the round loop, privacy ledger, checkpoints,
metrics and signed export of the simulation, while every computation on rows
happens at the institutions' nodes (`node.Node`), reached through a
`Transport` (Flower between machines, `InProcessTransport` in tests). The
coordinator runs TFF's aggregator (client-level DP, robust aggregation) and
the server optimizer on the updates the nodes send, on the same state as the
simulation, so with the same seeds and no noise the two give the same model.

What the coordinator sees (without secure aggregation): each node's sizes
(rows, positives, DP units), its answers to the statistics requests (its
candidate category values, and histograms and sums: noised under DP), each
round's update of each node in the cohort, and each node's test metric
counts. Under distributed record-level DP each update carries only a share
of the noise, so the record-level ε holds against the coordinator only with
secure aggregation; against everyone who sees the released model it holds
as stated.
"""

import dataclasses
import os
import secrets
from typing import Callable, Mapping, Optional, Protocol, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import errors
from tffaml import features
from tffaml import io
from tffaml.data import schema as schema_lib
from tffaml.federated import processes
from tffaml.federation import messages
from tffaml.federation import node as node_lib
from tffaml.privacy import accounting
from tffaml.training import evaluation
from tffaml.training import experiment
from tffaml.training import program


class Transport(Protocol):
  """Delivers signed requests to named nodes and returns their signed replies."""

  def exchange(self, requests: Mapping[str, bytes]) -> dict[str, bytes]:
    """Each node's reply; a node that did not answer is missing from the result."""


class InProcessTransport:
  """Nodes in this process (tests, and a coordinator's own checks): `Node.handle` called directly."""

  def __init__(self, nodes: Sequence[node_lib.Node]):
    self._nodes = {n.name: n for n in nodes}

  def exchange(self, requests: Mapping[str, bytes]) -> dict[str, bytes]:
    return {name: self._nodes[name].handle(blob) for name, blob in requests.items()}


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


def check(config: ml_collections.ConfigDict) -> None:
  """Refuses what needs rows in the coordinator's process, before any work."""
  needs_rows = {
      'config.model.alert_budget': config.model.alert_budget,
      'config.evaluation.alert_budgets': tuple(config.evaluation.alert_budgets),
      'config.reference.centralized_epochs': config.reference.centralized_epochs,
      'config.data.stream': config.data.stream,
  }
  for key, value in needs_rows.items():
    if value:
      raise errors.ConfigError(f'{key}={value!r} needs the rows in one process; a federation runs'
                               f' without it: set {key} to its empty value, or use scripts/train.py.')
  if config.attack.type != 'none':
    raise errors.ConfigError("config.attack.type simulates attackers in one process; set it to 'none'.")
  if experiment.parse_choices(config).algorithm is not processes.Algorithm.FEDAVG:
    raise errors.ConfigError(
        f'config.federated.algorithm={config.federated.algorithm!r} is built whole by TFF and runs only in'
        " simulation; use 'fedavg' (FedAdam and FedYogi are fedavg with a server optimizer).")


class Federation:
  """`program.Runtime` whose institutions are nodes behind `transport`."""

  def __init__(self, transport: Transport, *, key: messages.PrivateKey,
               node_keys: Mapping[str, messages.PublicKey], min_nodes: int = 1,
               log: Callable[[str], None] = print):
    """`node_keys`: each registered institution's public key, by name; `min_nodes` per round."""
    self._transport, self._key, self._node_keys = transport, key, dict(sorted(node_keys.items()))
    self.min_nodes, self._log = min_nodes, log
    self._agreement: Optional[str] = None
    self.names: list[str] = list(self._node_keys)  # The federation's order: institution indices.
    self.traffic = {'sent': 0.0, 'received': 0.0}  # Mean bytes per node of the last exchange.
    self.run_id = ''  # Set by `load` (kept in the workdir).

  def check(self, config: ml_collections.ConfigDict) -> None:
    check(config)
    schema = schema_lib.Schema.from_json(config.data.schema_file)
    self._agreement = node_lib.agreement(config, schema)

  def ask(self, kind: str, headers: Mapping[str, dict], arrays: Sequence[np.ndarray] = (), *,
           required: bool = True) -> dict[str, messages.Message]:
    """Sends `kind` to the nodes in `headers`; their verified replies (all of them if `required`)."""
    requests = {name: messages.seal(messages.Message(kind, {**h, 'agreement': self._agreement},
                                                     tuple(arrays)), self._key)
                for name, h in headers.items()}
    replies, problems = {}, {}
    answers = self._transport.exchange(requests)
    self.traffic = {'sent': sum(map(len, requests.values())) / max(len(requests), 1),
                    'received': sum(map(len, answers.values())) / max(len(answers), 1)}
    for name, blob in answers.items():
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
      self._log(f'{kind}: node {name}: {problem}')
    if problems and required:
      raise errors.RunFailed(f'{kind}: ' + '; '.join(f'node {n}: {p}' for n, p in sorted(problems.items())))
    return replies

  def load(self, config: ml_collections.ConfigDict, paths: program.Paths, *, log) -> Roster:
    del log
    self.run_id = _run_id(paths.root)
    replies = self.ask(node_lib.HELLO, {n: {} for n in self.names})
    schema = schema_lib.Schema.from_json(config.data.schema_file)
    for name, reply in replies.items():
      if reply.header['institution'] != name:
        raise errors.RunFailed(f'node {name} says it is {reply.header["institution"]!r}.')
    ordered = [replies[n] for n in self.names]
    return Roster(schema=schema, institutions=tuple(_Member(n) for n in self.names),
                  summaries=tuple(r.header['summary'] for r in ordered),
                  census=tuple({'institution': r.header['institution'], 'units': r.header['units'],
                                'train_rows': r.header['summary']['train_rows']} for r in ordered))

  def census(self, data: Roster) -> list[dict]:
    return list(data.census)

  def feature_space(self, config: ml_collections.ConfigDict, data: Roster, noise) -> features.FeatureSpace:
    def ask(request: features.Request, params: dict) -> list:
      headers = {n: {'request': request.value, 'params': params, 'index': i} for i, n in enumerate(self.names)}
      replies = self.ask(node_lib.STATISTICS, headers)
      return [_statistics_answer(replies[n]) for n in self.names]
    return experiment.feature_space(config, data, noise, ask=ask)

  def build(self, config, choices: experiment.Choices, setup, space: features.FeatureSpace,
            noise_seed: int) -> program.Built:
    training = experiment.build_training(config, choices, setup.plan, space, setup.data.schema,
                                         side=experiment.Side.COORDINATOR, cohort=setup.cohort,
                                         noise_seed=noise_seed)
    plan = {'space': _jsonable(space.to_dict()), 'census': self.census(setup.data),
            'noise': setup.plan.noise_multipliers()}
    rounds = _Rounds(self, training.parts, training.model_fn, plan)
    return program.Built(keras_model_fn=training.keras_model_fn, process=training.process,
                         train_round=rounds.train_round, evaluate=rounds.evaluate,
                         aggregation=accounting.Aggregation.VISIBLE_UPDATES)


class _Rounds:
  """A round and an evaluation over the nodes."""

  def __init__(self, federation: Federation, parts, model_fn, plan: dict):
    self._federation, self._parts, self._model_fn, self._plan = federation, parts, model_fn, plan
    self._finalize = None  # Built at the first evaluation, from a state's type.
    self.names = federation.names

  def train_round(self, state, members: list[int], round_num: int):
    weights = state.global_model_weights
    headers = {self.names[i]: {**self._plan, 'run': self._federation.run_id, 'round': round_num, 'index': i}
               for i in members}
    replies = self._federation.ask(
        node_lib.TRAIN, headers, _flat(weights), required=False)
    took_part = [i for i in members if self.names[i] in replies]
    if len(took_part) < self._federation.min_nodes:
      raise errors.RunFailed(
          f'round {round_num}: {len(took_part)} of {len(members)} nodes sent an update, fewer than the'
          f' minimum {self._federation.min_nodes}; the run stopped at its last checkpoint'
          f' (round {round_num - 1}); rerun the same command to resume once nodes are back.')
    ordered = [replies[self.names[i]] for i in took_part]
    template = weights.trainable
    results = [_client_result(template, r) for r in ordered]
    state, measurements = self._parts.server_update(state, results)
    values = {**_train_metrics([r.header['metrics'] for r in ordered]),
              **program.flatten_metrics(measurements, 'aggregator/'),
              **{f'federation/bytes_{k}_per_node': v for k, v in self._federation.traffic.items()}}
    return state, values, took_part

  def evaluate(self, weights, per_institution: bool) -> dict:
    headers = {n: {**self._plan, 'index': i} for i, n in enumerate(self.names)}
    replies = self._federation.ask(node_lib.EVALUATE, headers, _flat(weights), required=False)
    if len(replies) < self._federation.min_nodes:
      raise errors.RunFailed(f'evaluation: {len(replies)} nodes answered, fewer than the minimum'
                             f' {self._federation.min_nodes}.')
    states = {n: _metric_state(replies[n]) for n in self.names if n in replies}
    if self._finalize is None:
      self._finalize = evaluation.build_finalize(self._model_fn, next(iter(states.values())))
    result = {'pooled': self._finalize(list(states.values()))}
    if per_institution:
      result['institutions'] = {n: self._finalize([s]) for n, s in states.items()}
    missing = [n for n in self.names if n not in replies]
    if missing:  # Pooled over the nodes that answered only: said where the metrics are.
      result['not_evaluated'] = missing
    return result


def _run_id(root: str) -> str:
  """This run's id, kept in its workdir so that a resumed run keeps it (nodes order rounds by run)."""
  path = os.path.join(root, 'federation_run_id')
  if not os.path.exists(path):
    io.write_text(path, secrets.token_hex(16) + '\n')
  with open(path) as f:
    return f.read().strip()


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

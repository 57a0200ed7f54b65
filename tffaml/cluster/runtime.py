"""`program.Runtime` over TFF workers on several machines: a simulation larger than one machine.

Each worker (`scripts/worker.py`) holds some institutions' files. A round's
cohort is split by which worker holds each institution; TFF's mergeable form
of the round (`compile_to_mergeable_comp_form(process.next)`) runs its
`up_to_merge` on each worker holding a member, in parallel, and its `merge`
and `after_merge` (the aggregation's last step and the server update, DP
noise included) here. TFF's own mergeable context is not used: it cuts the
client list into chunks in order and runs the merge and server step on
whichever worker finishes last, where that worker would see the others'
partial sums.

What travels: to a worker, the server state with every DP noise seed zeroed
(`workdir.redact`: the noise is drawn here) and, per member, a small value
(its file's name and shuffle seed, or DP-SGD's sampled rows) that one
computation opens into its dataset there (`clients`); back, the worker's
partial aggregate (sums over its members of updates and metrics).
Evaluation the same way, with the model's weights. The institutions' rows
never leave their worker. The worker's description of its files
(`worker.json`) is read by a TFF graph too: no other channel is used.

Secure sums run as the plain sums they compute: the workers are one
researcher's machines, not institutions (for those, see tffaml.consortium).
"""

import asyncio
import dataclasses
import json
import time
from typing import Any, Optional, Sequence

import grpc
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.backends.native import compiler as native_compiler
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub
from tensorflow_federated.python.core.impl.types import type_conversions

from tffaml import errors
from tffaml import features
from tffaml.cluster import clients
from tffaml.cluster import statistics
from tffaml.security import tls
from tffaml.cluster import worker as worker_lib
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.data import shards
from tffaml.federated import processes
from tffaml.training import evaluation
from tffaml.config import builders as config_builders
from tffaml.config import checks as config_checks
from tffaml.config import data as config_data
from tffaml.training import program
from tffaml.training import workdir as workdir_lib


class _Context(async_execution_context.AsyncExecutionContext):
  """TFF's async context, making one attempt per call.

  TFF retries a call that fails with UNAVAILABLE forever, 30 s apart: a dead
  worker would hang the run. Here the round fails, naming the worker, and
  the run resumes from its last checkpoint once the worker is back.
  """

  invoke = async_execution_context.AsyncExecutionContext.invoke.__wrapped__


class _Bytes(grpc.UnaryUnaryClientInterceptor):
  """Counts the bytes of the executor service's messages to and from one worker."""

  def __init__(self):
    self.sent = self.received = 0

  def intercept_unary_unary(self, continuation, client_call_details, request):
    self.sent += request.ByteSize()
    outcome = continuation(client_call_details, request)
    if outcome.exception() is None:
      self.received += outcome.result().ByteSize()
    return outcome


@dataclasses.dataclass
class Worker:
  """A worker's address and the TFF context that runs computations on it."""

  address: str
  context: _Context
  stub: remote_executor_grpc_stub.RemoteExecutorGrpcStub
  traffic: _Bytes


def connect(address: str, certificates: Optional[tls.ClusterTls], *, timeout: float) -> Worker:
  """A context on the worker at `address`, once it answers (errors.RunFailed after `timeout` s)."""
  traffic = _Bytes()
  channel = grpc.intercept_channel(tls.channel(address, certificates), traffic)
  stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(channel)
  deadline = time.monotonic() + timeout
  while not stub.is_ready:
    if time.monotonic() > deadline:
      raise errors.RunFailed(
          f'worker {address}: no answer after {timeout:g} s. Start it (scripts/worker.py --port=PORT'
          ' --data_dir=DIR), check config.runtime.workers and, with TLS, config.runtime.certificates.')
    time.sleep(0.1)

  def executor(cardinalities):
    cardinalities.setdefault(tff.CLIENTS, 0)
    ex = remote_executor.RemoteExecutor(stub)
    ex.set_cardinalities(cardinalities)
    return ex

  context = _Context(
      executor_fn=python_executor_stacks.ResourceManagingExecutorFactory(executor_stack_fn=executor),
      compiler_fn=native_compiler.desugar_and_transform_to_native,
      transform_args=tensorflow_computation.transform_args,
      transform_result=tensorflow_computation.transform_result)
  return Worker(address=address, context=context, stub=stub, traffic=traffic)


async def _call(worker: Worker, comp: tff.Computation, *args):
  """`comp(*args)` on `worker`; a failure is raised as errors.RunFailed naming it."""
  with tff.framework.get_context_stack().install(worker.context):
    pending = comp(*args)
  try:
    return await pending
  except (grpc.RpcError, tff.framework.RetryableError) as e:
    cause = e.code().name if isinstance(e, grpc.Call) else str(e).splitlines()[0][:200]
    raise errors.RunFailed(f'worker {worker.address} failed ({cause}); the run stops at its last checkpoint:'
                           ' restart the worker and rerun the same command to resume.') from None


@dataclasses.dataclass(frozen=True)
class Roster:
  """The institutions the workers hold: `program.Runtime.load`'s `data`."""

  schema: schema_lib.Schema
  institutions: tuple[shards.StoredInstitution, ...]  # Files relative to their worker's directory.
  holders: tuple[int, ...]  # Each institution's worker (an index into the workers).
  units: tuple[int, ...]

  def summary(self) -> list[dict]:
    return [{'institution': i.name, **i.counts} for i in self.institutions]


def roster(infos: Sequence[dict], addresses: Sequence[str], expected: Optional[schema_lib.Schema]) -> Roster:
  """The workers' `worker.json`s as one federation, in the order of the institutions' names.

  Raises:
    errors.RunFailed: the workers' schemas differ (or differ from `expected`),
      or two of them hold the same institution.
  """
  schemas = [schema_lib.Schema.from_dict(info['schema'], source=f'worker {a}') for info, a in zip(infos, addresses)]
  reference = expected or schemas[0]
  for schema, address in zip(schemas, addresses):
    if schema != reference:
      raise errors.RunFailed(f'worker {address} holds data of another schema than '
                             f'{"config.data.schema_file" if expected else "worker " + addresses[0]}.')
  held = {}
  for k, info in enumerate(infos):
    for entry in info['institutions']:
      if entry['name'] in held:
        raise errors.RunFailed(f'institution {entry["name"]!r} is on workers {addresses[held[entry["name"]][0]]}'
                               f' and {addresses[k]}; each institution must be on one worker.')
      held[entry['name']] = (k, entry)
  names = sorted(held)
  institutions = tuple(shards.StoredInstitution(n, reference, held[n][1]['train'], held[n][1]['test'],
                                                held[n][1]['counts']) for n in names)
  federated_data.FederatedData(schema=reference, institutions=institutions)  # Its checks.
  return Roster(schema=reference, institutions=institutions, holders=tuple(held[n][0] for n in names),
                units=tuple(held[n][1]['units'] for n in names))


def _read_info() -> tff.Computation:
  """`( -> string)`: the worker's `worker.json`, read in its directory."""
  return tff.tensorflow.computation(lambda: tf.io.read_file(worker_lib.INFO))


@dataclasses.dataclass(frozen=True)
class Split:
  """A computation in mergeable form, and its result's type (for the Python containers it returns)."""

  forms: Any  # tff's MergeableCompForm: up_to_merge, merge, after_merge.
  result_type: tff.Type

  @classmethod
  def of(cls, next_computation: tff.Computation, opener: clients.Opener) -> 'Split':
    """`next_computation` on the datasets `opener` opens on the workers, in mergeable form.

    Secure sums run as the plain sums they compute: the workers are not institutions.
    """
    forms = tff.backends.native.compile_to_mergeable_comp_form(
        tff.backends.test.replace_secure_intrinsics_with_bodies(clients.compose(next_computation, opener)))
    return cls(forms=forms, result_type=next_computation.type_signature.result)


def check_units(config: ml_collections.ConfigDict, schema: schema_lib.Schema) -> None:
  """Refuses record-level DP over units of several rows: the workers sample and count rows."""
  if config.record_dp.enabled and schema.unit:
    raise errors.ConfigError(
        f'config.record_dp.enabled=True with the unit column {schema.unit!r}: on TFF workers DP-SGD samples'
        ' rows (the coordinator draws the sample from row counts), not units of several rows. Drop "unit"'
        ' from the schema for record-level DP, or unset config.runtime.workers to run in one process.')


# A worker's calls at once (the statistics' one per institution): each holds
# a chunk of a file; all 50 of a 10M-row worker's at once reached 7 GB when
# they held whole files, and one at a time took 200 s.
IN_FLIGHT = 4


class Workers:
  """`program.Runtime` whose institutions' files and client work are on TFF workers."""

  def __init__(self, addresses: Sequence[str], *, certificates: Optional[tls.ClusterTls] = None,
               connect_seconds: float = 60.0):
    if not addresses:
      raise errors.ConfigError('config.runtime.workers names no worker; give host:port,host:port.')
    self.addresses = tuple(addresses)
    self._certificates, self._connect_seconds = certificates, connect_seconds
    self.workers: list[Worker] = []
    # The last round's bytes per worker (`_gather`) and seconds on the workers and in the merge (`run_round`).
    self.measured: dict[str, float] = {}

  @classmethod
  def of(cls, spec: config_checks.Cluster) -> 'Workers':
    """The workers of `spec` (`config_checks.cluster`: config.runtime)."""
    return cls(spec.addresses, certificates=tls.ClusterTls(spec.certificates) if spec.certificates else None,
               connect_seconds=spec.connect_seconds)

  def check(self, config: ml_collections.ConfigDict) -> None:
    """Refuses what the workers cannot run, before any work (errors.ConfigError)."""
    program.refuse_needing_rows(config, runtime='TFF workers', fix='unset config.runtime.workers', alerts=False)

  def connect(self, expected: Optional[schema_lib.Schema] = None) -> Roster:
    """Connects to every worker; the institutions they hold (their schema `expected`, if given)."""
    self.workers = [connect(a, self._certificates, timeout=self._connect_seconds) for a in self.addresses]
    infos = [json.loads(v) for v in asyncio.run(self._gather([(w, _read_info(), ()) for w in self.workers]))]
    return roster(infos, self.addresses, expected)

  def load(self, config: ml_collections.ConfigDict, paths: program.Paths, *, log) -> Roster:
    del paths
    data = self.connect(schema_lib.Schema.from_json(config.data.schema_file) if config.data.schema_file else None)
    check_units(config, data.schema)
    for k, address in enumerate(self.addresses):
      held = [i.name for i, h in zip(data.institutions, data.holders) if h == k]
      log(f'worker {address}: {", ".join(held) if held else "no institution"}')
    return data

  def census(self, data: Roster) -> list[dict]:
    return [{'institution': i.name, 'train_rows': i.counts['train_rows'], 'units': u}
            for i, u in zip(data.institutions, data.units)]

  def feature_space(self, config: ml_collections.ConfigDict, data: Roster, noise) -> features.FeatureSpace:
    def ask(request: features.Request, params: dict) -> list:
      calls = [(self.workers[h], statistics.computation(i.train_path, data.schema, request, params), ())
               for i, h in zip(data.institutions, data.holders)]
      answers = [statistics.as_answer(request, v) for v in asyncio.run(self._gather(calls))]
      if noise is None or request is features.Request.CANDIDATES:
        return answers
      # Each institution's share of the noise, drawn here as `features.answer` draws it.
      return [features.noised(a, params['noise_share'], (noise.seed, k), params['release'])
              for k, a in enumerate(answers)]
    return config_data.feature_space(config, data, noise, ask=ask)

  def build(self, config, choices: config_checks.Choices, setup, space, noise_seed: int) -> program.Built:
    data, schema = setup.data, setup.data.schema
    training = config_builders.build_training(config, choices, setup.plan, space, schema, side=config_builders.Side.WHOLE,
                                         cohort=setup.cohort, noise_seed=noise_seed)
    opener = clients.train_opener(config, training.work, setup.plan, schema, data.institutions,
                                  noise_seed=noise_seed)
    try:
      train_split = Split.of(training.process.next, opener)
    except (TypeError, ValueError) as e:
      raise errors.ConfigError(
          f'config.aggregator.type={config.aggregator.type!r} with config.federated.algorithm='
          f'{config.federated.algorithm!r}: the round does not split into per-worker parts and a merge'
          f' ({str(e).splitlines()[0][:200]}); choose another aggregator or unset config.runtime.workers.') from None
    eval_process = processes.build_eval_process(training.model_fn)
    tests = clients.test_opener(config, schema, data.institutions)
    eval_split = Split.of(eval_process.next, tests)
    index = {i.name: k for k, i in enumerate(data.institutions)}

    def train_round(state, members: list[int], round_num: int):
      output = self.run_round(train_split, state, {i: opener.value(i, round_num) for i in members}, data.holders)
      return output.state, {**program.flatten_metrics(output.metrics['client_work']['train'], 'train/'),
                            **program.flatten_metrics(output.metrics['aggregator'], 'aggregator/'),
                            **self.measured}, members

    def run_eval(state, names: list[str]):
      return self.run_round(eval_split, state, {index[n]: tests.value(index[n], 0) for n in names}, data.holders)

    return program.Built(
        keras_model_fn=training.keras_model_fn, process=training.process, train_round=train_round,
        evaluate=lambda weights, per_institution: evaluation.evaluate(
            eval_process, weights, index, per_institution=per_institution, run_next=run_eval))

  def run_round(self, split: Split, state, values: dict[int, Any], holders: Sequence[int]):
    """`split`'s computation of (state, the institutions' client values in index order).

    `up_to_merge` on each worker holding an institution of `values`,
    `merge` and `after_merge` here.
    """
    by_worker: dict[int, list[int]] = {}
    for i in sorted(values):
      by_worker.setdefault(holders[i], []).append(i)
    shared = workdir_lib.redact(state)  # The noise seeds stay here.
    start = time.perf_counter()
    partials = asyncio.run(self._gather([(self.workers[h], split.forms.up_to_merge,
                                   (shared, [values[i] for i in members]))
                                  for h, members in sorted(by_worker.items())]))
    workers_done = time.perf_counter()
    merged = partials[0]
    for partial in partials[1:]:
      merged = split.forms.merge(merged, partial)
    result = split.forms.after_merge((state, [values[i] for i in sorted(values)]), merged)
    self.measured.update({'cluster/workers_seconds': workers_done - start,
                         'cluster/merge_seconds': time.perf_counter() - workers_done})
    # after_merge returns plain dicts: rebuilt as the computation's own result (its states' classes).
    return type_conversions.type_to_py_container(structure.from_container(result, recursive=True),
                                                 split.result_type)

  async def _gather(self, calls: Sequence[tuple[Worker, tff.Computation, tuple]]) -> list:
    """Runs each (worker, computation, args): at most `IN_FLIGHT` of a worker's calls at once, the workers at once.

    Returns the results in order; sets `measured`: the mean bytes sent to
    and received from each worker called.
    """
    turns: dict[str, list[int]] = {}
    for k, (worker, _, _) in enumerate(calls):
      turns.setdefault(worker.address, []).append(k)
    called = {calls[ks[0]][0].address: calls[ks[0]][0] for ks in turns.values()}
    before = {a: (w.traffic.sent, w.traffic.received) for a, w in called.items()}
    results = [None] * len(calls)

    async def in_turn(indices: list[int]) -> None:
      for k in indices:
        worker, comp, args = calls[k]
        results[k] = await _call(worker, comp, *args)

    await asyncio.gather(*(in_turn(ks[lane::IN_FLIGHT]) for ks in turns.values() for lane in range(IN_FLIGHT)))
    self.measured = {
        'cluster/bytes_sent_per_worker': float(np.mean([w.traffic.sent - before[a][0] for a, w in called.items()])),
        'cluster/bytes_received_per_worker': float(np.mean(
            [w.traffic.received - before[a][1] for a, w in called.items()])),
    }
    return results


def configured(config: ml_collections.ConfigDict) -> program.Runtime:
  """The runtime config.runtime names: TFF workers, or this process (`program.InProcess`).

  Here, not in `program`: the run knows only the `Runtime` protocol, and the
  deployments build on it (scripts/train.py picks the runtime).
  """
  spec = config_checks.cluster(config)
  if spec is None:
    return program.InProcess()
  return Workers.of(spec)

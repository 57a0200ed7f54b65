"""What spreading a round over TFF workers buys: round time against the number of workers.

One setting = a number of institutions sharing a fixed number of synthetic
loan rows (`training.benchmark.synthetic_federation`), stored as shard files
and dealt round-robin to W workers (scripts/worker.py processes on this
machine). For the same DP-FedAvg round (every institution one local epoch,
`gaussian_fixed` noise, the process `training.benchmark` times) it measures:

* `round_seconds`: the round over the W workers (`Workers.run_round`:
  each client's file name and seed opened into its dataset and trained on
  in `up_to_merge`, on each worker at once; `merge` and `after_merge`
  here), W = 0 meaning the same round in this process's TFF runtime as the
  one-process program runs it (a dataset graph built here per institution,
  streamed from the same files);
* `workers_seconds` and `merge_seconds` (last round): the wait for the
  workers' `up_to_merge` and the `merge` and `after_merge` here; the rest of
  `round_seconds` is building and sending the round's dataset graphs;
* `examples_per_second`, `bytes_sent_per_worker`/`bytes_received_per_worker`
  (the executor service's messages, both ways) and `peak_rss_mb` of each
  worker's process tree;
* `tutorial_round_seconds` (W = 0 row): the peer, the same model and rows
  through plain TFF as its tutorials write it: `build_weighted_fed_avg`
  with default settings, in-memory `from_tensor_slices` datasets, the local
  runtime;
* `loop_epoch_seconds` (W = 0 row): one epoch of a compiled Keras loop over
  the pooled rows, the single-machine limit.

Medians over `repeats` after a warm-up round.
"""

import collections
import contextlib
import os
import statistics
import tempfile
from typing import Callable, Sequence

import numpy as np
import portpicker
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import rss as rss_lib
from tffaml.cluster import clients
from tffaml.cluster import runtime as cluster_runtime
from tffaml.cluster import worker as worker_lib
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.data import shards
from tffaml.federated import client_data
from tffaml.studies import benchmark


def _median(fn: Callable[[], object], repeats: int) -> float:
  return statistics.median(benchmark.timed(fn, repeats))  # After a warm-up call.


def _store_parts(data: federated_data.FederatedData, root: str, workers: int) -> list[str]:
  """Each worker's institutions (round-robin) stored as shard files under `root`/w<k>."""
  parts = []
  for k in range(workers):
    part = federated_data.FederatedData(data.schema, data.institutions[k::workers])
    parts.append(os.path.join(root, f'w{k}'))
    shards.store_federation(part, parts[-1], key={'benchmark': k})
  return parts


def _datasets(stored: Sequence[shards.StoredInstitution], round_num: int) -> list:
  """Each institution's round as the one-process program builds it (`client_data.institution_dataset`)."""
  return [client_data.institution_dataset(i, 'train', i.schema, batch_size=benchmark.BATCH_SIZE,
                                          shuffle_seed=round_num) for i in stored]


def _over_workers(process, data, root: str, workers: int, repeats: int, pinned: bool) -> dict:
  """The round over `workers` local worker processes (`pinned`: worker k on core k only)."""
  parts, spawned = _store_parts(data, os.path.join(root, f'{workers}_workers'), workers), []
  ports = [portpicker.pick_unused_port() for _ in parts]
  try:
    for k, (part, port) in enumerate(zip(parts, ports)):
      spawned.append(worker_lib.spawn(part, port=port, log_path=os.path.join(root, f'worker{workers}_{k}.log'),
                                      cpus={k % os.cpu_count()} if pinned else None))
    cluster = cluster_runtime.Workers([f'localhost:{port}' for port in ports])
    roster = cluster.connect()
    opener = clients.shuffled_opener(data.schema, roster.institutions, batch_size=benchmark.BATCH_SIZE, epochs=1,
                                     seed_of=lambda index, round_num: round_num)
    split = cluster_runtime.Split.of(process.next, opener)
    state, round_num = [process.initialize()], [0]

    def one_round():
      round_num[0] += 1
      values = {k: opener.value(k, round_num[0]) for k in range(len(roster.institutions))}
      state[0] = cluster.run_round(split, state[0], values, roster.holders).state

    with contextlib.ExitStack() as stack:
      samplers = [stack.enter_context(rss_lib.PeakRss(p.pid)) for p in spawned]
      seconds = _median(one_round, repeats)
    return {'round_seconds': seconds, 'peak_rss_mb': [round(s.peak) for s in samplers],
            'workers_seconds': cluster.measured['cluster/workers_seconds'],
            'merge_seconds': cluster.measured['cluster/merge_seconds'],
            'bytes_sent_per_worker': cluster.measured['cluster/bytes_sent_per_worker'],
            'bytes_received_per_worker': cluster.measured['cluster/bytes_received_per_worker']}
  finally:
    for p in spawned:
      p.terminate()
      p.wait()


def _tutorial_round(keras_model_fn, data: federated_data.FederatedData, repeats: int) -> float:
  """The peer: TFF's tutorial FedAvg (default settings) on in-memory datasets, in this process."""
  def to_dataset(frame):
    tensors = client_data.feature_tensors(frame, data.schema)
    labels = frame[schema_lib.LABEL_COLUMN].to_numpy(np.float32)[:, None]
    return tf.data.Dataset.from_tensor_slices((tensors, labels)).batch(benchmark.BATCH_SIZE)

  datasets = [to_dataset(i.train) for i in data.institutions]
  spec = datasets[0].element_spec

  def model_fn():
    return tff.learning.models.from_keras_model(
        keras_model_fn(), input_spec=spec, loss=tf.keras.losses.BinaryCrossentropy(),
        metrics=[tf.keras.metrics.AUC()])

  process = tff.learning.algorithms.build_weighted_fed_avg(
      model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.05))
  state = [process.initialize()]

  def one_round():
    state[0] = process.next(state[0], datasets).state

  return _median(one_round, repeats)


def _in_one_process(process, keras_model_fn, data: federated_data.FederatedData, directory: str,
                    repeats: int) -> dict:
  """The round as the one-process program streams it from stored files, the tutorial peer and the loop."""
  local = shards.store_federation(data, directory, key={'benchmark': 'local'}).institutions
  state, round_num = [process.initialize()], [0]

  def one_round():
    round_num[0] += 1
    state[0] = process.next(state[0], _datasets(local, round_num[0])).state

  with rss_lib.PeakRss() as rss:
    seconds = _median(one_round, repeats)
  pooled = client_data.to_dataset(data.pooled('train'), data.schema, batch_size=benchmark.BATCH_SIZE, shuffle_seed=0)
  return {'round_seconds': seconds, 'peak_rss_mb': [round(rss.peak)],
          'tutorial_round_seconds': _tutorial_round(keras_model_fn, data, repeats),
          'loop_epoch_seconds': statistics.median(benchmark.keras_references(keras_model_fn, pooled, repeats)['loop'])}


def measure(*, institutions: int, examples: int, workers: Sequence[int], repeats: int = 3,
            seed: int = 0, pinned: bool = False, log: Callable[[str], None] = print) -> list[dict]:
  """Records for W in `workers` (0: this process, with the peer and the compiled loop). Call inside a TFF runtime.

  `pinned`: worker k runs on core k alone, so W workers have W cores (the
  coordinator runs anywhere).
  """
  data = benchmark.synthetic_federation(institutions=institutions, examples=examples, seed=seed)
  keras_model_fn, process, _, _ = benchmark.build_processes(data, institutions=institutions, seed=seed)
  records = []
  with tempfile.TemporaryDirectory() as root:
    for count in workers:
      record = collections.OrderedDict(institutions=institutions, examples=examples, workers=count,
                                       pinned=pinned and bool(count))
      if count:
        record.update(_over_workers(process, data, root, count, repeats, pinned))
      else:
        record.update(_in_one_process(process, keras_model_fn, data, os.path.join(root, 'local'), repeats))
      record['examples_per_second'] = examples / record['round_seconds']
      log(f'{institutions} institutions, {count or "no"} workers: round {record["round_seconds"]:.3f} s')
      records.append(record)
  return records


def markdown(records: Sequence[dict], machine: str) -> str:
  lines = [f'Measured on {machine}.', '',
           '| institutions | workers | round s | of which on workers / merge s | examples/s | x one process |'
           ' tutorial round s | loop epoch s | peak RSS MB per process | bytes to / from each worker |',
           '|---|---|---|---|---|---|---|---|---|---|']
  alone = {r['institutions']: r['round_seconds'] for r in records if not r['workers']}
  for r in records:
    ratio = r['round_seconds'] / alone[r['institutions']] if r['institutions'] in alone else float('nan')
    traffic = (f'{r["bytes_sent_per_worker"] / 1e6:.2f} MB / {r["bytes_received_per_worker"] / 1e6:.2f} MB'
               if r['workers'] else '-')
    lines.append(
        f'| {r["institutions"]} | {_workers(r)} | {r["round_seconds"]:.3f} |'
        f' {_split_seconds(r)} | {r["examples_per_second"]:.0f} | {ratio:.2f} | {r.get("tutorial_round_seconds", float("nan")):.3f} |'
        f' {r.get("loop_epoch_seconds", float("nan")):.3f} | {", ".join(map(str, r["peak_rss_mb"]))} | {traffic} |')
  return '\n'.join(lines) + '\n'


def _split_seconds(record: dict) -> str:
  if not record['workers']:
    return '-'
  return f'{record["workers_seconds"]:.3f} / {record["merge_seconds"]:.3f}'


def _workers(record: dict) -> str:
  if not record['workers']:
    return 'none (this process)'
  return f'{record["workers"]}{", one core each" if record.get("pinned") else ""}'

"""What federation costs: a round's time and memory against plain Keras.

One setting = a number of institutions sharing a fixed number of synthetic
loan rows (IID, both classes everywhere). For each it measures, on the same
model and data in the same process:

* `round_seconds`: one federated round (every institution one local epoch,
  client-level DP aggregation `gaussian_fixed`, training metrics on),
  including building the round's client datasets as the program does;
* `fit_epoch_seconds`: one Keras `fit` epoch over the pooled rows (what
  users do);
* `loop_epoch_seconds`: one epoch of a compiled `tf.function` training loop
  over a prefetched `tf.data` pipeline (the practical limit here);
* `eval_seconds`, `checkpoint_seconds`: federated evaluation and a
  `FileProgramStateManager` save, the other parts of a program round. TFF
  runs client work and aggregation inside one `next` call and does not
  expose their split.

Each is a median over `repeats` after one warm-up (tracing) run; `spread`
holds min and max. `peak_rss_mb` is the largest resident memory of this
process plus its TFF worker, sampled every 50 ms during the setting, and
`rss_growth_mb` the change between the first and last timed round (flat
memory in rounds means about zero).
"""

import asyncio
import statistics
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import psutil
import tensorflow as tf
import tensorflow_federated as tff

from tffaml import features
from tffaml import rss as rss_lib
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.federated import aggregators
from tffaml.federated import client_data
from tffaml.federated import processes
from tffaml.models import tabular

SCHEMA = schema_lib.Schema(
    label='default', positive='1', numeric=('amount', 'rate', 'income', 'debt_ratio'),
    categorical=('grade',))
BATCH_SIZE = 32


def synthetic_federation(*, institutions: int, examples: int, seed: int) -> federated_data.FederatedData:
  """`examples` training rows (plus a quarter as many test rows) dealt round-robin
  by class to `institutions`, so every institution holds both classes."""
  rng = np.random.default_rng(seed)
  total = examples + examples // 4
  grade = rng.choice(list('ABCDE'), total)
  rate = rng.uniform(5, 25, total)
  logit = 0.25 * (rate - 15) + (grade >= 'D') - 1.0
  frame = pd.DataFrame({
      'amount': rng.lognormal(9, 0.6, total), 'rate': rate,
      'income': rng.lognormal(11, 0.5, total), 'debt_ratio': rng.uniform(0, 0.6, total),
      'grade': grade, 'default': (rng.random(total) < 1 / (1 + np.exp(-logit))).astype(int),
  })
  frame = schema_lib.validate_frame(frame, SCHEMA, source='synthetic', header_lines=0)
  labels = frame[schema_lib.LABEL_COLUMN].to_numpy()
  order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in (0, 1)])
  owner = np.empty(total, np.int64)
  owner[order] = np.arange(total) % institutions
  is_test = np.zeros(total, bool)
  is_test[rng.permutation(total)[:total - examples]] = True
  members = []
  for k in range(institutions):
    mine = owner == k
    members.append(federated_data.Institution(
        f'bank_{k:04d}', frame[mine & ~is_test].reset_index(drop=True),
        frame[mine & is_test].reset_index(drop=True)))
  return federated_data.FederatedData(SCHEMA, tuple(members))


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
  fn()  # Warm-up: tracing and compilation are not what we measure.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def _median_and_spread(times: Sequence[float]) -> tuple[float, list[float]]:
  return statistics.median(times), [min(times), max(times)]


def keras_references(keras_model_fn, pooled: tf.data.Dataset, repeats: int) -> dict:
  fit_model = keras_model_fn()
  fit_model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss='binary_crossentropy')
  fit = timed(lambda: fit_model.fit(pooled, epochs=1, verbose=0), repeats)

  loop_model = keras_model_fn()
  optimizer = tf.keras.optimizers.SGD(0.05)
  loss_fn = tf.keras.losses.BinaryCrossentropy()
  prefetched = pooled.prefetch(tf.data.AUTOTUNE)

  @tf.function
  def epoch():
    for x, y in prefetched:
      with tf.GradientTape() as tape:
        loss = loss_fn(y, loop_model(x, training=True))
      grads = tape.gradient(loss, loop_model.trainable_variables)
      optimizer.apply_gradients(zip(grads, loop_model.trainable_variables))

  loop = timed(epoch, repeats)
  return {'fit': fit, 'loop': loop}


def build_processes(data, *, institutions: int, seed: int):
  """(keras_model_fn, DP-FedAvg process, eval process, datasets(round)) of the benchmark."""
  space = features.compute_feature_space(data, min_category_count=1)
  keras_model_fn = lambda: tabular.build_model(
      model_type=tabular.ModelType.MLP, feature_space=space, hidden_units=(64, 32), seed=seed)

  def datasets(round_num):
    return [client_data.to_dataset(i.train, SCHEMA, batch_size=BATCH_SIZE, shuffle_seed=round_num)
            for i in data.institutions]

  element_spec = datasets(0)[0].element_spec
  model_fn = processes.build_model_fn(
      keras_model_fn=keras_model_fn, element_spec=element_spec, threshold=0.5)
  process = processes.build_train_process(
      model_fn=model_fn, algorithm=processes.Algorithm.FEDAVG,
      weighting=processes.Weighting.UNIFORM,
      client_optimizer=processes.build_optimizer(processes.OptimizerType.SGD, learning_rate=0.05),
      server_optimizer=processes.build_optimizer(processes.OptimizerType.SGD, learning_rate=1.0),
      aggregator=aggregators.configure_aggregator(
          aggregator_type=aggregators.AggregatorType.GAUSSIAN_FIXED, weighted=False,
          clients_per_round=institutions, noise_multiplier=1.0, clip=1.0, noise_seed=seed))
  return keras_model_fn, process, processes.build_eval_process(model_fn), datasets


def measure(*, institutions: int, examples: int, repeats: int = 3, seed: int = 0) -> dict:
  """One setting's record (see the module docstring). Call inside a TFF runtime."""
  data = synthetic_federation(institutions=institutions, examples=examples, seed=seed)
  keras_model_fn, process, eval_process, datasets = build_processes(data, institutions=institutions,
                                                               seed=seed)
  test_sets = [client_data.to_dataset(i.test, SCHEMA, batch_size=1024) for i in data.institutions]
  pooled = client_data.to_dataset(data.pooled('train'), SCHEMA, batch_size=BATCH_SIZE, shuffle_seed=0)

  with rss_lib.PeakRss() as rss, tempfile.TemporaryDirectory() as checkpoint_dir:
    state = [process.initialize()]
    round_num = [0]
    rss_after_round = []

    def federated_round():
      round_num[0] += 1
      state[0] = process.next(state[0], datasets(round_num[0])).state
      rss_after_round.append(rss.current)

    rounds = timed(federated_round, repeats)
    weights = process.get_model_weights(state[0])
    eval_state = eval_process.set_model_weights(eval_process.initialize(), weights)
    evaluation = timed(lambda: eval_process.next(eval_state, test_sets), repeats)
    manager = tff.program.FileProgramStateManager(checkpoint_dir, keep_total=1)
    saves = iter(range(1, 10**6))
    checkpoint = timed(lambda: asyncio.run(manager.save(state[0], next(saves))), repeats)
    references = keras_references(keras_model_fn, pooled, repeats)

  round_s, round_spread = _median_and_spread(rounds)
  fit_s, fit_spread = _median_and_spread(references['fit'])
  loop_s, loop_spread = _median_and_spread(references['loop'])
  eval_s, _ = _median_and_spread(evaluation)
  checkpoint_s, _ = _median_and_spread(checkpoint)
  return {
      'institutions': institutions,
      'examples': sum(len(i.train) for i in data.institutions),
      'round_seconds': round_s,
      'fit_epoch_seconds': fit_s,
      'loop_epoch_seconds': loop_s,
      'ratio_vs_fit': round_s / fit_s,
      'ratio_vs_loop': round_s / loop_s,
      'peak_rss_mb': rss.peak,
      'rss_growth_mb': rss_after_round[-1] - rss_after_round[1],  # [0] is the warm-up.
      'eval_seconds': eval_s,
      'checkpoint_seconds': checkpoint_s,
      'examples_per_second_federated': sum(len(i.train) for i in data.institutions) / round_s,
      'spread': {'round_seconds': round_spread, 'fit_epoch_seconds': fit_spread,
                 'loop_epoch_seconds': loop_spread},
      'repeats': repeats,
  }


def markdown(records: Sequence[dict], machine: str) -> str:
  lines = [
      f'Measured on {machine}.', '',
      '| institutions | examples | round s | fit epoch s | loop epoch s | round / fit |'
      ' round / loop | eval s | checkpoint s | peak RSS MB | RSS growth MB |',
      '|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in records:
    lines.append(
        f'| {r["institutions"]} | {r["examples"]} | {r["round_seconds"]:.3f} |'
        f' {r["fit_epoch_seconds"]:.3f} | {r["loop_epoch_seconds"]:.3f} |'
        f' {r["ratio_vs_fit"]:.2f} | {r["ratio_vs_loop"]:.2f} | {r["eval_seconds"]:.3f} |'
        f' {r["checkpoint_seconds"]:.3f} | {r["peak_rss_mb"]:.0f} | {r["rss_growth_mb"]:+.1f} |')
  return '\n'.join(lines) + '\n'


def machine_description() -> str:
  import platform  # pylint: disable=g-import-not-at-top
  memory = psutil.virtual_memory().total / 2**30
  return (f'{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores,'
          f' {memory:.0f} GB RAM, TensorFlow {tf.__version__}, TFF {tff.__version__}')


def records_for(
    institution_counts: Sequence[int], *, examples: Sequence[int], repeats: int,
    log: Callable[[str], None] = print,
) -> list[dict]:
  records = []
  for count in institution_counts:
    for total in examples:
      if total < 2 * count:
        raise ValueError(f'{total} examples cannot give {count} institutions both classes.')
      log(f'{count} institutions, {total} examples...')
      records.append(measure(institutions=count, examples=total, repeats=repeats))
      r = records[-1]
      log(f'  round {r["round_seconds"]:.3f} s = {r["ratio_vs_fit"]:.2f} x fit epoch,'
          f' {r["ratio_vs_loop"]:.2f} x compiled loop; peak RSS {r["peak_rss_mb"]:.0f} MB')
  return records


"""What a worker's client receives in a round, and the one computation that opens it into a dataset.

Building a `tf.data` graph per institution per round in the coordinator
costs about 16 ms each (tracing its map function): 16 s a round at 1,000
institutions, more than the training. Instead each client receives a small
value (its file's name and the round's shuffle seed, or under DP-SGD the
rows sampled for it), and an `Opener`'s computation, traced once, turns it
into the dataset inside the worker: `compose` puts it in front of the
round, `tff.federated_map`ped over the clients, so it runs in `up_to_merge`.
The datasets are the ones `config_builders.client_dataset` builds in one
process (same batches, same samples).
"""

import collections
import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow_federated as tff

from tffaml import errors
from tffaml.data import schema as schema_lib
from tffaml.data import shards
from tffaml.federated import client_data
from tffaml.federated import dp_sgd
from tffaml.config import builders as config_builders

_PATH = tff.TensorType(np.str_)
_SHUFFLED = tff.StructType([('path', _PATH), ('seed', tff.TensorType(np.int64))])
_SAMPLED = tff.StructType([
    ('path', _PATH), ('rows', tff.TensorType(np.int64, [None])), ('lengths', tff.TensorType(np.int64, [None])),
    ('segments', tff.TensorType(np.int32, [None])), ('step_seeds', tff.TensorType(np.int64, [None, 2]))])


@dataclasses.dataclass(frozen=True)
class Opener:
  """`computation`: (client value -> dataset); `value(index, round)`: the `index`th institution's value."""

  computation: tff.Computation
  value: Callable[[int, int], Any]


def train_opener(config, work: config_builders.ClientWork, plan, schema: schema_lib.Schema,
                 institutions: Sequence[shards.StoredInstitution], *, noise_seed: int) -> Opener:
  """The training data of `work`, as `config_builders.client_dataset` makes it."""
  f = config.federated
  if work is config_builders.ClientWork.FEDERATED:
    return shuffled_opener(schema, institutions, batch_size=f.batch_size, epochs=f.client_epochs,
                           seed_of=lambda index, round_num: config_builders.shuffle_seed(config, round_num=round_num,
                                                                                    index=index))
  if work in (config_builders.ClientWork.DP_SGD, config_builders.ClientWork.DISTRIBUTED_DP_SGD):
    @tff.tensorflow.computation(_SAMPLED)
    def sampled(path, rows, lengths, segments, step_seeds):
      return dp_sgd.selected_steps(path, schema, dp_sgd.Selection(rows=rows, lengths=lengths, segments=segments,
                                                                  step_seeds=step_seeds))

    def value(index: int, round_num: int):
      selection = config_builders.stored_selection(config, work, plan, schema, institutions[index], index=index,
                                              round_num=round_num, noise_seed=noise_seed)
      return collections.OrderedDict(path=institutions[index].train_path, **dataclasses.asdict(selection))

    return Opener(sampled, value)
  raise errors.ConfigError(f'{work.value!r} client work (e.g. a simulated attack) does not run on TFF workers;'
                           ' unset config.runtime.workers.')


def shuffled_opener(schema: schema_lib.Schema, institutions: Sequence[shards.StoredInstitution], *,
                    batch_size: int, epochs: int, seed_of: Callable[[int, int], int]) -> Opener:
  """Each institution's training file in batches, reshuffled by `seed_of(index, round)` (`shards.dataset`)."""
  @tff.tensorflow.computation(_SHUFFLED)
  def shuffled(path, seed):
    return client_data.lean(shards.dataset(path, schema, batch_size=batch_size, epochs=epochs, shuffle_seed=seed))

  return Opener(shuffled, lambda index, round_num: collections.OrderedDict(
      path=institutions[index].train_path, seed=seed_of(index, round_num)))


def test_opener(config, schema: schema_lib.Schema, institutions: Sequence[shards.StoredInstitution]) -> Opener:
  """Each institution's test split, in order, in batches of config.federated.eval_batch_size."""
  @tff.tensorflow.computation(_PATH)
  def ordered(path):
    return client_data.lean(shards.dataset(path, schema, batch_size=config.federated.eval_batch_size))

  return Opener(ordered, lambda index, round_num: institutions[index].test_path)


def compose(next_computation: tff.Computation, opener: Opener) -> tff.Computation:
  """`(state, values@CLIENTS -> next_computation(state, the values' datasets))`."""
  state_type = next_computation.type_signature.parameter[0]

  @tff.federated_computation(state_type, tff.FederatedType(opener.computation.type_signature.parameter, tff.CLIENTS))
  def next_from_values(state, values):
    return next_computation(state, tff.federated_map(opener.computation, values))

  return next_from_values

"""What a model trained on a kind of data takes and returns when served.

Defined beside the data (not in `tffaml.export`) because the data sources
choose it and the export only writes it: data never imports export.
"""

import dataclasses
import enum
from typing import Callable, Mapping

import tensorflow as tf

from tffaml.data import schema as schema_lib


class InputFormat(enum.Enum):
  """How a file to score is read (`tffaml.export.scoring`)."""

  TABLE = 'table'  # The schema's feature columns.
  AMLWORLD = 'amlworld'  # Transactions, aggregates computed from the file (`tffaml.data.transactions`).


@dataclasses.dataclass(frozen=True)
class Interface:
  """What the serving signature takes and returns.

  Attributes:
    inputs: The signature's input tensors, by name.
    preprocess: In-graph map from those inputs to the model's features.
    input_format: How `scoring.score_csv` reads a file to score.
    score: Name of the score output (float32).
    decision: Name of the 0/1 output, score >= threshold (int64).
  """

  inputs: Mapping[str, tf.TensorSpec]
  preprocess: Callable[[dict], dict] = lambda features: features
  input_format: InputFormat = InputFormat.TABLE
  score: str = 'probability'
  decision: str = 'label'

  def to_dict(self) -> dict:
    return {'input_format': self.input_format.value, 'inputs': list(self.inputs),
            'score': self.score, 'decision': self.decision}


def table_interface(schema: schema_lib.Schema) -> Interface:
  """The schema's feature columns in, probability and label out."""
  specs = {c: tf.TensorSpec([None], tf.float32, name=c) for c in schema.numeric}
  specs.update({c: tf.TensorSpec([None], tf.string, name=c) for c in schema.categorical})
  return Interface(inputs=specs)

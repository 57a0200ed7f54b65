"""Export for local serving: a SavedModel any TensorFlow can run.

The `serving_default` signature takes the raw inputs of an `Interface`, each
a 1-D tensor named after its column: for tabular data the schema's features
(float32 numeric, string categorical), returning `probability` (float32) and
`label` (int64, probability >= threshold); for transactions their raw fields
and account aggregates, returning `score` and `alert`. The preprocessing
learned by federation is inside the graph, so a bank needs neither tffaml nor
TFF to score: `tf.saved_model.load` or `saved_model_cli run` suffice.
`metadata.json` beside `saved_model.pb` holds the schema, the interface, the
threshold, config, metrics and privacy statement.
"""

import dataclasses
import json
import math
import os
from typing import Callable, Mapping

import tensorflow as tf

from tffaml import io
from tffaml.data import schema as schema_lib

SIGNATURE = 'serving_default'
METADATA_FILE = 'metadata.json'


@dataclasses.dataclass(frozen=True)
class Interface:
  """What the serving signature takes and returns.

  Attributes:
    inputs: The signature's input tensors, by name.
    preprocess: In-graph map from those inputs to the model's features.
    input_format: How `scoring.score_csv` reads a file: 'table' (the
      schema's columns) or 'amlworld' (see `tffaml.data.transactions`).
    score: Name of the score output (float32).
    decision: Name of the 0/1 output, score >= threshold (int64).
  """

  inputs: Mapping[str, tf.TensorSpec]
  preprocess: Callable[[dict], dict] = lambda features: features
  input_format: str = 'table'
  score: str = 'probability'
  decision: str = 'label'

  def to_dict(self) -> dict:
    return {'input_format': self.input_format, 'inputs': list(self.inputs),
            'score': self.score, 'decision': self.decision}


def table_interface(schema: schema_lib.Schema) -> Interface:
  """The schema's feature columns in, probability and label out."""
  specs = {c: tf.TensorSpec([None], tf.float32, name=c) for c in schema.numeric}
  specs.update({c: tf.TensorSpec([None], tf.string, name=c) for c in schema.categorical})
  return Interface(inputs=specs)


class _ServingModule(tf.Module):

  def __init__(self, model: tf.keras.Model, interface: Interface, threshold: float):
    super().__init__()
    self.model = model

    @tf.function(input_signature=[dict(interface.inputs)])
    def serve(inputs):
      score = tf.squeeze(self.model(interface.preprocess(inputs), training=False), axis=-1)
      return {interface.score: score,
              interface.decision: tf.cast(score >= threshold, tf.int64)}

    self.serve = serve


def export(
    model: tf.keras.Model,
    export_dir: str,
    *,
    schema: schema_lib.Schema,
    interface: Interface,
    threshold: float,
    metadata: dict,
) -> None:
  """Writes the SavedModel and its metadata to `export_dir`, atomically."""
  if not math.isfinite(threshold):
    raise ValueError(f'threshold must be finite, got {threshold}.')
  module = _ServingModule(model, interface, threshold)
  with io.atomic_path(export_dir, directory=True) as tmp:
    tf.saved_model.save(module, tmp, signatures={SIGNATURE: module.serve})
    metadata = dict(metadata, schema=schema.to_dict(), serving=interface.to_dict(),
                    threshold=threshold)
    with open(os.path.join(tmp, METADATA_FILE), 'w') as f:
      json.dump(metadata, f, indent=2)


def read_metadata(model_dir: str) -> dict:
  path = os.path.join(model_dir, METADATA_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no metadata; is {model_dir} a tffaml export?')
  with open(path) as f:
    return json.load(f)

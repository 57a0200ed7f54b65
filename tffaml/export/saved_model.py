"""Export for local serving: a SavedModel any TensorFlow can run.

The `serving_default` signature takes each raw feature as a 1-D tensor named
after its column (float32 numeric, string categorical) and returns
`probability` (float32) and `label` (int64, probability >= threshold). The
preprocessing learned by federation is inside the graph, so a bank needs
neither tffaml nor TFF to score: `tf.saved_model.load` or
`saved_model_cli run` suffice. `metadata.json` beside `saved_model.pb` holds
the schema, config, metrics and privacy statement.
"""

import json
import os

import tensorflow as tf

from tffaml import io
from tffaml.data import schema as schema_lib

SIGNATURE = 'serving_default'
METADATA_FILE = 'metadata.json'


class _ServingModule(tf.Module):

  def __init__(self, model: tf.keras.Model, schema: schema_lib.Schema, threshold: float):
    super().__init__()
    self.model = model
    specs = {c: tf.TensorSpec([None], tf.float32, name=c) for c in schema.numeric}
    specs.update({c: tf.TensorSpec([None], tf.string, name=c) for c in schema.categorical})

    @tf.function(input_signature=[specs])
    def serve(features):
      probability = tf.squeeze(self.model(features, training=False), axis=-1)
      label = tf.cast(probability >= threshold, tf.int64)
      return {'probability': probability, 'label': label}

    self.serve = serve


def export(
    model: tf.keras.Model,
    export_dir: str,
    *,
    schema: schema_lib.Schema,
    threshold: float,
    metadata: dict,
) -> None:
  """Writes the SavedModel and its metadata to `export_dir`, atomically."""
  if not 0.0 < threshold < 1.0:
    raise ValueError(f'threshold must be in (0, 1), got {threshold}.')
  module = _ServingModule(model, schema, threshold)
  with io.atomic_path(export_dir, directory=True) as tmp:
    tf.saved_model.save(module, tmp, signatures={SIGNATURE: module.serve})
    metadata = dict(metadata, schema=schema.to_dict(), threshold=threshold)
    with open(os.path.join(tmp, METADATA_FILE), 'w') as f:
      json.dump(metadata, f, indent=2)


def read_metadata(model_dir: str) -> dict:
  path = os.path.join(model_dir, METADATA_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no metadata; is {model_dir} a tffaml export?')
  with open(path) as f:
    return json.load(f)

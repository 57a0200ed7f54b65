"""Scores a CSV with an exported model, at the bank, in plain TensorFlow."""

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml import io
from tffaml.data import schema as schema_lib
from tffaml.export import saved_model


def score_csv(model_dir: str, input_path: str, output_path: str, *, batch_size: int = 4096) -> int:
  """Writes `input_path`'s rows plus `probability` and `label` columns.

  The input is validated against the model's schema before anything is
  scored; the output appears only when complete.

  Returns:
    The number of rows scored.
  """
  schema = schema_lib.Schema.from_dict(saved_model.read_metadata(model_dir)['schema'])
  raw = schema_lib.read_csv(input_path)
  features = schema_lib.validate_frame(raw, schema, source=input_path, require_label=False)
  serve = tf.saved_model.load(model_dir).signatures[saved_model.SIGNATURE]
  probabilities, labels = [], []
  for start in range(0, len(features), batch_size):
    batch = features.iloc[start:start + batch_size]
    inputs = {c: tf.constant(batch[c].to_numpy(np.float32)) for c in schema.numeric}
    inputs.update({c: tf.constant(batch[c].to_numpy(str)) for c in schema.categorical})
    outputs = serve(**inputs)
    probabilities.append(outputs['probability'].numpy())
    labels.append(outputs['label'].numpy())
  scored = raw.assign(probability=np.concatenate(probabilities), label=np.concatenate(labels))
  with io.atomic_path(output_path) as tmp:
    scored.to_csv(tmp, index=False)
  return len(scored)

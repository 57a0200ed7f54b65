"""Scores a CSV with an exported model, at the bank, in plain TensorFlow."""

from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml import io
from tffaml.data import schema as schema_lib
from tffaml.data import transactions
from tffaml.export import saved_model
from tffaml.export import signing


def _table_inputs(path: str, schema: schema_lib.Schema) -> tuple[pd.DataFrame, dict]:
  raw = schema_lib.read_csv(path)
  features = schema_lib.validate_frame(raw, schema, source=path, require_label=False)
  inputs = {c: features[c].to_numpy(np.float32) for c in schema.numeric}
  inputs.update({c: features[c].to_numpy(str) for c in schema.categorical})
  return raw, inputs


def score_csv(
    model_dir: str, input_path: str, output_path: str, *, public_key: Optional[str],
    bank: Optional[str] = None, batch_size: int = 4096,
) -> int:
  """Writes `input_path`'s rows plus the model's score and decision columns.

  The package is verified against `public_key` (its publisher's, see
  `signing`) before anything of it is read; None skips that, which the
  caller must choose explicitly. The input is validated before anything is
  scored; the output appears only when complete. A tabular model reads the
  schema's columns; a transaction model reads an AMLworld file and scores
  the transactions of `bank` (see `transactions.serving_inputs`).

  Returns:
    The number of rows scored.
  """
  if public_key is not None:
    signing.verify(model_dir, public_key)
  metadata = saved_model.read_metadata(model_dir)
  serving = metadata.get('serving', {'input_format': 'table', 'score': 'probability', 'decision': 'label'})
  if serving['input_format'] == 'amlworld':
    rows, inputs = transactions.serving_inputs(input_path, bank=bank)
  else:
    if bank is not None:
      raise ValueError('--bank is for transaction models; this model scores tables.')
    rows, inputs = _table_inputs(input_path, schema_lib.Schema.from_dict(metadata['schema']))
  serve = tf.saved_model.load(model_dir).signatures[saved_model.SIGNATURE]
  outputs = {serving['score']: [], serving['decision']: []}
  for start in range(0, len(rows), batch_size):
    result = serve(**{k: tf.constant(v[start:start + batch_size]) for k, v in inputs.items()})
    for name, parts in outputs.items():
      parts.append(result[name].numpy())
  scored = rows.assign(**{name: np.concatenate(parts) for name, parts in outputs.items()})
  with io.atomic_path(output_path) as tmp:
    scored.to_csv(tmp, index=False)
  return len(scored)

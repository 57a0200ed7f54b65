"""Scores a CSV with an exported model, at the bank, in plain TensorFlow.

Tabular input is checked row by row before scoring: a row with a missing,
non-numeric or non-finite value is rejected with its line and reasons and
never scored; a row with a value the federation never saw (a numeric value
more than `RANGE_SDS` standard deviations from the training mean, a
category outside the vocabulary, which the model scores as
out-of-vocabulary) is scored and flagged. Transaction files are validated
as a whole (`amlworld.read`).
"""

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml import errors
from tffaml import io
from tffaml.data import schema as schema_lib
from tffaml.data import transactions
from tffaml.export import saved_model
from tffaml.export import signing

RANGE_SDS = 6.0  # Beyond mean ± this many training standard deviations: flagged.
FLAGS_COLUMN = 'flags'


@dataclasses.dataclass(frozen=True)
class Result:
  scored: int
  rejected: int  # Rows not scored; listed in `rejected_path`.
  flagged: int  # Scored rows with a value unlike the training data.
  rejected_path: Optional[str] = None


def _reasons(n: int) -> list[list[str]]:
  return [[] for _ in range(n)]


def check_rows(raw: pd.DataFrame, schema: schema_lib.Schema, feature_space: dict, *, source: str):
  """Per-row problems (reject) and oddities (flag) of a table to score.

  Returns:
    (inputs of the accepted rows, accepted row mask, rejection reasons per
    row, flags per row).

  Raises:
    DataError: when columns the model needs are missing.
  """
  missing = [c for c in schema.features if c not in raw.columns]
  if missing:
    raise schema_lib.DataError(f'{source}: missing column(s) {missing} the model needs;'
                               f' the file has {list(raw.columns)}.')
  rejects, flags = _reasons(len(raw)), _reasons(len(raw))

  def note(target, mask, message):
    for row in np.flatnonzero(mask):
      target[row].append(message(row))

  numeric = {}
  for c in schema.numeric:
    text = raw[c].astype(str).str.strip()
    values = pd.to_numeric(text, errors='coerce').to_numpy(np.float64)
    empty = (text == '').to_numpy()
    note(rejects, empty, lambda r, c=c: f'{c}: missing')
    note(rejects, ~empty & np.isnan(values), lambda r, c=c, t=text: f'{c}: {t.iloc[r]!r} is not a number')
    note(rejects, np.isinf(values), lambda r, c=c, t=text: f'{c}: {t.iloc[r]!r} is not finite')
    mean, sd = feature_space['mean'][c], np.sqrt(feature_space['variance'][c])
    far = np.isfinite(values) & (np.abs(values - mean) > RANGE_SDS * sd)
    note(flags, far, lambda r, c=c, v=values: f'{c}={v[r]:g} outside the training range')
    numeric[c] = values
  categorical = {}
  for c in schema.categorical:
    text = raw[c].astype(str).str.strip()
    empty = (text == '').to_numpy()
    note(rejects, empty, lambda r, c=c: f'{c}: missing')
    unknown = ~empty & ~text.isin(feature_space['vocabulary'][c]).to_numpy()
    note(flags, unknown, lambda r, c=c, t=text: f'{c}={t.iloc[r]!r} unknown (scored as out-of-vocabulary)')
    categorical[c] = text.to_numpy(str)
  accepted = np.array([not r for r in rejects])
  inputs = {c: v[accepted].astype(np.float32) for c, v in numeric.items()}
  inputs.update({c: v[accepted] for c, v in categorical.items()})
  return inputs, accepted, rejects, flags


def score_csv(
    model_dir: str, input_path: str, output_path: str, *, public_key: Optional[str],
    bank: Optional[str] = None, batch_size: int = 4096,
) -> Result:
  """Writes `input_path`'s rows plus the model's outputs to `output_path`.

  The package is verified against `public_key` (its publisher's, see
  `signing`) before anything of it is read; None skips that, which the
  caller must choose explicitly. Tabular rows that cannot be scored go to
  `<output>.rejected.csv` with their line and reasons (see the module
  docstring); scored rows carry a `flags` column. A transaction model reads
  an AMLworld file and scores the transactions of `bank` (see
  `transactions.serving_inputs`). Outputs appear only when complete.
  """
  if public_key is not None:
    signing.verify(model_dir, public_key)
  metadata = saved_model.read_metadata(model_dir)
  serving = metadata['serving']
  rejected = pd.DataFrame()
  if serving['input_format'] == 'amlworld':
    rows, inputs = transactions.serving_inputs(input_path, bank=bank)
  else:
    if bank is not None:
      raise errors.InputError('--bank is for transaction models; this model scores tables.')
    raw = schema_lib.read_csv(input_path)
    inputs, accepted, reasons, flags = check_rows(
        raw, schema_lib.Schema.from_dict(metadata['schema']), metadata['feature_space'],
        source=input_path)
    rows = raw[accepted].assign(**{FLAGS_COLUMN: ['; '.join(f) for f, a in zip(flags, accepted) if a]})
    rejected = pd.DataFrame({'line': np.flatnonzero(~accepted) + 2,
                             'reasons': ['; '.join(r) for r in reasons if r]})
  serve = tf.saved_model.load(model_dir).signatures[saved_model.SIGNATURE]
  names = [n for n in (serving.get('score'), serving['decision']) if n]
  outputs = {name: [np.zeros(0)] for name in names}
  for start in range(0, len(rows), batch_size):
    result = serve(**{k: tf.constant(v[start:start + batch_size]) for k, v in inputs.items()})
    for name in names:
      outputs[name].append(result[name].numpy())
  scored = rows.assign(**{name: np.concatenate(parts) for name, parts in outputs.items()})
  rejected_path = f'{output_path}.rejected.csv' if len(rejected) else None
  if rejected_path:
    with io.atomic_path(rejected_path) as tmp:
      rejected.to_csv(tmp, index=False)
  with io.atomic_path(output_path) as tmp:
    scored.to_csv(tmp, index=False)
  flagged = int((scored[FLAGS_COLUMN] != '').sum()) if FLAGS_COLUMN in scored else 0
  return Result(scored=len(scored), rejected=len(rejected), flagged=flagged, rejected_path=rejected_path)

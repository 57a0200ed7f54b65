"""Scores a CSV with an exported model, at the bank, in plain TensorFlow.

Tabular input is checked row by row before scoring: a row with a missing,
non-numeric or non-finite value is rejected with its line and reasons and
never scored; a row with a value the federation never saw (a numeric value
more than `RANGE_SDS` standard deviations from the training mean, a
category outside the vocabulary, which the model scores as
out-of-vocabulary; under DP statistics, a category whose hashed slot is
outside it) is scored and flagged. Transaction files are validated
as a whole (`amlworld.read`). Files are read and text cells cleaned by the
rules training used (`schema.read_csv`, `schema.text_cells`): the same
encodings, surrounding whitespace stripped, missing-value markers missing.
"""

import contextlib
import dataclasses
import os
from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml import errors
from tffaml import io
from tffaml.data import interface as interface_lib
from tffaml.data import schema as schema_lib
from tffaml.data import transactions
from tffaml.export import saved_model
from tffaml.security import signing

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
    note(rejects, np.isfinite(values) & (np.abs(values) > schema_lib.FLOAT32_MAX),
         lambda r, c=c, t=text: f'{c}: {t.iloc[r]!r} is beyond the model\'s float32 range')
    mean, sd = feature_space['mean'][c], np.sqrt(feature_space['variance'][c])
    far = np.isfinite(values) & (np.abs(values - mean) > RANGE_SDS * sd)
    note(flags, far, lambda r, c=c, v=values: f'{c}={v[r]:g} outside the training range')
    numeric[c] = values
  categorical = {}
  for c in schema.categorical:
    text, empty = schema_lib.text_cells(raw[c])
    note(rejects, empty, lambda r, c=c: f'{c}: missing')
    unknown = ~empty & ~_known(text, feature_space, c)
    note(flags, unknown, lambda r, c=c, t=text: f'{c}={t.iloc[r]!r} unknown (scored as out-of-vocabulary)')
    categorical[c] = text.to_numpy(str)
  accepted = np.array([not r for r in rejects])
  inputs = {c: v[accepted].astype(np.float32) for c, v in numeric.items()}
  inputs.update({c: v[accepted] for c, v in categorical.items()})
  return inputs, accepted, rejects, flags


def _known(text: pd.Series, feature_space: dict, column: str) -> np.ndarray:
  """Which values the model looks up in its vocabulary: by value, or by hashed slot under DP statistics."""
  vocabulary = feature_space['vocabulary'][column]
  buckets = feature_space.get('hash_buckets', {}).get(column)
  if buckets is None:
    return text.isin(vocabulary).to_numpy()
  if text.empty:
    return np.zeros(0, bool)
  # The hash the model computes (tf.keras.layers.Hashing, no salt): see features.HashedSlots.
  slots = tf.strings.to_hash_bucket_fast(tf.constant(text.to_numpy(str), tf.string), buckets).numpy()
  return np.isin(slots, vocabulary)


def _check_outputs_apart(input_path: str, *outputs: str) -> None:
  """Refuses an output that is the input (by any spelling or link): scoring would destroy it."""
  source = os.path.realpath(input_path)
  for output in outputs:
    if os.path.realpath(output) == source or (
        os.path.exists(output) and os.path.exists(input_path) and os.path.samefile(output, input_path)):
      raise errors.InputError(f'--output {output} is the input file {input_path}; scoring would'
                              ' overwrite it. Write the output to another file.')


def _check_no_clash(input_path: str, columns, added: list[str]) -> None:
  clash = sorted(set(columns) & set(added + [FLAGS_COLUMN]))
  if clash:
    raise errors.InputError(
        f'{input_path}: has column(s) {clash}, which the output adds; rename them in the input'
        ' (the output would silently replace them).')


def _rejected_frame(path: str, reasons: list[list[str]],
                    fmt: Optional[schema_lib.TextFormat] = None) -> pd.DataFrame:
  bad = [i for i, r in enumerate(reasons) if r]
  if not bad:
    return pd.DataFrame()
  return pd.DataFrame({'line': schema_lib.record_lines(path, fmt)[bad],
                       'reasons': ['; '.join(reasons[i]) for i in bad]})


def _table_inputs(input_path: str, metadata: dict, outputs: list[str]):
  """(rows to score with their flags, the model's inputs, rejected rows) of a table."""
  schema = schema_lib.Schema.from_dict(metadata['schema'])
  raw = schema_lib.read_csv(input_path, encoding=schema.encoding)
  _check_no_clash(input_path, raw.columns, outputs)
  inputs, accepted, reasons, flags = check_rows(raw, schema, metadata['feature_space'], source=input_path)
  rows = raw[accepted].assign(**{FLAGS_COLUMN: ['; '.join(f) for f, a in zip(flags, accepted) if a]})
  return rows, inputs, _rejected_frame(input_path, reasons, raw.attrs['csv_format'])


def _reject_non_finite(rows: pd.DataFrame, inputs: dict, input_path: str):
  """Drops rows whose derived numeric inputs (e.g. account aggregates) are not finite float32."""
  reasons = _reasons(len(rows))
  for name, values in inputs.items():
    if values.dtype.kind == 'f':
      for row in np.flatnonzero(~np.isfinite(values.astype(np.float32))):
        reasons[row].append(f'{name}: not a finite float32 (derived from extreme amounts)')
  keep = np.array([not r for r in reasons], bool)
  return rows[keep], {k: v[keep] for k, v in inputs.items()}, _rejected_frame(input_path, reasons)


def _serve(model_dir: str, inputs: dict, names: list[str], batch_size: int, *, rows: int) -> dict:
  """The export's `names` outputs for `inputs`, in batches."""
  serve = tf.saved_model.load(model_dir).signatures[saved_model.SIGNATURE]
  outputs = {name: [np.zeros(0)] for name in names}
  for start in range(0, rows, batch_size):
    result = serve(**{k: tf.constant(v[start:start + batch_size]) for k, v in inputs.items()})
    for name in names:
      outputs[name].append(result[name].numpy())
  return {name: np.concatenate(parts) for name, parts in outputs.items()}


def score_csv(
    model_dir: str, input_path: str, output_path: str, *, public_key: Optional[str],
    bank: Optional[str] = None, batch_size: int = 4096,
) -> Result:
  """Writes `input_path`'s rows plus the model's outputs to `output_path`.

  The package is verified against `public_key` (its publisher's, see
  `signing`) before anything of it is read, and what is loaded is a private
  copy of exactly the verified bytes (`signing.verified_copy`), so a file
  rewritten after the check is never scored with; None skips that, which the
  caller must choose explicitly. Tabular rows that cannot be scored go to
  `<output>.rejected.csv` with their line and reasons (see the module
  docstring); scored rows carry a `flags` column. A transaction model reads
  an AMLworld file and scores the transactions of `bank` (see
  `transactions.serving_inputs`). Outputs appear only when complete.
  """
  _check_outputs_apart(input_path, output_path, f'{output_path}.rejected.csv')
  verified = (signing.verified_copy(model_dir, public_key) if public_key is not None
              else contextlib.nullcontext(model_dir))
  with verified as package:
    return _score(package, input_path, output_path, bank=bank, batch_size=batch_size,
                  model_dir=model_dir)


def _score(package: str, input_path: str, output_path: str, *, bank: Optional[str], batch_size: int,
           model_dir: str) -> Result:
  """`score_csv` with the model loaded from `package` (`model_dir`, or its verified copy)."""
  rejected_path = f'{output_path}.rejected.csv'
  metadata = saved_model.read_metadata(package)
  serving = metadata['serving']
  names = [n for n in (serving.get('score'), serving['decision']) if n]
  input_format = interface_lib.InputFormat(serving['input_format'])
  if input_format is interface_lib.InputFormat.AMLWORLD:
    rows, inputs = transactions.serving_inputs(input_path, bank=bank)
    _check_no_clash(input_path, rows.columns, names)
    rows, inputs, rejected = _reject_non_finite(rows, inputs, input_path)
  elif input_format is interface_lib.InputFormat.TABLE:
    if bank is not None:
      raise errors.InputError('--bank is for transaction models; this model scores tables.')
    rows, inputs, rejected = _table_inputs(input_path, metadata, names)
  else:
    raise ValueError(f'no reader for {input_format!r}.')
  scored = rows.assign(**_serve(package, inputs, names, batch_size, rows=len(rows)))
  rows_ok = np.ones(len(scored), bool) if not serving.get('score') else np.isfinite(scored[serving['score']])
  if not rows_ok.all():  # A model must never turn a bad row into a silent "no alert".
    raise errors.RunFailed(f'{model_dir}: the model scored {int((~rows_ok).sum())} checked row(s) of'
                           f' {input_path} as non-finite; nothing was written.')
  rejected_path = rejected_path if len(rejected) else None
  if rejected_path:
    with io.atomic_path(rejected_path) as tmp:
      rejected.to_csv(tmp, index=False)
  with io.atomic_path(output_path) as tmp:
    scored.to_csv(tmp, index=False)
  flagged = int((scored[FLAGS_COLUMN] != '').sum()) if FLAGS_COLUMN in scored else 0
  return Result(scored=len(scored), rejected=len(rejected), flagged=flagged, rejected_path=rejected_path)

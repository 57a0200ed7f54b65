"""The feature schema of a tabular task, and validation of tables against it.

A schema file (`schema.json`) names the binary label, its positive value, and
the numeric and categorical feature columns:

    {"label": "default", "positive": "1",
     "numeric": ["amount", "rate"], "categorical": ["term", "grade"]}

Columns a table has but the schema does not name are ignored. Every error
names the source (file), the line or column, and what is wrong, so a bank's
engineer can fix the file without reading our code.
"""

import csv
import dataclasses
import json
import keyword
import math
import os
import re
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from tffaml import errors

LABEL_COLUMN = '__label__'  # The parsed 0/1 label inside validated frames.
UNIT_COLUMN = '__unit__'  # The privacy unit (e.g. account) inside validated frames.
_SCHEMA_KEYS = ('label', 'positive', 'numeric', 'categorical', 'unit')
# Models compute in float32: a larger number would become inf inside them.
FLOAT32_MAX = float(np.finfo(np.float32).max)


class DataError(errors.InputError):
  """Input data or schema that cannot be used, with where and why."""


@dataclasses.dataclass(frozen=True)
class Schema:
  """Columns of a binary classification table.

  Attributes:
    label: Name of the label column.
    positive: The label value (compared as text) that marks the positive
      class; every other value of a two-valued label column is negative.
    numeric: Names of numeric feature columns (parsed as float).
    categorical: Names of categorical feature columns (kept as text).
    unit: Optional column identifying the privacy unit (e.g. an account):
      with record-level DP all rows sharing a value are protected together.
      Not a feature; needed in training and test files only.
  """

  label: str
  positive: str
  numeric: tuple[str, ...]
  categorical: tuple[str, ...]
  unit: str = ''

  def __post_init__(self):
    features = self.numeric + self.categorical
    if not features:
      raise DataError('schema: names no feature columns.')
    seen = set()
    for name in features:
      if name in seen:
        raise DataError(f'schema: column {name!r} is named more than once.')
      _check_input_name(name)
      seen.add(name)
    if self.label in seen:
      raise DataError(
          f'schema: label column {self.label!r} is also named as a feature.'
      )
    if self.unit and self.unit in seen | {self.label}:
      raise DataError(
          f'schema: unit column {self.unit!r} is also the label or a feature.'
      )

  @property
  def features(self) -> tuple[str, ...]:
    return self.numeric + self.categorical

  @property
  def columns(self) -> tuple[str, ...]:
    """Every column a training or test file needs."""
    return self.features + (self.label,) + ((self.unit,) if self.unit else ())

  def to_dict(self) -> dict:
    value = {
        'label': self.label,
        'positive': self.positive,
        'numeric': list(self.numeric),
        'categorical': list(self.categorical),
    }
    if self.unit:
      value['unit'] = self.unit
    return value

  @classmethod
  def from_dict(cls, value: dict, *, source: str = 'schema') -> 'Schema':
    if not isinstance(value, dict):
      raise DataError(f'{source}: expected a JSON object, got {value!r}.')
    unknown = sorted(set(value) - set(_SCHEMA_KEYS))
    if unknown:
      raise DataError(
          f'{source}: unknown key(s) {unknown}; expected {list(_SCHEMA_KEYS)}.'
      )
    missing = [key for key in ('label', 'positive') if key not in value]
    if missing:
      raise DataError(f'{source}: missing key(s) {missing}.')
    for key in ('numeric', 'categorical'):
      names = value.get(key, [])
      if not isinstance(names, list) or not all(
          isinstance(n, str) for n in names
      ):
        raise DataError(f'{source}: {key!r} must be a list of column names.')
    try:
      return cls(
          label=str(value['label']),
          positive=str(value['positive']),
          numeric=tuple(value.get('numeric', [])),
          categorical=tuple(value.get('categorical', [])),
          unit=str(value.get('unit', '')),
      )
    except DataError as e:
      raise DataError(str(e).replace('schema', source, 1)) from None

  @classmethod
  def from_json(cls, path: str) -> 'Schema':
    if not os.path.isfile(path):
      raise DataError(f'{path}: schema file not found.')
    with open(path) as f:
      try:
        value = json.load(f)
      except json.JSONDecodeError as e:
        raise DataError(f'{path}: not valid JSON: {e}.') from None
    return cls.from_dict(value, source=path)


def _check_input_name(name: str) -> None:
  """A feature names an input of the exported model's signature: refused where TensorFlow cannot.

  TensorFlow fails to save a signature input named 'self', a Python keyword
  or a name with spaces or non-ASCII letters, and silently renames others
  ('x-y' becomes 'x_y'): found only at export, after the whole training.
  """
  if re.fullmatch(r'[A-Za-z][A-Za-z0-9_]*', name) and not keyword.iskeyword(name) and name != 'self':
    return
  suggestion = re.sub(r'[^A-Za-z0-9_]+', '_', name).strip('_') or 'column'
  if not suggestion[0].isalpha():
    suggestion = f'c_{suggestion}'
  if keyword.iskeyword(suggestion) or suggestion == 'self':
    suggestion = f'{suggestion}_'
  raise DataError(
      f'schema: column {name!r} cannot name an input of the exported model (ASCII letters, digits'
      " and _, starting with a letter; not a Python keyword or 'self'). Rename it, e.g. to"
      f' {suggestion!r}, in the schema and the CSV headers.')


def _first_bad_row(mask: np.ndarray) -> int:
  return int(np.flatnonzero(mask)[0])


def read_csv(path: str, *, chunk_rows: Optional[int] = None, unique_header: bool = True):
  """Reads a CSV as text cells, so validation sees values as written.

  With `chunk_rows`, returns an iterator of frames of at most that many rows
  (one empty frame for a file with a header only). Each frame's `attrs`
  name its file and its first record, so errors can name the file's line
  even after quoted cells that span lines (`record_lines`).

  Args:
    path: The CSV file.
    chunk_rows: Rows per frame; None reads the whole file as one frame.
    unique_header: Refuse a header that names a column twice (pandas would
      silently rename the second, `amount.1`). AMLworld files repeat
      `Account` by design and pass False.
  """
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found.')
  if unique_header:
    _check_unique_header(path)
  chunks = _read_chunks(path, chunk_rows or 0)
  return chunks if chunk_rows else next(chunks)


def _check_unique_header(path: str) -> None:
  with open(path, newline='') as f:
    header = next(csv.reader(f), [])
  duplicated = sorted({c for c in header if header.count(c) > 1})
  if duplicated:
    raise DataError(f'{path}: line 1: column(s) {duplicated} appear more than once in the header;'
                    ' give every column its own name.')


def record_lines(path: str) -> np.ndarray:
  """The file line on which each data record starts (after the header).

  A quoted cell may span lines, so record i need not be on line i + 2.
  Blank lines are skipped, as pandas skips them.
  """
  lines = []
  with open(path, newline='') as f:
    reader = csv.reader(f)
    next(reader, None)
    start = reader.line_num + 1
    for record in reader:
      if record:
        lines.append(start)
      start = reader.line_num + 1
  return np.asarray(lines, np.int64)


def _read_chunks(path: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
  """Frames of `chunk_rows` rows (0: one frame), CSV problems as DataError."""
  read = lambda **kw: pd.read_csv(path, dtype=str, keep_default_na=False, **kw)
  try:
    if not chunk_rows:
      yield _mark(read(), path, 0)
      return
    with read(chunksize=chunk_rows) as reader:
      first = 0
      for chunk in reader:
        yield _mark(chunk, path, first)
        first += len(chunk)
    if not first:  # pandas yields no chunk for a header without rows.
      yield _mark(read(), path, 0)
  except pd.errors.EmptyDataError:
    raise DataError(f'{path}: file is empty (no header row).') from None
  except pd.errors.ParserError as e:
    # pandas says e.g. "Expected 5 fields in line 7, saw 6".
    raise DataError(f'{path}: malformed CSV: {e}'.strip()) from None


def _mark(frame: pd.DataFrame, path: str, first_record: int) -> pd.DataFrame:
  frame.attrs.update(csv_path=path, first_record=first_record)
  return frame


def line_of(frame: pd.DataFrame, row: int, *, header_lines: int = 1) -> str:
  """'line N' of `frame`'s row in its file ('row N' for an in-memory table)."""
  path = frame.attrs.get('csv_path')
  if path:
    return f'line {record_lines(path)[frame.attrs["first_record"] + row]}'
  return f'line {row + 1 + header_lines}' if header_lines else f'row {row}'


def validate_frame(
    frame: pd.DataFrame,
    schema: Schema,
    *,
    source: str,
    require_label: bool = True,
    header_lines: int = 1,
) -> pd.DataFrame:
  """Checks a table against `schema` and returns it parsed.

  Args:
    frame: The table. Cells may be text (as read by `read_csv`) or parsed.
    schema: The schema to check against.
    source: Where the table came from (a file path), used in error messages.
    require_label: Whether the label column must be present and parsed.
    header_lines: Lines before the first data row, to report file line
      numbers (1 for a CSV with a header; 0 for in-memory tables).

  Returns:
    A new frame with the feature columns (numeric as float64, categorical as
    str) and, when `require_label`, `LABEL_COLUMN` with 0/1 ints and (if the
    schema names one) `UNIT_COLUMN` as str; other columns are dropped.

  Raises:
    DataError: naming the source, line and column of the first problem.
  """

  def where(row: int) -> str:
    return line_of(frame, row, header_lines=header_lines)

  duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
  if duplicated:
    raise DataError(f'{source}: column(s) {duplicated} appear more than once.')
  needed = schema.columns if require_label else schema.features
  missing = [c for c in needed if c not in frame.columns]
  if missing:
    raise DataError(
        f'{source}: missing column(s) {missing} named by the schema; '
        f'the file has {list(frame.columns)}.'
    )
  if frame.empty:
    raise DataError(f'{source}: has a header but no rows.')

  out = pd.DataFrame(index=pd.RangeIndex(len(frame)))
  for column in schema.numeric:
    out[column] = _parse_numbers(frame[column].reset_index(drop=True), column, source, where)
  text_columns = {c: c for c in schema.categorical}
  if require_label and schema.unit:
    text_columns[UNIT_COLUMN] = schema.unit
  for name, column in text_columns.items():
    raw = frame[column].reset_index(drop=True)
    _refuse_first(raw.isna().to_numpy() | (raw.astype(str).str.strip() == '').to_numpy(),
                  lambda row: f'{source}: {where(row)}, column {column!r}: missing value.')
    out[name] = raw.astype(str).to_numpy()
  if require_label:
    out[LABEL_COLUMN] = _parse_labels(
        frame[schema.label].reset_index(drop=True), schema, source, where
    )
  return out


def _refuse_first(mask: np.ndarray, message) -> None:
  """DataError(message(first row in `mask`)) when any row is in `mask`."""
  if mask.any():
    raise DataError(message(_first_bad_row(mask)))


def _parse_numbers(raw: pd.Series, column: str, source: str, where) -> np.ndarray:
  """A numeric column as float64, refusing empty, non-numeric, non-finite and beyond-float32 cells."""
  text = raw.astype(str).str.strip()
  cell = lambda row: f'{source}: {where(row)}, column {column!r}'
  _refuse_first(raw.isna().to_numpy() | (text == '').to_numpy(),
                lambda row: f'{cell(row)}: missing value.')
  values = pd.to_numeric(text, errors='coerce').to_numpy(dtype=np.float64)
  _refuse_first(np.isnan(values), lambda row: f'{cell(row)}: {raw[row]!r} is not a number.')
  _refuse_first(~np.isfinite(values), lambda row: f'{cell(row)}: {raw[row]!r} is not finite.')
  _refuse_first(np.abs(values) > FLOAT32_MAX,
                lambda row: f'{cell(row)}: {raw[row]!r} is beyond ±{FLOAT32_MAX:.3g}, the largest'
                ' number the model (float32) can hold.')
  return values


def _parse_labels(labels, schema, source, where) -> np.ndarray:
  """Maps a label column to 0/1, requiring it to hold at most two values."""
  text = labels.astype(str).str.strip()
  if (text == '').any():
    row = _first_bad_row((text == '').to_numpy())
    raise DataError(
        f'{source}: {where(row)}, label column {schema.label!r}: missing value.'
    )
  values = sorted(set(text))
  if len(values) > 2:
    raise DataError(
        f'{source}: label column {schema.label!r} is not binary: it holds'
        f' {len(values)} values {values[:10]}; expected {schema.positive!r}'
        ' and one other value.'
    )
  positive = _normalise_label(schema.positive)
  normalised = text.map(_normalise_label)
  if len(values) == 2 and positive not in set(normalised):
    raise DataError(
        f'{source}: label column {schema.label!r} holds {values} but not the'
        f' positive value {schema.positive!r} named by the schema.'
    )
  return (normalised == positive).to_numpy(dtype=np.int64)


def _normalise_label(value: str) -> str:
  """'1', '1.0' and ' 1' name the same class; text labels are kept."""
  try:
    number = float(value)
  except ValueError:
    return value.strip()
  return repr(number) if math.isfinite(number) else value.strip()


def check_class_counts(*, positives: int, rows: int, source: str) -> None:
  """Requires 0 < positives < rows (training needs both classes)."""
  if not 0 < positives < rows:
    only = 'positive' if positives else 'negative'
    raise DataError(
        f'{source}: holds only {only} examples; training needs both classes.'
    )

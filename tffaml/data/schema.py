"""The feature schema of a tabular task, and validation of tables against it.

A schema file (`schema.json`) names the binary label, its positive value, and
the numeric and categorical feature columns:

    {"label": "default", "positive": "1", "negative": "0",
     "numeric": ["amount", "rate"], "categorical": ["term", "grade"]}

Columns a table has but the schema does not name are ignored. Every error
names the source (file), the line or column, and what is wrong, so a bank's
engineer can fix the file without reading our code.

The rules every file is read by, in training and at scoring alike:
  * Text: UTF-8 (with or without a BOM), or UTF-16/32 with a BOM (Excel's
    "Unicode text"); a file that is neither is read in the schema's optional
    `encoding` (e.g. "cp1252"), or refused. The separator is a comma, or a
    tab when the header line holds tabs and no comma. A NUL character is
    refused (parsers would cut the cell at it).
  * Labels: every institution's files hold only the two label values: the
    schema's `positive` and `negative`; without `negative`, the one other
    value all files agree on (`check_label_agreement`). Numbers compare as
    numbers ('1.0' is '1').
  * Text cells (categories, units, labels): surrounding whitespace is
    stripped; an empty cell or a missing-value marker (`MISSING_MARKERS`,
    any case) is a missing value: refused in training, a rejected row at
    scoring (`text_cells`).
"""

import codecs
import collections
import csv
import dataclasses
import json
import keyword
import math
import os
import re
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from tffaml import errors

LABEL_COLUMN = '__label__'  # The parsed 0/1 label inside validated frames.
UNIT_COLUMN = '__unit__'  # The privacy unit (e.g. account) inside validated frames.
_SCHEMA_KEYS = ('label', 'positive', 'negative', 'numeric', 'categorical', 'unit', 'encoding')
# Cells that mean "no value" (compared stripped, ignoring case), as an empty
# cell does: R's and Excel's NA and #N/A, SQL's NULL, pandas' NaN and <NA>.
# Not 'None': it is a real category in credit data (home ownership NONE).
MISSING_MARKERS = ('NA', 'N/A', '#N/A', 'NaN', 'NULL', '<NA>')
_MISSING_UPPER = frozenset([''] + [m.upper() for m in MISSING_MARKERS])
# Models compute in float32: a larger number would become inf inside them.
FLOAT32_MAX = float(np.finfo(np.float32).max)


class DataError(errors.InputError):
  """Input data or schema that cannot be used, with where and why."""


@dataclasses.dataclass(frozen=True)
class Schema:
  """Columns of a binary classification table.

  Attributes:
    label: Name of the label column.
    positive: The label value that marks the positive class.
    negative: The label value of the negative class; '' lets the files
      agree on it (`check_label_agreement`). Label values compare as
      numbers when they are numbers ('1.0' is '1'), else as text.
    numeric: Names of numeric feature columns (parsed as float).
    categorical: Names of categorical feature columns (kept as text).
    unit: Optional column identifying the privacy unit (e.g. an account):
      with record-level DP all rows sharing a value are protected together.
      Not a feature; needed in training and test files only.
    encoding: The text encoding of files that are not UTF-8 and have no
      BOM (e.g. 'cp1252', Excel's "CSV" on Western Windows); '' refuses them.
  """

  label: str
  positive: str
  numeric: tuple[str, ...]
  categorical: tuple[str, ...]
  unit: str = ''
  negative: str = ''
  encoding: str = ''

  def __post_init__(self):
    self._check_label_values()
    self._check_encoding()
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

  def _check_label_values(self) -> None:
    if not self.positive.strip():
      raise DataError("schema: 'positive' must name the positive label value.")
    if self.negative and _normalise_label(self.negative) == _normalise_label(self.positive):
      raise DataError(f"schema: 'negative' ({self.negative!r}) is the positive value; name the"
                      ' label value of the negative class.')

  def _check_encoding(self) -> None:
    if not self.encoding:
      return
    try:
      codecs.lookup(self.encoding)
    except LookupError:
      raise DataError(f"schema: 'encoding' {self.encoding!r} is no text encoding Python knows;"
                      " e.g. 'cp1252' (Excel on Western Windows) or 'latin-1'.") from None

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
    for key in ('unit', 'negative', 'encoding'):
      if getattr(self, key):
        value[key] = getattr(self, key)
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
          negative=str(value.get('negative', '')),
          encoding=str(value.get('encoding', '')),
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


@dataclasses.dataclass(frozen=True)
class TextFormat:
  """How a CSV file's bytes are read (`text_format`)."""

  encoding: str = 'utf-8'
  delimiter: str = ','


# Longest first: UTF-32-LE's BOM starts with UTF-16-LE's.
_BOMS = ((codecs.BOM_UTF32_LE, 'utf-32'), (codecs.BOM_UTF32_BE, 'utf-32'), (codecs.BOM_UTF8, 'utf-8-sig'),
         (codecs.BOM_UTF16_LE, 'utf-16'), (codecs.BOM_UTF16_BE, 'utf-16'))
_BLOCK_BYTES = 1 << 20


class _Undecodable(errors.Refusal):
  """A byte the encoding cannot decode, on `line` (caught here and refused as a `DataError`)."""

  def __init__(self, line: int, byte: int):
    super().__init__(line, byte)
    self.line, self.byte = line, byte


def text_format(path: str, encoding: str = '') -> TextFormat:
  """How `path` is read, the same for training and scoring files.

  A BOM names the encoding (UTF-8, UTF-16, UTF-32); without one the file is
  UTF-8 if it decodes as UTF-8, else in `encoding` (a schema's), else
  refused. The whole file is decoded once here, so a bad byte or a NUL
  (which pandas' parser silently treats as the cell's end) is found before
  any row is used.
  """
  with open(path, 'rb') as f:
    head = f.read(4)
  found = next((name for bom, name in _BOMS if head.startswith(bom)), '')
  try:
    _scan(path, found or 'utf-8')
    found = found or 'utf-8'
  except _Undecodable as e:
    if found or not encoding:
      raise DataError(_undecodable_message(path, found or 'utf-8', e)) from None
    try:
      _scan(path, encoding)
    except _Undecodable as e2:
      raise DataError(f'{path}: line {e2.line}: byte 0x{e2.byte:02X} is not {encoding} text (the schema\'s'
                      " 'encoding') nor UTF-8; save the file as CSV UTF-8, or name its encoding in the"
                      ' schema.') from None
    found = encoding
  return TextFormat(found, _delimiter(path, found))


def _undecodable_message(path: str, encoding: str, e: _Undecodable) -> str:
  if encoding != 'utf-8':
    return (f'{path}: line {e.line}: byte 0x{e.byte:02X} is not {encoding} text, though the file starts'
            f' with a {encoding} BOM; save it again (Excel: "CSV UTF-8").')
  return (f'{path}: line {e.line}: byte 0x{e.byte:02X} is not UTF-8: the file is in a legacy code page'
          ' (probably cp1252, Excel\'s "CSV" on Windows). Save it as "CSV UTF-8" (or "Unicode text"),'
          ' or name its encoding in the schema, e.g. "encoding": "cp1252".')


def _scan(path: str, encoding: str) -> None:
  """Decodes `path` in blocks: _Undecodable at a bad byte, DataError at a NUL."""
  decoder = codecs.getincrementaldecoder(encoding)()
  lines = 1
  with open(path, 'rb') as f:
    while True:
      block = f.read(_BLOCK_BYTES)
      try:
        text = decoder.decode(block, final=not block)
      except UnicodeDecodeError as e:
        partial = e.object[:e.start].decode(encoding, errors='replace')
        raise _Undecodable(lines + partial.count('\n'), e.object[e.start]) from None
      if '\0' in text:
        raise DataError(_nul_message(path, encoding, lines + text[:text.index('\0')].count('\n')))
      if not block:
        return
      lines += text.count('\n')


def _nul_message(path: str, encoding: str, line: int) -> str:
  """Names the column of the first NUL (parsed again: a rare path)."""
  with open(path, encoding=encoding, newline='') as f:
    reader = csv.reader(f, delimiter=_delimiter(path, encoding))
    header = next(reader, [])
    for record in reader:
      field = next((i for i, cell in enumerate(record) if '\0' in cell), None)
      if field is not None:
        column = repr(header[field]) if field < len(header) else f'number {field + 1}'
        break
    else:
      column = 'of the header'
  return (f'{path}: line {line}, column {column}: holds a NUL character (byte 0), which would'
          ' silently cut the value; remove it (it is no text: a binary or damaged export).')


def _delimiter(path: str, encoding: str) -> str:
  """A comma; a tab when the header holds tabs and no comma (Excel's "Unicode text" / "Text")."""
  with open(path, encoding=encoding, newline='') as f:
    header = f.readline()
  return '\t' if '\t' in header and ',' not in header else ','


def read_csv(path: str, *, chunk_rows: Optional[int] = None, unique_header: bool = True,
             encoding: str = ''):
  """Reads a CSV as text cells, so validation sees values as written.

  With `chunk_rows`, returns an iterator of frames of at most that many rows
  (one empty frame for a file with a header only). Each frame's `attrs`
  name its file, its first record and its `TextFormat`, so errors can name
  the file's line even after quoted cells that span lines (`record_lines`).

  Args:
    path: The CSV file.
    chunk_rows: Rows per frame; None reads the whole file as one frame.
    unique_header: Refuse a header that names a column twice (pandas would
      silently rename the second, `amount.1`). AMLworld files repeat
      `Account` by design and pass False.
    encoding: A schema's `encoding`: of a file that is not UTF-8 and has no
      BOM (`text_format`).
  """
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found.')
  fmt = text_format(path, encoding)
  if unique_header:
    _check_unique_header(path, fmt)
  chunks = _read_chunks(path, fmt, chunk_rows or 0)
  return chunks if chunk_rows else next(chunks)


def _check_unique_header(path: str, fmt: TextFormat) -> None:
  with open(path, newline='', encoding=fmt.encoding) as f:
    header = next(csv.reader(f, delimiter=fmt.delimiter), [])
  duplicated = sorted({c for c in header if header.count(c) > 1})
  if duplicated:
    raise DataError(f'{path}: line 1: column(s) {duplicated} appear more than once in the header;'
                    ' give every column its own name.')


def record_lines(path: str, fmt: Optional[TextFormat] = None) -> np.ndarray:
  """The file line on which each data record starts (after the header).

  A quoted cell may span lines, so record i need not be on line i + 2.
  Blank lines are skipped, as pandas skips them. `fmt`: as `read_csv` read
  the file (None: found again).
  """
  fmt = fmt or text_format(path)
  lines = []
  with open(path, newline='', encoding=fmt.encoding) as f:
    reader = csv.reader(f, delimiter=fmt.delimiter)
    next(reader, None)
    start = reader.line_num + 1
    for record in reader:
      if record:
        lines.append(start)
      start = reader.line_num + 1
  return np.asarray(lines, np.int64)


def _read_chunks(path: str, fmt: TextFormat, chunk_rows: int) -> Iterator[pd.DataFrame]:
  """Frames of `chunk_rows` rows (0: one frame), CSV problems as DataError."""
  read = lambda **kw: pd.read_csv(path, dtype=str, keep_default_na=False, encoding=fmt.encoding,
                                  sep=fmt.delimiter, **kw)
  try:
    if not chunk_rows:
      yield _mark(read(), path, fmt, 0)
      return
    with read(chunksize=chunk_rows) as reader:
      first = 0
      for chunk in reader:
        yield _mark(chunk, path, fmt, first)
        first += len(chunk)
    if not first:  # pandas yields no chunk for a header without rows.
      yield _mark(read(), path, fmt, 0)
  except pd.errors.EmptyDataError:
    raise DataError(f'{path}: file is empty (no header row).') from None
  except pd.errors.ParserError as e:
    # pandas says e.g. "Expected 5 fields in line 7, saw 6".
    raise DataError(f'{path}: malformed CSV: {e}'.strip()) from None


def _mark(frame: pd.DataFrame, path: str, fmt: TextFormat, first_record: int) -> pd.DataFrame:
  frame.attrs.update(csv_path=path, csv_format=fmt, first_record=first_record)
  return frame


def line_of(frame: pd.DataFrame, row: int, *, header_lines: int = 1) -> str:
  """'line N' of `frame`'s row in its file ('row N' for an in-memory table)."""
  return line_in(frame.attrs, row, header_lines=header_lines)


def line_in(attrs: dict, row: int, *, header_lines: int = 1) -> str:
  """`line_of` from a frame's `attrs` alone (kept after the frame is dropped)."""
  path = attrs.get('csv_path')
  if path:
    return f'line {record_lines(path, attrs["csv_format"])[attrs["first_record"] + row]}'
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
    str, `text_cells`) and, when `require_label`, `LABEL_COLUMN` with 0/1
    ints and (if the schema names one) `UNIT_COLUMN` as str; other columns
    are dropped. With labels, `attrs['labels']` holds the label values seen
    (for `check_label_agreement`): {normalised value: (as written, first row)}.

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
    text, missing = text_cells(raw)
    _refuse_first(missing, lambda row: f'{source}: {where(row)}, column {column!r}: {_missing(raw[row])}.')
    out[name] = text.to_numpy(str)
  if require_label:
    out[LABEL_COLUMN], out.attrs['labels'] = _parse_labels(
        frame[schema.label].reset_index(drop=True), schema, source, where
    )
  return out


def text_cells(raw: pd.Series) -> tuple[pd.Series, np.ndarray]:
  """The one rule for text cells, in training and at scoring: (stripped text, missing mask).

  Surrounding whitespace is no part of a value (' A' is 'A'); an empty cell
  and a missing-value marker (`MISSING_MARKERS`, any case) are missing.
  """
  text = raw.astype(str).str.strip()
  missing = raw.isna().to_numpy() | text.str.upper().isin(_MISSING_UPPER).to_numpy()
  return text, missing


def _missing(cell) -> str:
  if isinstance(cell, str) and cell.strip():
    return (f'missing value ({cell.strip()!r} marks one, as an empty cell does); fill it, or if it is a'
            " real category recode it (e.g. Namibia's 'NA' as 'NAM')")
  return 'missing value'


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


def _parse_labels(labels, schema, source, where) -> tuple[np.ndarray, dict]:
  """Maps a label column to 0/1: (labels, {normalised value: (as written, first row)}).

  A file holds at most two values, and with two the schema's positive one;
  with a schema's `negative`, only the schema's two.
  """
  text, missing = text_cells(labels)
  _refuse_first(missing, lambda row: f'{source}: {where(row)}, label column {schema.label!r}: {_missing(labels[row])}.')
  normalised = text.map(_normalise_label)
  positive = _normalise_label(schema.positive)
  if schema.negative:
    foreign = ~normalised.isin([positive, _normalise_label(schema.negative)]).to_numpy()
    _refuse_first(foreign, lambda row: f'{source}: {where(row)}, label column {schema.label!r}:'
                  f' {text[row]!r} is neither the positive value {schema.positive!r} nor the negative'
                  f' value {schema.negative!r} the schema names; recode the file with these two'
                  f' ({schema.positive!r} for the positive class).')
  values = sorted(set(text))
  if len(values) > 2:
    raise DataError(
        f'{source}: label column {schema.label!r} is not binary: it holds'
        f' {len(values)} values {values[:10]}; expected {schema.positive!r}'
        ' and one other value.'
    )
  if len(values) == 2 and positive not in set(normalised):
    raise DataError(
        f'{source}: label column {schema.label!r} holds {values} but not the'
        f' positive value {schema.positive!r} named by the schema.'
    )
  first = normalised.drop_duplicates()
  seen = {value: (text[row], int(row)) for row, value in first.items()}
  return (normalised == positive).to_numpy(dtype=np.int64), seen


@dataclasses.dataclass(frozen=True)
class LabelSighting:
  """The label values one source (a file, a node) holds, for `check_label_agreement`."""

  source: str
  values: dict  # normalised value -> (as written, first row or None)
  where: Optional[Callable[[int], str]] = None  # 'line N' of a row


def sighting(path: str, raw: pd.DataFrame, validated: pd.DataFrame) -> LabelSighting:
  """The label values of file `path` (read as `raw`, validated as `validated`)."""
  attrs = dict(raw.attrs)
  return LabelSighting(path, validated.attrs.pop('labels'), lambda row: line_in(attrs, row))


def check_label_agreement(schema: Schema, sightings: Sequence[LabelSighting]) -> None:
  """Refuses sources that code the label differently: all hold only the same two values.

  With the schema's `negative` each file was checked against both values
  (`validate_frame`). Without it the negative value is the one other value
  most sources hold (ties: the first source's); a source holding any third
  value is refused, e.g. a test file labelled 'yes' throughout, or a bank
  coding 1 = good, 2 = bad, which would train inverted.
  """
  if schema.negative:
    return
  positive = _normalise_label(schema.positive)
  holders = collections.Counter(v for s in sightings for v in s.values if v != positive)
  if len(holders) <= 1:
    return
  order = {v: i for i, v in enumerate(dict.fromkeys(v for s in sightings for v in s.values))}
  negative = max(holders, key=lambda v: (holders[v], -order[v]))
  example = next(s for s in sightings if negative in s.values)
  for s in sightings:
    for value, (text, row) in s.values.items():
      if value not in (positive, negative):
        where = f'{s.where(row)}, ' if s.where and row is not None else ''
        raise DataError(
            f'{s.source}: {where}label column {schema.label!r}: {text!r} is neither the positive value'
            f' {schema.positive!r} nor {example.values[negative][0]!r}, the negative value'
            f' {holders[negative]} source(s) hold (e.g. {example.source}). Every institution\'s train'
            f' and test files must code the label with the same two values: recode this one (check that'
            f' {schema.positive!r} marks the positive class in it), or name both in the schema'
            f' ("positive": {json.dumps(schema.positive)}, "negative": ...).')


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

"""The anti-money-laundering task: banks' transactions as a federation.

From an AMLworld file (`amlworld`), each bank that joins the federation
gets the transactions it sees (`amlworld.bank_view`), their account
aggregates computed from its own rows only (`account_aggregates`), and a
temporal split: transactions in the last `test_fraction` of the file's time
span are its test rows, so models are judged on a later period, as AML
teams deploy them. Banks with fewer than `min_rows` training transactions or
`min_positives` laundering ones among them do not join (their customers'
payments still appear, as counterparties, at the banks that do).

A model sees each transaction through `derive`, TensorFlow ops from the raw
fields (the `RAW_*` columns) to the model's features (`SCHEMA`). Training
applies it to whole columns; the export runs the same ops inside the
SavedModel, so a bank scores raw transactions plus their aggregates.
"""

import dataclasses
import math
import os
from typing import Optional

import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml import errors
from tffaml.data import account_aggregates
from tffaml.data import amlworld
from tffaml.data import federated_data
from tffaml.data import interface as interface_lib
from tffaml.data import schema as schema_lib
from tffaml.data import shards

RAW_TEXT = ('timestamp', 'payment_currency', 'receiving_currency', 'payment_format', 'direction')
RAW_NUMERIC = ('amount_paid', 'amount_received') + account_aggregates.AGGREGATES
NEAR_THRESHOLD = (9_000.0, 10_000.0)  # Just under the 10,000 reporting threshold.
SCHEMA = schema_lib.Schema(
    label='is_laundering',
    positive='1',
    numeric=('log_amount_paid', 'log_amount_received', 'currency_mismatch', 'round_amount',
             'near_threshold', 'hour_sin', 'hour_cos')
    + tuple(f'log1p_{a}' for a in account_aggregates.AGGREGATES),
    categorical=('payment_format', 'payment_currency', 'receiving_currency', 'weekday', 'direction'),
    unit='customer',
)


def _days_since_epoch(year, month, day):
  """Days from 1970-01-01 of a proleptic Gregorian date (Hinnant's days_from_civil)."""
  year = year - tf.cast(month <= 2, tf.int64)
  era = tf.math.floordiv(year, 400)
  year_of_era = year - era * 400
  day_of_year = (153 * (month + tf.where(month > 2, tf.constant(-3, tf.int64), 9)) + 2) // 5 + day - 1
  day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
  return era * 146097 + day_of_era - 719468


def derive(raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Model features (`SCHEMA`) from raw fields; 1-D tensors in and out.

  `timestamp` is 'YYYY/MM/DD HH:MM' (`amlworld.TIMESTAMP_FORMAT`); weekday
  0 is Monday. `round_amount`: the amount paid is a positive multiple of
  100; `near_threshold`: it lies in `NEAR_THRESHOLD`, in the payment's own
  currency (the file carries no exchange rates).
  """
  timestamp = raw['timestamp']
  number = lambda start, length: tf.strings.to_number(
      tf.strings.substr(timestamp, start, length), tf.int64)
  hour = tf.cast(number(11, 2), tf.float32)
  weekday = (_days_since_epoch(number(0, 4), number(5, 2), number(8, 2)) + 3) % 7
  paid, received = raw['amount_paid'], raw['amount_received']
  as_float = lambda condition: tf.cast(condition, tf.float32)
  features = {
      'log_amount_paid': tf.math.log1p(paid),
      'log_amount_received': tf.math.log1p(received),
      'currency_mismatch': as_float(raw['payment_currency'] != raw['receiving_currency']),
      'round_amount': as_float((paid > 0) & (tf.math.floormod(paid, 100.0) == 0)),
      'near_threshold': as_float((paid >= NEAR_THRESHOLD[0]) & (paid < NEAR_THRESHOLD[1])),
      'hour_sin': tf.sin(2 * math.pi * hour / 24),
      'hour_cos': tf.cos(2 * math.pi * hour / 24),
  }
  features.update({f'log1p_{a}': tf.math.log1p(raw[a]) for a in account_aggregates.AGGREGATES})
  features.update({c: raw[c] for c in ('payment_format', 'payment_currency', 'receiving_currency', 'direction')})
  features['weekday'] = tf.strings.as_string(weekday)
  return features


def raw_specs() -> dict[str, tf.TensorSpec]:
  specs = {c: tf.TensorSpec([None], tf.string, name=c) for c in RAW_TEXT}
  specs.update({c: tf.TensorSpec([None], tf.float32, name=c) for c in RAW_NUMERIC})
  return specs


def raw_fields(view: amlworld.BankView) -> dict[str, np.ndarray]:
  """A bank's transactions as `derive`'s inputs, aggregates computed from its rows."""
  rows = view.rows
  fields = {c: rows[c].to_numpy(str) for c in RAW_TEXT}
  fields['amount_paid'] = rows['amount_paid'].to_numpy(np.float32)
  fields['amount_received'] = rows['amount_received'].to_numpy(np.float32)
  aggregates = account_aggregates.compute(rows)
  fields.update({a: aggregates[a].to_numpy(np.float32) for a in account_aggregates.AGGREGATES})
  return fields


def model_frame(view: amlworld.BankView) -> pd.DataFrame:
  """A bank's rows as validated frames are: `SCHEMA` features, label and unit."""
  derived = derive({k: tf.constant(v) for k, v in raw_fields(view).items()})
  frame = pd.DataFrame({c: derived[c].numpy().astype(np.float64) for c in SCHEMA.numeric})
  for c in SCHEMA.categorical:
    frame[c] = derived[c].numpy().astype(str)
  frame[schema_lib.LABEL_COLUMN] = view.rows['is_laundering'].to_numpy(np.int64)
  frame[schema_lib.UNIT_COLUMN] = view.rows['customer'].to_numpy(str)
  frame['minute'] = view.rows['minute'].to_numpy()
  return frame


@dataclasses.dataclass(frozen=True)
class Selection:
  """Which banks of an AMLworld file join the federation, and how their rows split."""

  path: str  # The AMLworld transactions CSV.
  test_fraction: float = 0.25  # The last fraction of the time span is each bank's test rows.
  min_rows: int = 1000  # A bank joins with this many training transactions...
  min_positives: int = 5  # ...of which this many laundering.
  max_banks: int = 0  # Only the largest this many banks; 0: every bank that qualifies.

  def __post_init__(self):
    if not self.path:
      raise errors.InputError('{path} must name an AMLworld transactions CSV.', blames=('path',))
    if not 0.0 < self.test_fraction < 1.0:
      raise errors.InputError(f'{{test_fraction}} must be in (0, 1), got {self.test_fraction}.',
                              blames=('test_fraction',))


def _shard_key(selection: Selection) -> dict:
  """What stored banks were made from: the file as it was, and the split settings."""
  info = os.stat(selection.path)
  return {'layout': 4, 'path': os.path.abspath(selection.path), 'bytes': info.st_size,
          'mtime_ns': info.st_mtime_ns,
          **{k: getattr(selection, k) for k in ('test_fraction', 'min_rows', 'min_positives', 'max_banks')}}


def load(selection: Selection, *, shard_dir: Optional[str] = None,
         log=print) -> federated_data.FederatedData:
  """The federation of the banks `selection` picks (see the module docstring).

  With `shard_dir`, each bank's rows are written there as soon as they are
  made (`shards.store`) and only one bank's are in memory at a time; the
  banks then stream their files in training. A later call with the same
  file and settings reuses them.
  """
  if not os.path.isfile(selection.path):
    raise schema_lib.DataError(f'{selection.path}: file not found.')
  if shard_dir:
    stored = shards.read_manifest(shard_dir, _shard_key(selection))
    if stored:
      log(f'{selection.path}: reusing the {len(stored)} banks stored in {shard_dir}')
      return federated_data.FederatedData(schema=SCHEMA, institutions=tuple(stored))
  transactions, cutoff = _read(selection)
  members = _members(transactions, selection, cutoff, log)
  institutions = []
  for bank in members:
    institution = _institution(transactions, bank, cutoff)
    if shard_dir:
      federated_data.check_institution(institution)
      institution = shards.store(institution, SCHEMA, shard_dir)
    institutions.append(institution)
  if shard_dir:
    shards.write_manifest(shard_dir, _shard_key(selection), institutions)
    log(f'stored {len(institutions)} banks\' rows in {shard_dir}')
  return federated_data.FederatedData(schema=SCHEMA, institutions=tuple(institutions))


def members(selection: Selection, *, log=print) -> list[str]:
  """The codes of the banks `load` makes institutions of, in its order."""
  transactions, cutoff = _read(selection)
  return _members(transactions, selection, cutoff, log)


def _members(transactions: pd.DataFrame, selection: Selection, cutoff: float, log) -> list[str]:
  banks = amlworld.banks(transactions[transactions['minute'] < cutoff])
  joining = banks[_joins(banks, selection)].sort_values('transactions', ascending=False)
  if selection.max_banks:
    joining = joining.head(selection.max_banks)
  if joining.empty:
    raise schema_lib.DataError(
        f'{selection.path}: no bank has {selection.min_rows} training transactions and'
        f' {selection.min_positives} laundering ones among them; lower'
        ' {min_rows} or {min_positives}.', blames=('min_rows', 'min_positives'))
  log(f'{selection.path}: {len(transactions):,} transactions, {len(banks)} banks;'
      f' {len(joining)} join (>= {selection.min_rows} training transactions,'
      f' >= {selection.min_positives} laundering)')
  # By name, as a federation orders its nodes: an institution's index seeds its batches.
  return sorted(joining['bank'], key=str)


def _read(selection: Selection) -> tuple[pd.DataFrame, float]:
  """The file's transactions, and the minute from which rows are test rows (the last test_fraction of its span)."""
  if not os.path.isfile(selection.path):
    raise schema_lib.DataError(f'{selection.path}: file not found.')
  transactions = amlworld.read(selection.path)
  first, last = transactions['minute'].min(), transactions['minute'].max()
  return transactions, first + (1.0 - selection.test_fraction) * (last - first)


def _joins(banks: pd.DataFrame, selection: Selection) -> pd.Series:
  return (banks['transactions'] >= selection.min_rows) & (banks['laundering'] >= selection.min_positives)


def _institution(transactions: pd.DataFrame, bank: str, cutoff: float) -> federated_data.Institution:
  frame = model_frame(amlworld.bank_view(transactions, bank))
  test = (frame.pop('minute') >= cutoff).to_numpy()
  return federated_data.Institution(name=f'bank_{bank}', train=frame[~test].reset_index(drop=True),
                                    test=frame[test].reset_index(drop=True))


def load_bank(selection: Selection, bank: str) -> federated_data.Institution:
  """Bank `bank`'s rows of `selection`'s file, split as `load` splits them: a node's own data.

  The split is the file's time span's, so a file holding every bank's
  transactions gives the node the simulation's rows; a bank's own file
  splits at its own span. The bank must qualify as `load` requires.
  """
  transactions, cutoff = _read(selection)
  banks = amlworld.banks(transactions[transactions['minute'] < cutoff]).set_index('bank')
  if bank not in banks.index:
    raise schema_lib.DataError(f'{selection.path}: no transaction of bank {bank!r} (banks here:'
                               f' {", ".join(map(str, banks.index[:10]))}{"…" if len(banks) > 10 else ""}).')
  if not _joins(banks.loc[[bank]], selection).iloc[0]:
    raise schema_lib.DataError(
        f'{selection.path}: bank {bank!r} has {banks.loc[bank, "transactions"]} training transactions, of'
        f' which {banks.loc[bank, "laundering"]} laundering; the agreed config needs {selection.min_rows} and'
        f' {selection.min_positives} ({{min_rows}}, {{min_positives}}).', blames=('min_rows', 'min_positives'))
  return _institution(transactions, bank, cutoff)


def interface() -> interface_lib.Interface:
  """The export's signature: raw fields and aggregates in, `score` and `alert` out."""
  return interface_lib.Interface(
      inputs=raw_specs(), preprocess=derive, input_format=interface_lib.InputFormat.AMLWORLD,
      score='score', decision='alert')


def _only_bank(transactions: pd.DataFrame, path: str) -> str:
  """The bank every transaction touches, when there is exactly one."""
  candidates = set(transactions['from_bank'].iloc[:1]) | set(transactions['to_bank'].iloc[:1])
  every_row = [b for b in sorted(candidates)
               if ((transactions['from_bank'] == b) | (transactions['to_bank'] == b)).all()]
  if len(every_row) != 1:
    raise schema_lib.DataError(
        f'{path}: cannot tell which bank is scoring (candidates: {every_row or "none"});'
        ' pass --bank=<your bank code>.')
  return every_row[0]


def serving_inputs(path: str, *, bank: Optional[str] = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
  """A bank's AMLworld file as the export's inputs, aggregates computed from the file.

  Every row must touch `bank` (inferred when only one bank does); the
  aggregates see only the file's rows, so it should hold the bank's recent
  history as well as the transactions to score.

  Returns:
    The file's rows (AMLworld header, file order) and the signature's
    inputs in the same order.
  """
  transactions = amlworld.read(path, require_label=False)  # New transactions have no label yet.
  bank = bank or _only_bank(transactions, path)
  foreign = ((transactions['from_bank'] != bank) & (transactions['to_bank'] != bank)).to_numpy()
  if foreign.any():
    raise schema_lib.DataError(
        f'{path}: line {int(np.flatnonzero(foreign)[0]) + 2}: neither sender nor receiver is at'
        f' bank {bank!r} ({int(foreign.sum())} such rows); a bank scores its own transactions.')
  view = amlworld.bank_view(transactions, bank)
  file_order = np.argsort(view.rows.index.to_numpy(), kind='stable')
  inputs = {k: v[file_order] for k, v in raw_fields(view).items()}
  rows = transactions[list(amlworld.COLUMNS)].set_axis(list(amlworld.HEADER), axis=1)
  if not transactions.attrs['labelled']:
    rows = rows.drop(columns=[amlworld.HEADER[-1]])
  return rows, inputs

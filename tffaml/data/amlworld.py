"""Transactions in the IBM AMLworld CSV format, and what each bank sees of them.

AMLworld (Altman et al. 2023, "Realistic Synthetic Financial Transactions
for Anti-Money Laundering Models", arXiv:2306.16424) publishes files such
as HI-Small_Trans.csv with this header (the two `Account` columns are the
sender's and the receiver's):

    Timestamp,From Bank,Account,To Bank,Account,Amount Received,
    Receiving Currency,Amount Paid,Payment Currency,Payment Format,Is Laundering

A row reads `2022/09/01 00:20,010,8000EBD30,011,800A1B2C3,3697.34,US Dollar,
3697.34,US Dollar,Wire,0`. Bank codes and accounts are kept as text (codes
have leading zeros); an account is identified by its bank and account code.

**What a bank sees.** Bank `b`'s transactions are the rows whose
`From Bank` or `To Bank` is `b`: the payments its customers send and
receive. A payment between two banks is therefore in both banks' data (each
bank monitors its own side of it); a payment within one bank is in that
bank's data once. Its `direction` at `b` is `outgoing`, `incoming` or
`internal`, and the bank's `customer` is the sender (outgoing, internal) or
the receiver (incoming).
"""

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd

from tffaml.data import schema as schema_lib

HEADER = (
    'Timestamp', 'From Bank', 'Account', 'To Bank', 'Account', 'Amount Received',
    'Receiving Currency', 'Amount Paid', 'Payment Currency', 'Payment Format',
    'Is Laundering',
)
# Our names for the header's columns, in order.
COLUMNS = (
    'timestamp', 'from_bank', 'from_account', 'to_bank', 'to_account',
    'amount_received', 'receiving_currency', 'amount_paid', 'payment_currency',
    'payment_format', 'is_laundering',
)
TIMESTAMP_FORMAT = '%Y/%m/%d %H:%M'
_TIMESTAMP_PATTERN = r'\d{4}/\d{2}/\d{2} \d{2}:\d{2}'


# Rows parsed at a time: bounds the text form of the file held in memory.
CHUNK_ROWS = 500_000
# Refused above this: no payment is this large in any currency, and account
# aggregates sum many amounts in float32, where a few such would be inf.
MAX_AMOUNT = 1e18
# Columns kept as pandas categoricals: few distinct values (accounts repeat
# across their transactions), so 10M transactions take ~1 GB, not ~6 GB of text.
_CATEGORICAL = ('timestamp', 'from_bank', 'from_account', 'to_bank', 'to_account',
                'receiving_currency', 'payment_currency', 'payment_format')


def read(path: str, *, chunk_rows: int = CHUNK_ROWS, require_label: bool = True) -> pd.DataFrame:
  """Reads and validates an AMLworld file, `chunk_rows` lines at a time.

  With `require_label=False` (scoring new transactions, not yet labelled) the
  `Is Laundering` column may be absent; `is_laundering` is then 0 and the
  frame's `attrs['labelled']` False.

  Returns:
    One row per transaction, in file order, with `COLUMNS`: amounts as
    float64, `is_laundering` as int64 (0/1), the rest as categorical text
    (`timestamp` as written, 'YYYY/MM/DD HH:MM'); plus `minute` (int64
    minutes since the epoch).

  Raises:
    DataError: naming the file, line and column of the first problem.
  """
  expected = list(HEADER[:4]) + ['Account.1'] + list(HEADER[5:])  # pandas renames the 2nd.
  chunks, first_line, labelled = [], 2, True
  for raw in schema_lib.read_csv(path, chunk_rows=chunk_rows, unique_header=False):
    if not require_label and list(raw.columns) == expected[:-1]:
      raw = raw.assign(**{HEADER[-1]: '0'})
      labelled = False
    if list(raw.columns) != expected:
      got = [c.replace('Account.1', 'Account') for c in raw.columns]
      raise schema_lib.DataError(
          f'{path}: header is {got}; an AMLworld transactions file has {list(HEADER)}'
          + ('' if require_label else f' (the last, {HEADER[-1]!r}, may be left out)') + '.')
    raw.columns = list(COLUMNS)
    chunks.append(parse(raw, source=path, first_line=first_line))
    first_line += len(raw)
  if not chunks or sum(map(len, chunks)) == 0:
    raise schema_lib.DataError(f'{path}: has a header but no transactions.')
  transactions = _concat(chunks)
  transactions.attrs['labelled'] = labelled
  return transactions


def _concat(chunks: list[pd.DataFrame]) -> pd.DataFrame:
  """Concatenates parsed chunks, merging their categories."""
  out = pd.DataFrame(index=pd.RangeIndex(sum(map(len, chunks))))
  for column in chunks[0].columns:
    parts = [chunk[column] for chunk in chunks]
    if column in _CATEGORICAL:
      out[column] = pd.api.types.union_categoricals(parts, ignore_order=True)
    else:
      out[column] = np.concatenate([part.to_numpy() for part in parts])
  return out


def parse(raw: pd.DataFrame, *, source: str, first_line: Optional[int] = 2) -> pd.DataFrame:
  """Validates text cells named by `COLUMNS` (see `read`).

  `first_line` is the file line of `raw`'s first row, for error messages;
  None names rows by position instead.
  """

  def fail(mask, column, problem):
    row = int(np.flatnonzero(mask)[0])
    if raw.attrs.get('csv_path'):  # Right even after quoted cells spanning lines.
      where = schema_lib.line_of(raw, row)
    else:
      where = f'line {row + first_line}' if first_line is not None else f'row {row}'
    name = HEADER[COLUMNS.index(column)]
    raise schema_lib.DataError(
        f'{source}: {where}, column {name!r}: {raw[column].iloc[row]!r} {problem}.')

  out = pd.DataFrame(index=pd.RangeIndex(len(raw)))
  for column in COLUMNS:
    text = raw[column].astype(str).str.strip()
    empty = (text == '').to_numpy()
    if empty.any():
      fail(empty, column, 'is empty')
    out[column] = pd.Categorical(text) if column in _CATEGORICAL else text.to_numpy()
  timestamp = pd.to_datetime(out['timestamp'].astype(str), format=TIMESTAMP_FORMAT, errors='coerce')
  bad = timestamp.isna().to_numpy() | ~out['timestamp'].astype(str).str.fullmatch(
      _TIMESTAMP_PATTERN).to_numpy()
  if bad.any():
    fail(bad, 'timestamp', 'is not a timestamp YYYY/MM/DD HH:MM')
  for column in ('amount_received', 'amount_paid'):
    amount = pd.to_numeric(out[column], errors='coerce').to_numpy(np.float64)
    if not np.isfinite(amount).all():
      fail(~np.isfinite(amount), column, 'is not a finite number')
    if (amount > MAX_AMOUNT).any():
      fail(amount > MAX_AMOUNT, column, f'exceeds {MAX_AMOUNT:g}, beyond any payment (a data error)')
    if (amount < 0).any():
      fail(amount < 0, column, 'is negative')
    out[column] = amount
  label = out['is_laundering']
  if not label.isin(['0', '1']).all():
    fail(~label.isin(['0', '1']).to_numpy(), 'is_laundering', 'is not 0 or 1')
  out['is_laundering'] = label.astype(np.int64)
  out['minute'] = timestamp.to_numpy('datetime64[m]').astype(np.int64)
  return out


def banks(transactions: pd.DataFrame) -> pd.DataFrame:
  """Per bank: transactions it sees and laundering ones among them."""
  both = pd.concat([
      transactions[['from_bank', 'is_laundering']].set_axis(['bank', 'label'], axis=1),
      transactions.loc[transactions['from_bank'] != transactions['to_bank'],
                       ['to_bank', 'is_laundering']].set_axis(['bank', 'label'], axis=1),
  ])
  return both.groupby('bank', observed=True)['label'].agg(transactions='size', laundering='sum').reset_index()


@dataclasses.dataclass(frozen=True)
class BankView:
  """Bank `bank`'s transactions (see the module docstring)."""

  bank: str
  rows: pd.DataFrame  # `read`'s columns plus `direction` and `customer`, in time order.


def bank_view(transactions: pd.DataFrame, bank: str) -> BankView:
  sends = (transactions['from_bank'] == bank).to_numpy()
  receives = (transactions['to_bank'] == bank).to_numpy()
  rows = transactions[sends | receives].copy()
  # One bank's rows are few: plain text is what the per-bank code expects.
  rows = rows.astype({c: str for c in _CATEGORICAL if c in rows})
  sends, receives = sends[sends | receives], receives[sends | receives]
  rows['direction'] = np.where(sends & receives, 'internal', np.where(sends, 'outgoing', 'incoming'))
  rows['customer'] = np.where(sends, rows['from_account'], rows['to_account'])
  return BankView(bank=bank, rows=rows.sort_values('minute', kind='stable'))

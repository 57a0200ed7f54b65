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
DIRECTIONS = ('outgoing', 'incoming', 'internal')


def read(path: str) -> pd.DataFrame:
  """Reads and validates an AMLworld file.

  Returns:
    One row per transaction, in file order, with `COLUMNS`: amounts as float64, `is_laundering` as int64 (0/1), the rest
    as text (`timestamp` as written, 'YYYY/MM/DD HH:MM'); plus `minute`
    (int64 minutes since the epoch).

  Raises:
    DataError: naming the file, line and column of the first problem.
  """
  raw = schema_lib.read_csv(path)
  # pandas renames the second `Account` to `Account.1`.
  expected = list(HEADER[:4]) + ['Account.1'] + list(HEADER[5:])
  if list(raw.columns) != expected:
    got = [c.replace('Account.1', 'Account') for c in raw.columns]
    raise schema_lib.DataError(
        f'{path}: header is {got}; an AMLworld transactions file has {list(HEADER)}.')
  if raw.empty:
    raise schema_lib.DataError(f'{path}: has a header but no transactions.')
  raw.columns = list(COLUMNS)
  return parse(raw, source=path)


def parse(raw: pd.DataFrame, *, source: str, header_lines: int = 1) -> pd.DataFrame:
  """Validates text cells named by `COLUMNS` (see `read`)."""

  def fail(mask, column, problem):
    row = int(np.flatnonzero(mask)[0])
    where = f'line {row + 1 + header_lines}' if header_lines else f'row {row}'
    name = HEADER[COLUMNS.index(column)]
    raise schema_lib.DataError(
        f'{source}: {where}, column {name!r}: {raw[column].iloc[row]!r} {problem}.')

  out = pd.DataFrame(index=pd.RangeIndex(len(raw)))
  for column in COLUMNS:
    text = raw[column].astype(str).str.strip()
    empty = (text == '').to_numpy()
    if empty.any():
      fail(empty, column, 'is empty')
    out[column] = text.to_numpy()
  timestamp = pd.to_datetime(out['timestamp'], format=TIMESTAMP_FORMAT, errors='coerce')
  bad = timestamp.isna().to_numpy() | ~out['timestamp'].str.fullmatch(_TIMESTAMP_PATTERN).to_numpy()
  if bad.any():
    fail(bad, 'timestamp', 'is not a timestamp YYYY/MM/DD HH:MM')
  for column in ('amount_received', 'amount_paid'):
    amount = pd.to_numeric(out[column], errors='coerce').to_numpy(np.float64)
    if not np.isfinite(amount).all():
      fail(~np.isfinite(amount), column, 'is not a finite number')
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
  return both.groupby('bank')['label'].agg(transactions='size', laundering='sum').reset_index()


@dataclasses.dataclass(frozen=True)
class BankView:
  """Bank `bank`'s transactions (see the module docstring)."""

  bank: str
  rows: pd.DataFrame  # `read`'s columns plus `direction` and `customer`, in time order.


def bank_view(transactions: pd.DataFrame, bank: str) -> BankView:
  sends = (transactions['from_bank'] == bank).to_numpy()
  receives = (transactions['to_bank'] == bank).to_numpy()
  rows = transactions[sends | receives].copy()
  sends, receives = sends[sends | receives], receives[sends | receives]
  rows['direction'] = np.where(sends & receives, 'internal', np.where(sends, 'outgoing', 'incoming'))
  rows['customer'] = np.where(sends, rows['from_account'], rows['to_account'])
  return BankView(bank=bank, rows=rows.sort_values('minute', kind='stable'))

import os

from absl.testing import parameterized
import numpy as np
import tensorflow as tf

from tffaml.data import amlworld
from tffaml.data import schema as schema_lib

HEADER = ','.join(amlworld.HEADER)
ROWS = [
    '2022/09/01 00:20,010,A1,010,A2,100.00,US Dollar,100.00,US Dollar,ACH,0',  # Internal to 010.
    '2022/09/01 00:25,010,A1,020,B1,90.00,Euro,100.00,US Dollar,Wire,1',  # 010 -> 020.
    '2022/09/01 00:10,030,C1,010,A2,5.00,US Dollar,5.00,US Dollar,Cash,0',  # 030 -> 010, earlier.
    '2022/09/01 01:00,020,B1,030,C1,7.50,US Dollar,7.50,US Dollar,Cheque,0',  # 020 -> 030.
]


def write(directory, rows=ROWS, header=HEADER):
  path = os.path.join(directory, 'transactions.csv')
  with open(path, 'w') as f:
    f.write('\n'.join([header] + rows) + '\n')
  return path


class ReadTest(tf.test.TestCase, parameterized.TestCase):

  def test_parses_the_published_format(self):
    table = amlworld.read(write(self.create_tempdir().full_path))
    self.assertEqual(list(table.columns), list(amlworld.COLUMNS) + ['minute'])
    self.assertEqual(table['from_bank'].tolist(), ['010', '010', '030', '020'])  # Leading zeros kept.
    self.assertEqual(table['is_laundering'].tolist(), [0, 1, 0, 0])
    self.assertAllClose(table['amount_received'], [100.0, 90.0, 5.0, 7.5])
    self.assertEqual(table['minute'][1] - table['minute'][0], 5)
    self.assertEqual(table['timestamp'][0], '2022/09/01 00:20')

  @parameterized.named_parameters(
      ('timestamp', 1, 0, '2022-09-01 00:25', r"line 3, column 'Timestamp': '2022-09-01 00:25' is not a timestamp"),
      ('unpadded_timestamp', 0, 0, '2022/9/1 00:20', r"line 2, column 'Timestamp': '2022/9/1 00:20' is not a timestamp"),
      ('amount', 2, 7, '5,0', r"line 4, column 'Amount Paid': '5,0' is not a finite number"),
      ('negative', 3, 5, '-7.50', r"line 5, column 'Amount Received': '-7.50' is negative"),
      ('empty_bank', 1, 3, '', r"line 3, column 'To Bank': '' is empty"),
      ('label', 0, 10, 'yes', r"line 2, column 'Is Laundering': 'yes' is not 0 or 1"),
      ('huge_amount', 3, 7, '1e200', r"line 5, column 'Amount Paid': '1e200' exceeds 1e\+18"),
  )
  def test_bad_cell_is_named(self, row, column, value, message):
    rows = [r.split(',') for r in ROWS]
    rows[row][column] = value
    path = write(self.create_tempdir().full_path,
                 [','.join(f'"{c}"' if ',' in c else c for c in r) for r in rows])
    for chunk_rows in (amlworld.CHUNK_ROWS, 1, 3):  # The line is the file's, in any chunk.
      with self.assertRaisesRegex(schema_lib.DataError, f'{path}: {message}'):
        amlworld.read(path, chunk_rows=chunk_rows)

  def test_label_column_optional_only_when_scoring(self):
    path = write(self.create_tempdir().full_path, [r.rsplit(',', 1)[0] for r in ROWS],
                 header=','.join(amlworld.HEADER[:-1]))
    with self.assertRaisesRegex(schema_lib.DataError, 'an AMLworld transactions file has'):
      amlworld.read(path)
    table = amlworld.read(path, require_label=False)
    self.assertFalse(table.attrs['labelled'])
    self.assertEqual(table['is_laundering'].tolist(), [0] * 4)
    self.assertTrue(amlworld.read(write(self.create_tempdir().full_path), require_label=False).attrs['labelled'])

  @parameterized.parameters(1, 3)
  def test_chunks_read_as_one(self, chunk_rows):
    path = write(self.create_tempdir().full_path)
    whole, chunked = amlworld.read(path), amlworld.read(path, chunk_rows=chunk_rows)
    self.assertEqual(whole.astype(str).values.tolist(), chunked.astype(str).values.tolist())
    # Text columns are categorical, with every chunk's values among the categories.
    self.assertEqual(chunked['from_bank'].dtype, 'category')
    self.assertEqual(chunked['to_account'].tolist(), ['A2', 'B1', 'A2', 'C1'])

  def test_wrong_columns(self):
    header = HEADER.replace('Payment Format', 'Format')
    path = write(self.create_tempdir().full_path, header=header)
    with self.assertRaisesRegex(schema_lib.DataError, r"header is \[.*'Format'.*\]; an AMLworld"):
      amlworld.read(path)

  def test_no_rows(self):
    path = write(self.create_tempdir().full_path, rows=[])
    with self.assertRaisesRegex(schema_lib.DataError, 'no transactions'):
      amlworld.read(path)


class BankViewTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.table = amlworld.read(write(self.create_tempdir().full_path))

  def test_a_bank_sees_the_rows_touching_its_accounts_in_time_order(self):
    view = amlworld.bank_view(self.table, '010')
    self.assertEqual(view.rows.index.tolist(), [2, 0, 1])  # 00:10, 00:20, 00:25.
    self.assertEqual(view.rows['direction'].tolist(), ['incoming', 'internal', 'outgoing'])
    self.assertEqual(view.rows['customer'].tolist(), ['A2', 'A1', 'A1'])

  def test_a_payment_between_banks_is_at_both(self):
    self.assertIn(1, amlworld.bank_view(self.table, '020').rows.index)
    counts = amlworld.banks(self.table).set_index('bank')
    self.assertEqual(counts.loc['010', 'transactions'], 3)  # The internal payment once.
    self.assertEqual(counts.loc['020', 'transactions'], 2)
    self.assertEqual(counts.loc['020', 'laundering'], 1)
    self.assertEqual(counts['transactions'].sum(), len(self.table) + np.sum(
        self.table['from_bank'] != self.table['to_bank']))

"""score_csv never destroys its input, never hides a column, and names rejected rows' lines."""

import os
import subprocess
import sys

import pandas as pd
import tensorflow as tf

from tests import helpers
from tffaml import errors
from tffaml import features
from tffaml.data import csv_dir
from tffaml.data import schema as schema_lib
from tffaml.export import scoring

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ScoringTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = os.path.join(tf.compat.v1.test.get_temp_dir(), 'rate_model')
    helpers.export_rate_model(cls.model)

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.loans = os.path.join(self.root, 'loans.csv')
    helpers.institution_frame(20, seed=0).to_csv(self.loans, index=False)
    with open(self.loans) as f:
      self.original = f.read()

  def _assert_input_intact(self):
    with open(self.loans) as f:
      self.assertEqual(f.read(), self.original)

  def test_output_that_is_the_input_is_refused_however_spelled(self):
    link = os.path.join(self.root, 'link.csv')
    os.symlink(self.loans, link)
    hard = os.path.join(self.root, 'hard.csv')
    os.link(self.loans, hard)
    for output in (self.loans, os.path.join(self.root, '.', 'loans.csv'), link, hard):
      with self.assertRaisesRegex(errors.InputError, 'is the input file .* would overwrite it'):
        scoring.score_csv(self.model, self.loans, output, public_key=None)
      self._assert_input_intact()

  def test_input_columns_named_like_outputs_are_refused(self):
    for column in ('probability', 'label', 'flags'):
      clashing = os.path.join(self.root, f'{column}.csv')
      pd.read_csv(self.loans).assign(**{column: 1}).to_csv(clashing, index=False)
      output = os.path.join(self.root, 'scored.csv')
      with self.assertRaisesRegex(errors.InputError, rf"has column\(s\) \['{column}'\], which the output adds"):
        scoring.score_csv(self.model, clashing, output, public_key=None)
      self.assertFalse(os.path.exists(output))

  def test_rejected_rows_keep_their_file_lines_and_float32_overflow_is_rejected(self):
    frame = pd.read_csv(self.loans, dtype=str)
    frame.loc[2, 'note'] = 'a note\nover\nthree lines'
    frame.loc[5, 'rate'] = '1e39'  # Beyond float32.
    frame.to_csv(self.loans, index=False)
    output = os.path.join(self.root, 'scored.csv')
    result = scoring.score_csv(self.model, self.loans, output, public_key=None)
    self.assertEqual((result.scored, result.rejected), (19, 1))
    rejected = pd.read_csv(result.rejected_path)
    self.assertEqual(rejected['line'].tolist(), [9])  # Header, rows 0-4 (row 2 on three lines).
    self.assertIn("rate: '1e39' is beyond the model's float32 range", rejected['reasons'][0])
    self.assertTrue(pd.read_csv(output)['probability'].notna().all())


  def test_rows_with_non_finite_derived_inputs_are_rejected_not_scored(self):
    # E.g. account aggregates that overflowed float32: they would score as NaN, "no alert".
    rows = pd.read_csv(self.loans)
    inputs = {'amount': rows['amount'].to_numpy(float), 'grade': rows['grade'].to_numpy(str)}
    inputs['amount'][[3, 11]] = [float('inf'), 1e39]
    kept, kept_inputs, rejected = scoring._reject_non_finite(rows, inputs, self.loans)
    self.assertLen(kept, 18)
    self.assertLen(kept_inputs['grade'], 18)
    self.assertEqual(rejected['line'].tolist(), [5, 13])
    self.assertIn('amount: not a finite float32', rejected['reasons'][0])


  def test_training_rows_find_every_category_in_the_vocabulary_whatever_their_spaces(self):
    # Training kept ' A' as its own category and scoring stripped it: every row out of vocabulary.
    data_dir, _ = helpers.write_federation(self.root)
    for bank in os.listdir(data_dir):
      path = os.path.join(data_dir, bank, 'train.csv')
      frame = pd.read_csv(path, dtype=str)
      frame['grade'] = [f' {g}' if i % 3 else f'{g}  ' for i, g in enumerate(frame['grade'])]
      frame.to_csv(path, index=False)
    schema = schema_lib.Schema.from_dict(helpers.SCHEMA)
    space = features.compute_feature_space(csv_dir.load(data_dir, schema), min_category_count=1).to_dict()
    raw = schema_lib.read_csv(os.path.join(data_dir, 'bank_a', 'train.csv'))
    _, accepted, rejects, flags = scoring.check_rows(raw, schema, space, source='train.csv')
    self.assertTrue(accepted.all(), rejects)
    self.assertEqual([f for f in flags if f], [])
    self.assertCountEqual(space['vocabulary']['grade'], ['A', 'B', 'C'])

  def test_missing_markers_are_rejected_like_an_empty_cell(self):
    frame = pd.read_csv(self.loans, dtype=str, keep_default_na=False)
    frame.loc[[1, 2, 3, 4, 5], 'grade'] = ['NA', 'null', ' NaN ', '', 'None']
    frame.to_csv(self.loans, index=False)
    result = scoring.score_csv(self.model, self.loans, os.path.join(self.root, 'out.csv'), public_key=None)
    rejected = pd.read_csv(result.rejected_path)
    self.assertEqual(rejected['line'].tolist(), [3, 4, 5, 6])
    self.assertTrue(rejected['reasons'].str.fullmatch('grade: missing').all())
    self.assertEqual((result.scored, result.flagged), (16, 1))  # 'None' is a category, unknown here.

  def test_excel_files_score_as_their_utf8_copy_or_are_refused_in_one_line(self):
    expected = pd.read_csv(self._scored(self.loans))
    unicode_text = os.path.join(self.root, 'unicode.txt')  # Excel's "Unicode text": UTF-16, tabs.
    pd.read_csv(self.loans, dtype=str).to_csv(unicode_text, index=False, sep='\t', encoding='utf-16')
    pd.testing.assert_frame_equal(pd.read_csv(self._scored(unicode_text)), expected)
    legacy = os.path.join(self.root, 'cp1252.csv')
    pd.read_csv(self.loans, dtype=str).assign(note='café').to_csv(legacy, index=False, encoding='cp1252')
    done = subprocess.run([sys.executable, 'scripts/score.py', f'--model_dir={self.model}', f'--input={legacy}',
                           f'--output={self.root}/x.csv', '--noverify'], cwd=_ROOT, capture_output=True,
                          text=True, timeout=300)
    self.assertNotEqual(done.returncode, 0)
    self.assertRegex(done.stderr, r'error: .*cp1252.csv: line 2: byte 0xE9 is not UTF-8.*"encoding": "cp1252"')
    self.assertNotIn('Traceback', done.stderr)

  def _scored(self, path):
    output = f'{path}.scored.csv'
    scoring.score_csv(self.model, path, output, public_key=None)
    return output

if __name__ == '__main__':
  tf.test.main()

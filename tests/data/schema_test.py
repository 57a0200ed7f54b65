import json
import os

from absl.testing import parameterized
import pandas as pd
import tensorflow as tf

from tests import helpers
from tffaml.data import csv_dir
from tffaml.data import schema as schema_lib

SCHEMA = schema_lib.Schema.from_dict(helpers.SCHEMA)


class CsvDirValidationTest(tf.test.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path
    self.data_dir, _ = helpers.write_federation(self.root)
    self.train_b = os.path.join(self.data_dir, 'bank_b', 'train.csv')

  def _edit(self, path, edit):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(frame)
    frame.to_csv(path, index=False)

  def test_valid_federation_loads(self):
    data = csv_dir.load(self.data_dir, SCHEMA)
    self.assertEqual(data.names, ['bank_a', 'bank_b', 'bank_c'])
    self.assertNotIn('note', data.institutions[0].train.columns)
    self.assertEqual(data.institutions[0].train['amount'].dtype, float)

  @parameterized.named_parameters(
      ('missing_column', lambda f: f.drop(columns=['rate'], inplace=True),
       r"bank_b/train.csv: missing column\(s\) \['rate'\]"),
      ('not_a_number', lambda f: f.loc.__setitem__((4, 'amount'), 'abc'),
       r"bank_b/train.csv: line 6, column 'amount': 'abc' is not a number"),
      ('nan', lambda f: f.loc.__setitem__((2, 'rate'), 'nan'),
       r"bank_b/train.csv: line 4, column 'rate': 'nan' is not a number"),
      ('inf', lambda f: f.loc.__setitem__((3, 'rate'), 'inf'),
       r"bank_b/train.csv: line 5, column 'rate': 'inf' is not finite"),
      ('empty_cell', lambda f: f.loc.__setitem__((7, 'grade'), ''),
       r"bank_b/train.csv: line 9, column 'grade': missing value"),
      ('label_not_binary', lambda f: f.loc.__setitem__((5, 'default'), '2'),
       r"bank_b/train.csv: label column 'default' is not binary"),
      ('one_class', lambda f: f.__setitem__('default', '0'),
       r"institution 'bank_b' train split: holds only negative examples"),
      ('no_rows', lambda f: f.drop(index=f.index, inplace=True),
       r'bank_b/train.csv: has a header but no rows'),
      ('beyond_float32', lambda f: f.loc.__setitem__((6, 'amount'), '1e200'),
       r"bank_b/train.csv: line 8, column 'amount': '1e200' is beyond ±3.4e\+38, the largest number"
       r' the model \(float32\) can hold'),
      ('beyond_float32_negative', lambda f: f.loc.__setitem__((0, 'rate'), '-4e38'),
       r"bank_b/train.csv: line 2, column 'rate': '-4e38' is beyond"),
  )
  def test_bad_input_names_file_row_and_column(self, edit, message):
    self._edit(self.train_b, edit)
    with self.assertRaisesRegex(schema_lib.DataError, message):
      csv_dir.load(self.data_dir, SCHEMA)

  def test_extra_fields_in_a_row(self):
    with open(self.train_b, 'a') as f:
      f.write('1,2,A,x,acct0,0,surplus\n')
    with self.assertRaisesRegex(schema_lib.DataError, r'bank_b/train.csv: malformed CSV.*line 62'):
      csv_dir.load(self.data_dir, SCHEMA)

  def test_duplicate_header_names_are_refused_not_renamed(self):
    with open(self.train_b) as f:
      lines = f.read().splitlines()
    lines[0] = lines[0].replace('note', 'amount')  # pandas would read the second as 'amount.1'.
    with open(self.train_b, 'w') as f:
      f.write('\n'.join(lines) + '\n')
    with self.assertRaisesRegex(schema_lib.DataError,
                                r"bank_b/train.csv: line 1: column\(s\) \['amount'\] appear more than once"):
      csv_dir.load(self.data_dir, SCHEMA)

  def test_line_numbers_count_quoted_cells_that_span_lines(self):
    self._edit(self.train_b, lambda f: f.loc.__setitem__((1, 'note'), 'two\nthree\nfour\nlines'))
    self._edit(self.train_b, lambda f: f.loc.__setitem__((4, 'amount'), 'abc'))
    # Row 4 is on line 9: the header, rows 0-3 (row 1 takes four lines), then it.
    with self.assertRaisesRegex(schema_lib.DataError, r"bank_b/train.csv: line 9, column 'amount'"):
      csv_dir.load(self.data_dir, SCHEMA)

  def test_institution_linked_to_another_is_refused(self):
    os.symlink(os.path.join(self.data_dir, 'bank_a'), os.path.join(self.data_dir, 'bank_z'))
    with self.assertRaisesRegex(schema_lib.DataError, r'bank_z and .*bank_a are the same data'):
      csv_dir.load(self.data_dir, SCHEMA)
    os.remove(os.path.join(self.data_dir, 'bank_z'))
    os.makedirs(os.path.join(self.data_dir, 'bank_z'))
    for split in ('train', 'test'):
      os.symlink(os.path.join(self.data_dir, 'bank_c', f'{split}.csv'),
                 os.path.join(self.data_dir, 'bank_z', f'{split}.csv'))
    with self.assertRaisesRegex(schema_lib.DataError, r'bank_z/train.csv and .*bank_c/train.csv are the same'):
      csv_dir.load(self.data_dir, SCHEMA)

  def test_missing_test_file(self):
    os.remove(os.path.join(self.data_dir, 'bank_c', 'test.csv'))
    with self.assertRaisesRegex(schema_lib.DataError, r'bank_c/test.csv: file not found'):
      csv_dir.load(self.data_dir, SCHEMA)

  def test_labels_compare_as_numbers(self):
    self._edit(self.train_b, lambda f: f.__setitem__('default', f['default'].map({'0': '0.0', '1': '1.0'})))
    data = csv_dir.load(self.data_dir, SCHEMA)
    self.assertGreater(data.institutions[1].train['__label__'].sum(), 0)


class SchemaFileTest(tf.test.TestCase):

  def _write(self, value):
    path = os.path.join(self.create_tempdir().full_path, 'schema.json')
    with open(path, 'w') as f:
      json.dump(value, f)
    return path

  def test_unknown_key(self):
    path = self._write(dict(helpers.SCHEMA, numerics=['x']))
    with self.assertRaisesRegex(schema_lib.DataError, r"schema.json: unknown key\(s\) \['numerics'\]"):
      schema_lib.Schema.from_json(path)

  def test_a_feature_name_no_signature_can_take_is_refused_with_a_new_name(self):
    # Each failed in tf.saved_model.save after training, or was renamed there.
    for name, suggestion in (('self', 'self_'), ('class', 'class_'), ('Annual Income', 'Annual_Income'),
                             ('x-y', 'x_y'), ('1st_payment', 'c_1st_payment'), ('montant_é', 'montant')):
      path = self._write(dict(helpers.SCHEMA, numeric=['amount', name]))
      with self.assertRaisesRegex(schema_lib.DataError, f"schema.json: column '{name}' cannot name an input"
                                  f".* Rename it, e.g. to '{suggestion}'"):
        schema_lib.Schema.from_json(path)
    schema_lib.Schema.from_dict(dict(helpers.SCHEMA, numeric=['amount', 'Self_employed', 'x_2']))

  def test_label_as_feature(self):
    path = self._write(dict(helpers.SCHEMA, numeric=['amount', 'default']))
    with self.assertRaisesRegex(schema_lib.DataError, r"schema.json: label column 'default' is also named"):
      schema_lib.Schema.from_json(path)


class UnitColumnTest(tf.test.TestCase):

  def _schema(self, **extra):
    return schema_lib.Schema.from_dict(dict(helpers.SCHEMA, **extra))

  def test_unit_is_kept_for_training_and_not_needed_for_scoring(self):
    schema = self._schema(unit='note')
    frame = helpers.institution_frame(10, seed=0)
    train = schema_lib.validate_frame(frame, schema, source='t.csv')
    self.assertAllEqual(train[schema_lib.UNIT_COLUMN], ['ignored column'] * 10)
    scoring = schema_lib.validate_frame(frame.drop(columns=['note', 'default']), schema,
                                        source='s.csv', require_label=False)
    self.assertNotIn(schema_lib.UNIT_COLUMN, scoring)
    self.assertEqual(schema.to_dict()['unit'], 'note')

  def test_missing_unit_value_is_named(self):
    frame = helpers.institution_frame(10, seed=0).astype(str)
    frame.loc[3, 'note'] = ''
    with self.assertRaisesRegex(schema_lib.DataError, "t.csv: line 5, column 'note': missing value"):
      schema_lib.validate_frame(frame, self._schema(unit='note'), source='t.csv')

  def test_unit_cannot_be_a_feature(self):
    with self.assertRaisesRegex(schema_lib.DataError, "unit column 'rate' is also the label or a feature"):
      self._schema(unit='rate')


class LabelAgreementTest(tf.test.TestCase):
  """Every institution's train and test files code the label with the same two values."""

  def setUp(self):
    super().setUp()
    self.data_dir, _ = helpers.write_federation(self.create_tempdir().full_path)

  def _recode(self, bank, split, mapping):
    path = os.path.join(self.data_dir, bank, f'{split}.csv')
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame['default'] = frame['default'].map(mapping)
    frame.to_csv(path, index=False)

  def test_a_test_file_labelled_with_one_foreign_value_is_refused(self):
    # It loaded as all negatives: one value, so nothing was checked.
    self._recode('bank_b', 'test', {'0': 'yes', '1': 'yes'})
    with self.assertRaisesRegex(schema_lib.DataError, r"bank_b/test.csv: line 2, label column 'default': 'yes' is"
                                r" neither the positive value '1' nor '0'.* name both in the schema"):
      csv_dir.load(self.data_dir, SCHEMA)

  def test_a_bank_coding_another_pair_is_refused_not_trained_inverted(self):
    # 1 = good, 2 = bad: its "positives" would be the non-defaults.
    for split in ('train', 'test'):
      self._recode('bank_c', split, {'0': '1', '1': '2'})
    with self.assertRaisesRegex(schema_lib.DataError,
                                r"bank_c/train.csv: line \d+, label column 'default': '2' is neither the"
                                r" positive value '1' nor '0', the negative value 4 source\(s\) hold"):
      csv_dir.load(self.data_dir, SCHEMA)

  def test_the_schemas_negative_value_is_required_of_every_file(self):
    schema = schema_lib.Schema.from_dict(dict(helpers.SCHEMA, negative='0'))
    self.assertEqual(schema.to_dict()['negative'], '0')
    self.assertLen(csv_dir.load(self.data_dir, schema).institutions, 3)
    self._recode('bank_a', 'test', {'0': '2', '1': '1'})
    with self.assertRaisesRegex(schema_lib.DataError, r"bank_a/test.csv: line \d+, label column 'default': '2' is"
                                r" neither the positive value '1' nor the negative value '0' the schema names"):
      csv_dir.load(self.data_dir, schema)
    with self.assertRaisesRegex(schema_lib.DataError, "'negative' \\('1.0'\\) is the positive value"):
      schema_lib.Schema.from_dict(dict(helpers.SCHEMA, negative='1.0'))

  def test_consistent_text_codings_still_load_without_negative(self):
    for bank in ('bank_a', 'bank_b', 'bank_c'):
      for split in ('train', 'test'):
        self._recode(bank, split, {'0': 'no', '1': 'yes'})
    data = csv_dir.load(self.data_dir, schema_lib.Schema.from_dict(dict(helpers.SCHEMA, positive='yes')))
    self.assertGreater(data.institutions[0].train['__label__'].sum(), 0)


class TextCellTest(tf.test.TestCase, parameterized.TestCase):
  """Whitespace, missing-value markers and NUL bytes: one rule, refused where it would mislead."""

  def setUp(self):
    super().setUp()
    self.data_dir, _ = helpers.write_federation(self.create_tempdir().full_path)
    self.train_b = os.path.join(self.data_dir, 'bank_b', 'train.csv')
    self.frame = pd.read_csv(self.train_b, dtype=str, keep_default_na=False)

  def test_surrounding_whitespace_is_no_part_of_a_category(self):
    self.frame['grade'] = [f'  {g}' if i % 2 else f'{g}\t' for i, g in enumerate(self.frame['grade'])]
    self.frame.to_csv(self.train_b, index=False)
    data = csv_dir.load(self.data_dir, SCHEMA)
    self.assertEqual(sorted(set(data.institutions[1].train['grade'])), ['A', 'B', 'C'])

  @parameterized.parameters('NA', 'null', 'NaN', ' nan ', '#N/A', 'N/A', '<NA>', 'NULL')
  def test_missing_markers_are_missing_like_an_empty_cell(self, marker):
    self.frame.loc[3, 'grade'] = marker
    self.frame.to_csv(self.train_b, index=False)
    with self.assertRaisesRegex(schema_lib.DataError, r"bank_b/train.csv: line 5, column 'grade': missing value"
                                rf" \({marker.strip()!r} marks one"):
      csv_dir.load(self.data_dir, SCHEMA)

  def test_none_stays_a_category_and_a_label_marker_is_missing(self):
    self.frame.loc[3, 'grade'] = 'None'
    self.frame.to_csv(self.train_b, index=False)
    self.assertIn('None', set(csv_dir.load(self.data_dir, SCHEMA).institutions[1].train['grade']))
    self.frame.loc[6, 'default'] = 'NA'
    self.frame.to_csv(self.train_b, index=False)
    with self.assertRaisesRegex(schema_lib.DataError, r"line 8, label column 'default': missing value"):
      csv_dir.load(self.data_dir, SCHEMA)

  def test_a_nul_byte_in_a_cell_is_refused_not_cut(self):
    with open(self.train_b) as f:
      lines = f.read().split('\n')
    cells = lines[4].split(',')
    cells[2] = 'ca\0r'  # grade: it loaded as 'ca'.
    lines[4] = ','.join(cells)
    with open(self.train_b, 'w') as f:
      f.write('\n'.join(lines))
    with self.assertRaisesRegex(schema_lib.DataError,
                                r"bank_b/train.csv: line 5, column 'grade': holds a NUL character"):
      csv_dir.load(self.data_dir, SCHEMA)


class EncodingTest(tf.test.TestCase, parameterized.TestCase):
  """Excel's exports: UTF-8 with a BOM, "Unicode text" (UTF-16, tabs), and legacy code pages."""

  def setUp(self):
    super().setUp()
    self.data_dir, _ = helpers.write_federation(self.create_tempdir().full_path)
    self.train_b = os.path.join(self.data_dir, 'bank_b', 'train.csv')
    self.frame = pd.read_csv(self.train_b, dtype=str, keep_default_na=False)
    self.frame.loc[4, 'grade'] = 'Bé'

  def _loaded(self, schema=SCHEMA):
    return csv_dir.load(self.data_dir, schema).institutions[1].train

  @parameterized.named_parameters(('utf8_bom', 'utf-8-sig', ','), ('unicode_text', 'utf-16', '\t'),
                                  ('utf16_commas', 'utf-16', ','), ('utf32', 'utf-32', ','))
  def test_a_file_with_a_bom_reads_as_its_utf8_copy(self, encoding, separator):
    self.frame.to_csv(self.train_b, index=False)
    expected = self._loaded()
    self.frame.to_csv(self.train_b, index=False, encoding=encoding, sep=separator)
    pd.testing.assert_frame_equal(self._loaded(), expected)
    self.assertIn('Bé', set(expected['grade']))

  def test_a_legacy_code_page_is_refused_in_one_line_or_read_as_the_schema_says(self):
    self.frame.to_csv(self.train_b, index=False, encoding='cp1252')
    with self.assertRaisesRegex(schema_lib.DataError, r'bank_b/train.csv: line 6: byte 0xE9 is not UTF-8: .*'
                                r'cp1252.* Save it as "CSV UTF-8".* "encoding": "cp1252"'):
      self._loaded()
    schema = schema_lib.Schema.from_dict(dict(helpers.SCHEMA, encoding='cp1252'))
    self.assertIn('Bé', set(self._loaded(schema)['grade']))
    with self.assertRaisesRegex(schema_lib.DataError, "'encoding' 'klingon' is no text encoding"):
      schema_lib.Schema.from_dict(dict(helpers.SCHEMA, encoding='klingon'))


if __name__ == '__main__':
  tf.test.main()

"""The data layer's registry of sources (`loading.LOADERS`): one entry per `loading.Source`."""

from unittest import mock

import tensorflow as tf

from tests import helpers
from tffaml import errors
from tffaml.data import interface as interface_lib
from tffaml.data import loading
from tffaml.data import transactions

Source = loading.Source


class RegistryTest(tf.test.TestCase):

  def test_every_source_has_an_entry(self):
    # A new member without its entry in LOADERS fails here, not in a run.
    self.assertCountEqual(loading.LOADERS, Source)

  def test_a_source_without_an_entry_is_refused_by_name(self):
    with mock.patch.dict(loading.LOADERS):
      del loading.LOADERS[Source.LENDING_CLUB]
      with self.assertRaisesRegex(ValueError, r'LENDING_CLUB.*has no entry in tffaml.data.loading.LOADERS'):
        loading.DataSpec(source=Source.LENDING_CLUB)

  def test_what_a_federations_coordinator_sees_of_every_source(self):
    self.assertEqual({s.value: loading.at_nodes(s).value for s in Source}, {
        'lending_club': 'federation', 'csv_dir': 'federation', 'federation': 'federation',
        'amlworld': 'amlworld_federation', 'amlworld_federation': 'amlworld_federation'})

  def test_the_sources_with_a_fixed_schema_export_transactions(self):
    schema = helpers.load_federation().schema
    for source in Source:
      fixed = loading.loader(source).schema
      self.assertIn(fixed, (None, transactions.SCHEMA), source)
      expected = transactions.interface() if fixed else interface_lib.table_interface(schema)
      self.assertEqual(loading.interface(source, schema).input_format, expected.input_format, source)
      self.assertEqual(set(loading.interface(source, schema).inputs), set(expected.inputs), source)


class DataSpecTest(tf.test.TestCase):

  def test_each_source_checks_its_own_fields(self):
    for source, message in ((Source.CSV_DIR, 'needs directory and schema_file'),
                            (Source.FEDERATION, 'needs the agreed schema_file'),
                            (Source.AMLWORLD, 'needs a selection of banks')):
      with self.assertRaisesRegex(errors.InputError, message):
        loading.DataSpec(source=source)
    loading.DataSpec(source=Source.LENDING_CLUB)
    loading.DataSpec(source=Source.AMLWORLD_FEDERATION)

  def test_only_the_streaming_sources_take_stream(self):
    with self.assertRaisesRegex(errors.InputError, "stream is for the amlworld and csv_dir sources, not 'lending_club'"):
      loading.DataSpec(source=Source.LENDING_CLUB, stream=True)
    self.assertEqual([s.value for s in Source if loading.loader(s).streams], ['csv_dir', 'amlworld'])

  def test_a_federations_rows_are_refused_here(self):
    for source in (Source.FEDERATION, Source.AMLWORLD_FEDERATION):
      with self.assertRaisesRegex(errors.InputError, "the rows are at the institutions' nodes"):
        loading.load(loading.DataSpec(source=source, schema_file='schema.json'), seed=0)

  def test_csv_dir_loads_the_directory(self):
    data_dir, schema_file = helpers.write_federation(self.get_temp_dir())
    data = loading.load(loading.DataSpec(source=Source.CSV_DIR, directory=data_dir, schema_file=schema_file), seed=0)
    self.assertEqual([i.name for i in data.institutions], ['bank_a', 'bank_b', 'bank_c'])


if __name__ == '__main__':
  tf.test.main()

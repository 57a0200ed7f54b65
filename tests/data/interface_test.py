"""The serving interface a kind of data declares."""

import tensorflow as tf

from tffaml.data import interface
from tffaml.data import schema as schema_lib

_SCHEMA = schema_lib.Schema(label='default', positive='1', numeric=('amount', 'rate'), categorical=('grade',))


class InterfaceTest(tf.test.TestCase):

  def test_a_table_takes_the_schemas_features_and_nothing_else(self):
    table = interface.table_interface(_SCHEMA)
    self.assertEqual(list(table.inputs), ['amount', 'rate', 'grade'])
    self.assertEqual(table.inputs['amount'], tf.TensorSpec([None], tf.float32, name='amount'))
    self.assertEqual(table.inputs['grade'], tf.TensorSpec([None], tf.string, name='grade'))
    self.assertNotIn(_SCHEMA.label, table.inputs)  # The label is never a serving input.
    self.assertEqual(table.input_format, interface.InputFormat.TABLE)
    features = {'amount': tf.constant([1.0]), 'grade': tf.constant(['A'])}
    self.assertIs(table.preprocess(features), features)

  def test_to_dict_is_what_the_package_records(self):
    self.assertEqual(interface.table_interface(_SCHEMA).to_dict(),
                     {'input_format': 'table', 'inputs': ['amount', 'rate', 'grade'],
                      'score': 'probability', 'decision': 'label'})
    aml = interface.Interface(inputs={}, input_format=interface.InputFormat.AMLWORLD, score='s', decision='d')
    self.assertEqual(aml.to_dict(), {'input_format': 'amlworld', 'inputs': [], 'score': 's', 'decision': 'd'})


if __name__ == '__main__':
  tf.test.main()

"""Every error class of ours is a Refusal: the scripts report it as one line, never a traceback."""

import enum
import importlib
import inspect
import pkgutil

import tensorflow as tf

import tffaml
from tffaml import errors


class ErrorsTest(tf.test.TestCase):

  def test_every_error_class_defined_in_tffaml_is_a_refusal(self):
    found = []
    for module_info in pkgutil.walk_packages(tffaml.__path__, 'tffaml.'):
      module = importlib.import_module(module_info.name)
      for _, cls in inspect.getmembers(module, inspect.isclass):
        if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
          found.append(cls)
          self.assertTrue(issubclass(cls, errors.Refusal), f'{cls.__module__}.{cls.__name__}')
    self.assertGreaterEqual(len(found), 8)  # DataError, WorkdirError, VerificationError, ...

  def test_parse_enum_names_the_key_and_the_choices(self):
    self.assertIs(errors.parse_enum(enum.Enum('Colour', {'RED': 'red'}), 'red', 'x.y').value, 'red')
    with self.assertRaisesRegex(errors.ConfigError, r"config.x.y='blue' is not one of \['red'\]"):
      errors.parse_enum(enum.Enum('Colour', {'RED': 'red'}), 'blue', 'x.y')

  def test_named_as_renames_the_blamed_arguments_only(self):
    error = errors.InputError('f.csv: lower {min_rows} (got {min_rows}) or {alpha}.',
                              blames=('min_rows', 'alpha'))
    self.assertEqual(str(error), 'f.csv: lower min_rows (got min_rows) or alpha.')
    with self.assertRaises(errors.InputError) as raised:
      with errors.named_as({'min_rows': 'config.data.min_rows'}):
        raise error
    self.assertEqual(str(raised.exception), 'f.csv: lower config.data.min_rows (got config.data.min_rows) or alpha.')
    self.assertIsNone(raised.exception.__cause__)
    # An error that blames none of the named arguments passes through unchanged.
    with self.assertRaises(errors.InputError) as raised:
      with errors.named_as({'path': 'config.data.path'}):
        raise error
    self.assertIs(raised.exception, error)


if __name__ == '__main__':
  tf.test.main()

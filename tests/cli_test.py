"""The scripts' entry point turns flag and config-file errors into one line."""

import tensorflow as tf

from tffaml import cli


class CliTest(tf.test.TestCase):

  def test_a_config_files_traceback_becomes_its_last_line(self):
    # What ml_collections puts in the flag error when get_config raises.
    text = ('flag --config=configs/loan_risk.py:bogus: Error whilst parsing config file:\n\n'
            'Traceback (most recent call last):\n  File "configs/loan_risk.py", line 172, in _apply_preset\n'
            "    raise ValueError(f'unknown preset {preset!r}')\nValueError: unknown preset 'bogus'\n")
    self.assertEqual(cli._without_traceback(text),
                     'flag --config=configs/loan_risk.py:bogus: Error whilst parsing config file:'
                     " ValueError: unknown preset 'bogus'")
    self.assertEqual(cli._without_traceback('flag --x: bad value'), 'flag --x: bad value')

  def test_unknown_key_names_the_flag_and_the_nearest_key(self):
    error = AttributeError(KeyError('\'roundz\'\nDid you mean "rounds" instead of "roundz"?'))
    self.assertEqual(
        cli._unknown_key_message(error, ['train.py', '--config=c.py', '--config.federated.roundz=3']),
        "--config.federated.roundz: unknown config key 'roundz'; did you mean 'rounds'?"
        ' (see the config file for every key).')


if __name__ == '__main__':
  tf.test.main()

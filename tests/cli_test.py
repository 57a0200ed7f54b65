"""The scripts' entry point turns flag and config-file errors into one line."""

import os
import re
import subprocess
import sys

import tensorflow as tf

from tffaml import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


class RefusalBeforeTensorFlowTest(tf.test.TestCase):
  """A bad flag or config value is refused before TensorFlow or TFF is imported (in about a second)."""

  def test_scripts_refuse_without_importing_tensorflow(self):
    workdir = os.path.join(self.get_temp_dir(), 'never')
    cases = {
        ('train.py', '--config.federated.rounds=-1', f'--workdir={workdir}'):
            'error: config.federated.rounds must be >= 1, got -1.',
        ('train.py', '--config.runtime.workers=localhost', f'--workdir={workdir}'):
            "error: config.runtime.workers: 'localhost' is not host:port.",
        ('train.py', '--config=configs/aml.py', '--config.public.path=/nonexistent/p.csv', f'--workdir={workdir}'):
            "error: config.public.path='/nonexistent/p.csv' does not exist: give the public corpus's file",
        ('train.py', '--checkpoint_key_file=k', '--checkpoint_key_env=K', f'--workdir={workdir}'):
            'error: give one of --checkpoint_key_file and --checkpoint_key_env, not both.',
        ('lira.py', '--models=2', f'--workdir={workdir}'): 'error: --models must be at least 3, got 2.',
        ('lira.py', '--config.model.threshold=2', f'--workdir={workdir}'):
            'error: config.model.threshold must be in [0, 1], got 2.',
        ('canary_audit.py', '--config.federated.batch_size=0'):
            'error: config.federated.batch_size must be >= 1, got 0.',
        ('worker.py', '--port=1', f'--data_dir={ROOT}'): 'error: give --certificates=DIR',
        ('worker.py', '--port=1', f'--data_dir={ROOT}', f'--certificates={workdir}'):
            f'error: {workdir}/worker.key: not found',
        ('node.py', '--ca=c', '--key=k', '--coordinator_key=p', f'--workdir={workdir}'):
            'error: give the node its rows: --data_dir=<its folder>, or --transactions=',
        ('node.py', f'--transactions={ROOT}/t.csv', '--ca=c', '--key=k', '--coordinator_key=p',
         f'--workdir={workdir}'): 'error: --transactions needs an AML config',
        ('coordinator.py', f'--nodes={ROOT}', '--ca=c', '--key=k', f'--workdir={workdir}'):
            f'error: {ROOT}: no <institution>.pub keys; scripts/pki.py writes them.',
    }
    for (script, *args), message in cases.items():
      with self.subTest(' '.join([script, *args[:-1]])):
        done = subprocess.run([sys.executable, '-X', 'importtime', os.path.join('scripts', script), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, cli.EXIT_REFUSED, done.stderr[-2000:])
        self.assertIn(message, done.stderr)
        imported = re.findall(r'^import time:.*\| +(\S+)$', done.stderr, re.MULTILINE)
        self.assertIn('absl.app', imported)  # -X importtime did list the imports.
        self.assertNotIn('tensorflow', imported)
        self.assertNotIn('tensorflow_federated', imported)
        self.assertFalse(os.path.exists(workdir))


if __name__ == '__main__':
  tf.test.main()

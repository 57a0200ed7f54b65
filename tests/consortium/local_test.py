"""The local federation's pieces: institutions written as their files, and processes that all stop."""

import os
import signal
import time

import pandas as pd
import tensorflow as tf

from tests import helpers
from tffaml.data import csv_dir
from tffaml.data import schema as schema_lib
from tffaml.consortium import local


class LocalTest(tf.test.TestCase):

  def test_written_institutions_load_back_as_they_were(self):
    data = helpers.load_federation()
    data_dir, schema_file = local.write_institutions(data, self.create_tempdir().full_path)
    again = csv_dir.load(data_dir, schema_lib.Schema.from_json(schema_file))
    self.assertEqual(again.names, data.names)
    for before, after in zip(data.institutions, again.institutions):
      for split in ('train', 'test'):
        pd.testing.assert_frame_equal(getattr(before, split).reset_index(drop=True),
                                      getattr(after, split).reset_index(drop=True), check_dtype=False)

  def test_every_started_process_is_stopped_and_an_exit_is_reported(self):
    sleeper = ['python', '-c', 'import time; time.sleep(600)']
    with local.Processes(self.create_tempdir().full_path) as processes:
      first, second = processes.start('first', sleeper), processes.start('second', sleeper)
      children = list(processes._children)  # pylint: disable=protected-access
      self.assertIsNone(processes.exited())
      os.killpg(children[0].pid, signal.SIGKILL)
      children[0].wait()
      self.assertIn(first, processes.exited())
      self.assertNotIn(second, processes.exited())
    self.assertTrue(all(c.poll() is not None for c in children))
    time.sleep(0.1)
    for child in children:
      with self.assertRaises(ProcessLookupError):
        os.killpg(child.pid, 0)  # No process of its group is left.


if __name__ == '__main__':
  tf.test.main()

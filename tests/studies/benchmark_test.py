import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from tffaml.data import schema as schema_lib
from tffaml.studies import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = ('institutions', 'examples', 'round_seconds', 'fit_epoch_seconds', 'loop_epoch_seconds',
          'ratio_vs_fit', 'ratio_vs_loop', 'peak_rss_mb')


class BenchmarkTest(tf.test.TestCase):

  def test_synthetic_federation_has_both_classes_everywhere(self):
    data = benchmark.synthetic_federation(institutions=50, examples=1000, seed=0)
    self.assertLen(data.institutions, 50)
    self.assertEqual(sum(len(i.train) for i in data.institutions), 1000)
    for i in data.institutions:
      self.assertEqual(set(i.train[schema_lib.LABEL_COLUMN]), {0, 1})
    sizes = [len(i.train) for i in data.institutions]
    self.assertLessEqual(max(sizes) - min(sizes), 12)  # Dealt round-robin: about equal.

  def test_too_few_examples_for_the_institutions(self):
    with self.assertRaisesRegex(ValueError, '10 examples cannot give 6 institutions both classes'):
      benchmark.records_for([6], examples=[10], repeats=1)

  def test_peak_rss_script_measures_the_process_tree(self):
    output = os.path.join(self.create_tempdir().full_path, 'rss.json')
    # A child that holds 300 MB for a second inside a child of the command.
    child = 'import time; x = bytearray(300 << 20); time.sleep(1)'
    command = f'import subprocess, sys; sys.exit(subprocess.run([sys.executable, "-c", {child!r}]).returncode + 3)'
    done = subprocess.run(
        [sys.executable, 'scripts/peak_rss.py', f'--output={output}', '--', sys.executable, '-c', command],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    self.assertEqual(done.returncode, 3, done.stderr[-3000:])  # The command's status.
    with open(output) as f:
      report = json.load(f)
    self.assertBetween(report['peak_rss_mb'], 300, 400)
    self.assertIn('peak RSS', done.stdout)

  def test_script_writes_json_and_markdown(self):
    output = os.path.join(self.create_tempdir().full_path, 'bench.json')
    done = subprocess.run(
        # One federation size: each costs a process build and its timings (records_for's loop: above).
        [sys.executable, 'scripts/benchmark.py', '--institutions=3', '--examples=400',
         '--repeats=1', f'--output={output}'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    self.assertEqual(done.returncode, 0, done.stderr[-3000:])
    with open(output) as f:
      report = json.load(f)
    self.assertIn('cores', report['machine'])
    self.assertEqual([r['institutions'] for r in report['records']], [3])
    for record in report['records']:
      for field in FIELDS:
        self.assertGreater(record[field], 0, field)
      self.assertAllClose(record['ratio_vs_fit'],
                          record['round_seconds'] / record['fit_epoch_seconds'])
      self.assertTrue(np.isfinite(record['rss_growth_mb']))
    with open(output[:-5] + '.md') as f:
      self.assertEqual(f.read().count('\n| 3 | 400 |'), 1)


if __name__ == '__main__':
  tf.test.main()

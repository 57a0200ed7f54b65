"""Runs a command and reports the peak resident memory of it and its children.

  python scripts/peak_rss.py --output=runs/aml_10m_rss.json -- \
      python scripts/train.py --config=configs/aml.py:stream \
      --config.data.path=data/transactions_10m.csv --workdir=runs/aml_10m

The peak is of the summed RSS of the whole process tree (a training run and
its TFF worker), sampled every 50 ms; `/usr/bin/time` reports one process.
Exits with the command's status.
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli
from tffaml import io
from tffaml import rss as rss_lib

_OUTPUT = flags.DEFINE_string(
    'output', None, 'Optional JSON: the peak, the wall time and RSS every 5 s.')


def main(argv):
  command = argv[1:]
  if not command:
    raise app.UsageError('give the command after --, e.g. peak_rss.py -- python scripts/train.py ...')
  start = time.perf_counter()
  process = subprocess.Popen(command)
  with rss_lib.PeakRss(process.pid) as rss:
    status = process.wait()
  seconds = time.perf_counter() - start
  print(f'peak RSS {rss.peak:.0f} MB (process tree), {seconds:.0f} s, exit status {status}')
  if _OUTPUT.value:
    io.write_json(_OUTPUT.value, {'command': command, 'peak_rss_mb': rss.peak,
                                  'seconds': seconds, 'status': status,
                                  'timeline_seconds_mb': rss.timeline})
  sys.exit(status)


if __name__ == '__main__':
  cli.run(main)

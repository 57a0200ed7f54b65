"""Federated round time and memory against Keras on the same data and model.

  python scripts/benchmark.py --institutions=10,100,1000 --examples=20000 \
      --output=runs/benchmark.json

Writes the JSON records (one per setting; see tffaml.studies.benchmark) and a
markdown table beside them (same path, .md). Several --examples values give
growing data per institution at each institution count.

  python scripts/benchmark.py --workers=0,1,2,4 --institutions=100,1000 --examples=20000 \
      --output=runs/cluster_benchmark.json

times instead the round spread over 1, 2 and 4 TFF workers on this machine
(scripts/worker.py processes; 0: this process, with TFF's tutorial FedAvg
as the peer; see tffaml.cluster.benchmark).
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from tffaml import cli
from tffaml import io
from tffaml import runtime
from tffaml.studies import benchmark

_INSTITUTIONS = flags.DEFINE_list('institutions', ['10', '100', '1000'], 'Institution counts.')
_EXAMPLES = flags.DEFINE_list('examples', ['20000'], 'Total training rows (constant over counts).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repetitions after a warm-up.', lower_bound=1)
_WORKERS = flags.DEFINE_list('workers', [], 'Worker counts (0: this process): time the round over TFF'
                             ' workers instead.')
_PINNED = flags.DEFINE_bool('pinned', False, 'With --workers: worker k runs on core k alone.')
_OUTPUT = flags.DEFINE_string('output', None, 'JSON output path (.md written beside it).', required=True)


def _ints(flag, minimum: int = 1) -> list[int]:
  try:
    values = [int(v) for v in flag.value]
  except ValueError:
    values = []
  if not values or min(values) < minimum:
    raise app.UsageError(f'--{flag.name} must be integers >= {minimum}, got {",".join(flag.value)}.')
  return values


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  institutions, examples = _ints(_INSTITUTIONS), _ints(_EXAMPLES)
  workers = _ints(_WORKERS, minimum=0) if _WORKERS.value else None
  with runtime.local_runtime():
    if workers is None:
      records = benchmark.records_for(institutions, examples=examples, repeats=_REPEATS.value)
    else:
      from tffaml.cluster import benchmark as cluster_benchmark  # pylint: disable=g-import-not-at-top
      records = [r for count in institutions for total in examples for r in cluster_benchmark.measure(
          institutions=count, examples=total, workers=workers, repeats=_REPEATS.value, pinned=_PINNED.value)]
  machine = benchmark.machine_description()
  io.write_json(_OUTPUT.value, {'machine': machine, 'records': records})
  table = (benchmark.markdown if workers is None else cluster_benchmark.markdown)(records, machine)
  io.write_text(os.path.splitext(_OUTPUT.value)[0] + '.md', table)
  print(table)


if __name__ == '__main__':
  cli.run(main)

"""Membership-inference audit of an exported model (see tffaml.studies.audit).

  python scripts/audit.py --model_dir=runs/loan_risk/export

Attacks each institution's training rows (members) against its test rows
(non-members), prints a table and a verdict, writes JSON (default: beside
the export, `<workdir>/audit.json`). Exit status 1 when an attack's empirical
ε lower bound exceeds the model's claimed record-level ε.
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
from tffaml.studies import audit

_MODEL_DIR = flags.DEFINE_string('model_dir', None, 'A tffaml export directory.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'JSON report (default <model_dir>/../audit.json).')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  model_dir = os.path.abspath(_MODEL_DIR.value)
  report = audit.audit(model_dir)
  print(f'{"institution":40s} {"attack":20s} {"AUC":>6s} {"adv":>6s} {"TPR@0.1%":>9s} {"eps_lb":>7s}')
  for o in report.outcomes:
    print(f'{o.institution[:40]:40s} {o.attack:20s} {o.auc:6.3f} {o.advantage:6.3f}'
          f' {o.tpr_at_low_fpr:9.3f} {o.epsilon_lower_bound:7.3f}')
  output = _OUTPUT.value or os.path.join(os.path.dirname(model_dir), 'audit.json')
  io.write_json(output, report.to_dict())
  print(f'\n{report.summary()}\nreport: {output}')
  if report.violations:
    sys.exit(1)


if __name__ == '__main__':
  cli.run(main)

"""Writes synthetic transactions with injected laundering, in AMLworld format.

  python scripts/generate_transactions.py --num_banks=20 --num_transactions=1000000 \
      --seed=0 --output=data/transactions.csv

See tffaml.data.transaction_generator for the behaviour and typologies. The
same seed writes the same file; memory stays bounded by one day's rows.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli
from tffaml.data import transaction_generator

_NUM_BANKS = flags.DEFINE_integer('num_banks', 20, 'Banks in the population.')
_NUM_TRANSACTIONS = flags.DEFINE_integer('num_transactions', 1_000_000, 'Transactions to write.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of everything.')
_OUTPUT = flags.DEFINE_string('output', None, 'The CSV to write.', required=True)
_LAUNDERING_RATE = flags.DEFINE_float('laundering_rate', 0.001, 'Fraction of laundering transactions.')
_DAYS = flags.DEFINE_integer('days', 30, 'Days the file spans.')
_PATTERNS_OUTPUT = flags.DEFINE_string('patterns_output', None, 'Optional CSV of the laundering'
                                       ' payments with their pattern and typology.')


def main(argv):
  del argv
  report = transaction_generator.generate(
      _OUTPUT.value, num_banks=_NUM_BANKS.value, num_transactions=_NUM_TRANSACTIONS.value,
      seed=_SEED.value, laundering_rate=_LAUNDERING_RATE.value, days=_DAYS.value,
      patterns_output=_PATTERNS_OUTPUT.value, log=print)
  print(f'\n{report.transactions:,} transactions ({report.laundering:,} laundering in'
        f' {sum(report.patterns.values())} patterns), {report.banks} banks, {report.accounts:,}'
        f' accounts -> {_OUTPUT.value}')
  print('laundering transactions by typology: ' + ', '.join(
      f'{t} {n}' for t, n in report.laundering_by_typology.items()))
  print(f'{report.seconds:.1f} s, {report.transactions_per_second:,.0f} transactions/s')


if __name__ == '__main__':
  cli.run(main)

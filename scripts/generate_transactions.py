"""Writes synthetic transactions with injected laundering, in AMLworld format.

  python scripts/generate_transactions.py --num_banks=20 --num_transactions=1000000 \
      --seed=0 --output=data/transactions.csv [--setting=li]

See tffaml.data.transaction_generator for the behaviour and typologies. The
same seed writes the same file; memory stays bounded by one day's rows.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli
from tffaml.data import amlworld_stats
from tffaml.data import transaction_generator

_NUM_BANKS = flags.DEFINE_integer('num_banks', 20, 'Banks in the population.')
_NUM_TRANSACTIONS = flags.DEFINE_integer('num_transactions', 1_000_000, 'Transactions to write.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of everything.')
_OUTPUT = flags.DEFINE_string('output', None, 'The CSV to write.', required=True)
_SETTING = flags.DEFINE_enum_class(
    'setting', transaction_generator.Setting.HI, transaction_generator.Setting,
    'hi: laundering in patterns, easy to tell apart; li: harder, like AMLworld\'s LI files (lower rate,'
    ' most laundering disguised as normal payments).')
_LAUNDERING_RATE = flags.DEFINE_float('laundering_rate', None, 'Fraction of laundering transactions'
                                      ' (default: the setting\'s, 0.001 for hi, 1/1942 for li).')
_DAYS = flags.DEFINE_integer('days', 30, 'Days the file spans.')
_AMOUNT_SCALE = flags.DEFINE_float('amount_scale', 1.0, 'Every amount times this (structuring stays'
                                   ' just under the reporting threshold).')
_TYPOLOGIES = flags.DEFINE_list('typologies', None, 'The patterns\' typologies, in turn (repeat one to weigh'
                                ' it more); default: every typology once.')
_DESCRIBE = flags.DEFINE_bool('describe', False, 'Print the written file\'s statistics beside those'
                               ' published for AMLworld (reads the file back).')
_PATTERNS_OUTPUT = flags.DEFINE_string('patterns_output', None, 'Optional CSV of the laundering'
                                       ' payments with their pattern and typology.')


def main(argv):
  del argv
  report = transaction_generator.generate(
      _OUTPUT.value, num_banks=_NUM_BANKS.value, num_transactions=_NUM_TRANSACTIONS.value,
      seed=_SEED.value, setting=_SETTING.value, laundering_rate=_LAUNDERING_RATE.value, days=_DAYS.value,
      patterns_output=_PATTERNS_OUTPUT.value, log=print, amount_scale=_AMOUNT_SCALE.value,
      typologies=tuple(_TYPOLOGIES.value) if _TYPOLOGIES.value else None)
  print(f'\n{report.transactions:,} transactions ({report.laundering:,} laundering in'
        f' {sum(report.patterns.values())} patterns), {report.banks} banks, {report.accounts:,}'
        f' accounts -> {_OUTPUT.value}')
  print('laundering transactions by typology: ' + ', '.join(
      f'{t} {n}' for t, n in report.laundering_by_typology.items()))
  print(f'{report.seconds:.1f} s, {report.transactions_per_second:,.0f} transactions/s')
  if _DESCRIBE.value:
    stats = amlworld_stats.describe(_OUTPUT.value, patterns_path=_PATTERNS_OUTPUT.value,
                                    usd_per_unit=transaction_generator.CURRENCIES)
    print('\n' + amlworld_stats.table({f'this file ({_SETTING.value.value})': stats}))


if __name__ == '__main__':
  cli.run(main)

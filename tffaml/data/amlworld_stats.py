"""How an AMLworld-format file compares with the published AMLworld data.

Altman et al. 2023 (arXiv:2306.16424) publish, for their files:

* table 4: days, accounts, transactions and the laundering rate (one in N)
  of HI-Small and LI-Small (`PUBLISHED`);
* table 5: transactions per payment format, for LI-Large (`PUBLISHED_FORMATS`);
* table 8: of LI-Large's 100,604 laundering transactions, 19,461 follow one
  of the 8 patterns and the rest are integration payments disguised as
  other activity (`PUBLISHED_IN_PATTERNS`).

Nothing else is published per file (no amount distribution, no format mix
of the Small files), so those rows of `table` compare only our settings.
`describe` measures the same statistics on any file.
"""

from typing import Optional

import numpy as np
import pandas as pd

from tffaml.data import amlworld

PUBLISHED = {
    'HI-Small': dict(days=10, accounts=515_000, transactions=5_000_000, one_in=981),
    'LI-Small': dict(days=10, accounts=705_000, transactions=7_000_000, one_in=1942),
}
_LI_LARGE_FORMATS = {'Cheque': 69_720_485, 'Credit Card': 49_923_366, 'ACH': 21_650_558, 'Cash': 18_069_965,
                     'Reinvestment': 7_258_251, 'Wire': 6_346_402, 'Bitcoin': 3_601_817}
PUBLISHED_FORMATS = {k: v / sum(_LI_LARGE_FORMATS.values()) for k, v in _LI_LARGE_FORMATS.items()}
PUBLISHED_IN_PATTERNS = 19_461 / 100_604


def describe(path: str, *, patterns_path: Optional[str] = None,
             usd_per_unit: Optional[dict[str, float]] = None) -> dict:
  """The file's statistics (`table`'s rows); the patterns file gives the share in patterns.

  `usd_per_unit` converts paid amounts to USD for the amount quantiles;
  without it, only payments made in US dollars count.
  """
  frame = amlworld.read(path)
  accounts = pd.concat([frame[['from_bank', 'from_account']].set_axis(['bank', 'account'], axis=1),
                        frame[['to_bank', 'to_account']].set_axis(['bank', 'account'], axis=1)])
  laundering = frame['is_laundering'].to_numpy() == 1
  formats = frame['payment_format'].astype(str)
  out = dict(days=(frame['minute'].max() - frame['minute'].min()) / (24 * 60),
             accounts=len(accounts.drop_duplicates()), transactions=len(frame),
             one_in=len(frame) / max(1, laundering.sum()),
             formats=formats.value_counts(normalize=True).to_dict(),
             laundering_formats=formats[laundering].value_counts(normalize=True).to_dict())
  rates = usd_per_unit or {'US Dollar': 1.0}
  usd = frame['amount_paid'].to_numpy() * frame['payment_currency'].astype(str).map(rates).to_numpy(np.float64)
  for name, mask in (('normal', ~laundering), ('laundering', laundering)):
    out[f'{name}_usd'] = np.nanquantile(usd[mask], [0.5, 0.99]) if np.isfinite(usd[mask]).any() else None
  if patterns_path:
    typology = pd.read_csv(patterns_path, usecols=['typology'])['typology']
    out['in_patterns'] = float((typology != 'integration').mean())
  return out


def _percent(share: Optional[float]) -> str:
  return '' if share is None else f'{100 * share:.1f}%'


def table(files: dict[str, dict]) -> str:
  """A markdown table: the published files' statistics beside each described file's."""
  every_format = sorted(set(PUBLISHED_FORMATS).union(*(f.get('formats', {}) for f in files.values())))
  rows = [('days', lambda s: f'{s["days"]:.0f}'),
          ('accounts', lambda s: f'{s["accounts"]:,}'),
          ('transactions', lambda s: f'{s["transactions"]:,}'),
          ('laundering: one in', lambda s: f'{s["one_in"]:,.0f}'),
          ('laundering in patterns (not integration)', lambda s: _percent(s.get('in_patterns'))),
          *[(f'format {f}', lambda s, f=f: _percent(s['formats'].get(f, 0.0))) for f in every_format],
          *[(f'format {f}, of laundering', lambda s, f=f: _percent(s['laundering_formats'].get(f, 0.0)))
            for f in every_format],
          ('USD paid, median / 99th percentile: normal', lambda s: _quantiles(s.get('normal_usd'))),
          ('USD paid, median / 99th percentile: laundering', lambda s: _quantiles(s.get('laundering_usd')))]
  published = dict(PUBLISHED, **{'LI-Large (formats, patterns)': dict(
      formats=PUBLISHED_FORMATS, in_patterns=PUBLISHED_IN_PATTERNS)})
  columns = {**published, **files}
  lines = ['| | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
  for name, cell in rows:
    lines.append(f'| {name} | ' + ' | '.join(_cell(cell, s) for s in columns.values()) + ' |')
  return '\n'.join(lines)


def _cell(cell, stats: dict) -> str:
  try:
    return cell(stats)
  except KeyError:  # Not published for this file.
    return ''


def _quantiles(values) -> str:
  return '' if values is None else f'{values[0]:,.0f} / {values[1]:,.0f}'

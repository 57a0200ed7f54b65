"""Synthetic bank transactions with injected money laundering, AMLworld format.

The population: `num_banks` banks of Zipf-distributed sizes (the largest
holds several times the median's accounts), each with people and businesses
(8%) holding accounts in the bank's currency (a few in a foreign one).

Normal behaviour, drawn day by day:

* purchases and bills (people to businesses; popular businesses get most),
  card, ACH and cheque payments;
* person-to-person transfers (ACH, wire, cheque, cash; some round amounts);
* salaries (businesses to people, early on weekdays, most on Fridays);
* business-to-business payments (Pareto-tailed amounts, office hours);
* reinvestments (an account paying itself, as in AMLworld).

Amounts are log-normal per kind (Pareto for business payments); people pay
during the day, fewer at night; weekends carry 60% of a weekday's traffic.
About 60% of payments stay within the payer's bank.

Laundering is injected as the AMLworld typologies (Altman et al. 2023,
arXiv:2306.16424, fig. 2) - fan-out, fan-in, cycle, scatter-gather,
gather-scatter, bipartite, stack, random - plus structuring (several
payments just under the 10,000 USD reporting threshold). A pattern's
accounts are drawn from the whole population, so it crosses banks; its
payments spread over up to a few days at any hour, with formats, amounts
and currencies of their own. Patterns rotate through the typologies, so
every typology appears once there are nine patterns.

Two settings (`Setting`), after the two kinds of AMLworld file (Altman et
al. 2023, table 4): `hi`, the default, at 0.1% laundering, every laundering
payment in a pattern, with large amounts, formats of its own and any hour;
and `li`, harder, at 1 in 1,942 (LI-Small's rate), where 80% of laundering
payments are integration (AMLworld's LI-Large has 81% of its laundering
outside the patterns, table 8): accounts that just received laundering
money pay salaries, suppliers and purchases that look like anyone else's
(kind, amount, format and hour), half of them to another account of the
laundering network; and the patterns themselves move transfer-sized
amounts, in transfer formats, at people's hours, over up to two weeks.

The file is written a day at a time (the patterns, a small fraction, are
planned first), so memory is bounded by one day's transactions whatever
the total.
"""

import dataclasses
import datetime
import enum
import time
from typing import Callable, Optional

import numpy as np

from tffaml import errors
import pandas as pd

from tffaml import io
from tffaml.data import amlworld

TYPOLOGIES = ('fan_out', 'fan_in', 'cycle', 'scatter_gather', 'gather_scatter',
              'bipartite', 'stack', 'random', 'structuring')
REPORTING_THRESHOLD = 10_000.0  # USD.
START = datetime.datetime(2022, 9, 1)
# USD per unit.
CURRENCIES = {'US Dollar': 1.0, 'Euro': 1.0, 'UK Pound': 1.15, 'Yuan': 0.14,
              'Canadian Dollar': 0.74, 'Swiss Franc': 1.03, 'Yen': 0.0069, 'Bitcoin': 20000.0}
_FOREIGN = ('Euro', 'UK Pound', 'Yuan', 'Canadian Dollar', 'Swiss Franc', 'Yen')
# Hour-of-day weights of people's payments: quiet at night, peaks at noon and evening.
_PERSON_HOURS = np.array([1, 0.5, 0.3, 0.3, 0.3, 0.6, 1.5, 3, 5, 6, 7, 8,
                          9, 8, 7, 7, 7, 8, 9, 9, 7, 5, 3, 2], np.float64)


@dataclasses.dataclass(frozen=True)
class _Kind:
  """A kind of normal payment."""

  name: str
  weekday_share: float
  weekend_share: float
  payer: str  # person | business | self
  payee: str  # person | business | self
  formats: dict[str, float]
  hours: np.ndarray  # Weights over 24 hours.

_OFFICE = np.array([0] * 8 + [1] * 10 + [0] * 6, np.float64)
_MORNING = np.array([0] * 5 + [1] * 4 + [0] * 15, np.float64)
_KINDS = (
    _Kind('purchase', 0.40, 0.50, 'person', 'business', {'Credit Card': 0.85, 'Cash': 0.15}, _PERSON_HOURS),
    _Kind('bill', 0.15, 0.10, 'person', 'business', {'ACH': 0.7, 'Cheque': 0.2, 'Credit Card': 0.1}, _PERSON_HOURS),
    _Kind('transfer', 0.20, 0.30, 'person', 'person',
          {'ACH': 0.45, 'Wire': 0.18, 'Cheque': 0.2, 'Cash': 0.15, 'Bitcoin': 0.02}, _PERSON_HOURS),
    _Kind('salary', 0.05, 0.0, 'business', 'person', {'ACH': 0.9, 'Wire': 0.1}, _MORNING),
    _Kind('b2b', 0.12, 0.03, 'business', 'business', {'Wire': 0.5, 'ACH': 0.3, 'Cheque': 0.2}, _OFFICE),
    _Kind('reinvestment', 0.08, 0.07, 'self', 'self', {'Reinvestment': 1.0}, _PERSON_HOURS),
)
_KIND_NAMES = [k.name for k in _KINDS]


class Setting(enum.Enum):
  """How laundering looks beside normal payments (module docstring)."""

  HI = 'hi'
  LI = 'li'


@dataclasses.dataclass(frozen=True)
class _Style:
  """A setting's laundering: how much, and how like normal payments."""

  laundering_rate: float  # The default fraction of laundering transactions.
  integration_share: float  # Of laundering payments: the patterns' payees paying like anyone else.
  base_usd: tuple[float, float]  # A pattern's typical amount: log-normal (mean, sigma) of USD.
  formats: dict[str, float]  # Pattern payments' formats.
  hours: Optional[np.ndarray]  # Hour-of-day weights of pattern payments; None: any hour.
  spread_days: int  # A pattern's payments start within this many days...
  hop_minutes: int  # ...each hop this much after the previous one's earliest.
  cycle_gap: tuple[int, int]  # Minutes between a cycle's payments: [low, high).
  structuring_low: float  # Structured payments are this fraction of the threshold or more.


def style(setting: Setting) -> _Style:
  if setting is Setting.HI:
    return _Style(
        laundering_rate=0.001, integration_share=0.0, base_usd=(8.3, 0.9),
        formats={'Wire': 0.3, 'ACH': 0.3, 'Cash': 0.15, 'Cheque': 0.1, 'Bitcoin': 0.1, 'Credit Card': 0.05},
        hours=None, spread_days=3, hop_minutes=6 * 60, cycle_gap=(30, 12 * 60), structuring_low=0.9)
  if setting is Setting.LI:
    return _Style(
        laundering_rate=1 / 1942, integration_share=0.8, base_usd=(5.5, 1.3),
        formats=dict(_KINDS[_KIND_NAMES.index('transfer')].formats), hours=_PERSON_HOURS, spread_days=14,
        hop_minutes=24 * 60, cycle_gap=(6 * 60, 3 * 24 * 60), structuring_low=0.5)
  raise ValueError(f'unknown setting {setting!r}')


@dataclasses.dataclass(frozen=True)
class Population:
  """Banks and accounts; accounts sorted by (bank, is_business)."""

  bank_codes: np.ndarray  # str, per bank.
  account_bank: np.ndarray  # Bank index per account.
  account_codes: np.ndarray  # str, per account.
  is_business: np.ndarray
  currency: np.ndarray  # str, per account.
  activity: np.ndarray  # Relative rate of paying, per account.
  popularity: np.ndarray  # Relative rate of being paid (businesses), per account.
  bank_start: np.ndarray  # [bank, type]: first account of the bank's people / businesses.
  bank_count: np.ndarray  # [bank, type]: how many.


def make_population(*, num_banks: int, num_accounts: int, rng: np.random.Generator) -> Population:
  sizes = 1.0 / np.arange(1, num_banks + 1) ** 0.8
  per_bank = np.maximum(rng.multinomial(num_accounts - 4 * num_banks, sizes / sizes.sum()) + 4, 4)
  account_bank = np.repeat(np.arange(num_banks), per_bank)
  is_business = np.zeros(len(account_bank), bool)
  bank_start, bank_count, offset = np.zeros((num_banks, 2), int), np.zeros((num_banks, 2), int), 0
  for b, n in enumerate(per_bank):
    businesses = max(1, int(round(0.08 * n)))
    is_business[offset + n - businesses:offset + n] = True
    bank_start[b] = offset, offset + n - businesses
    bank_count[b] = n - businesses, businesses
    offset += n
  home = np.where(rng.random(num_banks) < 0.75, 'US Dollar', rng.choice(_FOREIGN, num_banks))
  currency = np.where(rng.random(len(account_bank)) < 0.03,
                      rng.choice(_FOREIGN, len(account_bank)), home[account_bank])
  codes = rng.choice(np.arange(1, 40_000), num_banks, replace=False)
  account_ids = rng.permutation(len(account_bank)) + 0x800000000
  return Population(
      bank_codes=np.array([f'{c:03d}' for c in codes]),
      account_bank=account_bank,
      account_codes=np.array([f'{a:09X}' for a in account_ids]),
      is_business=is_business,
      currency=currency,
      activity=rng.lognormal(0.0, 1.0, len(account_bank)),
      popularity=np.where(is_business, rng.pareto(1.2, len(account_bank)) + 0.05, 0.0),
      bank_start=bank_start, bank_count=bank_count)


def _pick(weights: np.ndarray, n: int, rng) -> np.ndarray:
  cumulative = np.cumsum(weights)
  return np.searchsorted(cumulative, rng.random(n) * cumulative[-1], 'right')


def _same_bank(population: Population, banks: np.ndarray, kind: int, rng) -> np.ndarray:
  """A uniform account of type `kind` (0 people, 1 businesses) in each of `banks`."""
  start, count = population.bank_start[banks, kind], population.bank_count[banks, kind]
  return start + np.minimum((rng.random(len(banks)) * count).astype(int), count - 1)


def _normal_payments(population: Population, n: int, weekday: int, rng) -> dict:
  """`n` normal payments of one day: payer, payee, USD amount, format, minute of day."""
  shares = np.array([k.weekend_share if weekday >= 5 else k.weekday_share for k in _KINDS])
  if weekday == 4:  # Payday Friday.
    shares[_KIND_NAMES.index('salary')] *= 3
  kinds = rng.choice(len(_KINDS), n, p=shares / shares.sum())
  payer, payee = np.zeros(n, int), np.zeros(n, int)
  usd, formats, minutes = np.zeros(n), np.empty(n, object), np.zeros(n, int)
  person_activity = np.where(population.is_business, 0.0, population.activity)
  business_activity = np.where(population.is_business, population.activity, 0.0)
  for k, kind in enumerate(_KINDS):
    rows = np.flatnonzero(kinds == k)
    if not len(rows):
      continue
    m = len(rows)
    payer[rows] = _pick(business_activity if kind.payer == 'business' else person_activity, m, rng)
    if kind.payee == 'self':
      payee[rows] = payer[rows]
    else:
      kind_index = int(kind.payee == 'business')
      anywhere = (_pick(population.popularity, m, rng) if kind_index
                  else _pick(person_activity, m, rng))
      local = _same_bank(population, population.account_bank[payer[rows]], kind_index, rng)
      payee[rows] = np.where(rng.random(m) < 0.6, local, anywhere)
    usd[rows] = {
        'purchase': lambda: rng.lognormal(3.5, 1.0, m),
        'bill': lambda: rng.lognormal(4.5, 0.6, m),
        'transfer': lambda: np.where(rng.random(m) < 0.3, np.round(rng.lognormal(5.5, 1.3, m), -2) + 100,
                                     rng.lognormal(5.5, 1.3, m)),
        'salary': lambda: rng.lognormal(7.8, 0.4, m),
        'b2b': lambda: 800.0 * (1.0 + rng.pareto(1.6, m)),
        'reinvestment': lambda: rng.lognormal(6.0, 1.5, m),
    }[kind.name]()
    names = list(kind.formats)
    formats[rows] = np.array(names, object)[rng.choice(len(names), m, p=list(kind.formats.values()))]
    minutes[rows] = _pick(kind.hours, m, rng) * 60 + rng.integers(0, 60, m)
  return dict(payer=payer, payee=payee, usd=usd, payment_format=formats, minute=minutes)


def _pattern(typology: str, population: Population, manner: _Style, rng) -> dict:
  """One laundering pattern: its payments' payer, payee, USD amount and minute offset."""
  accounts = lambda k: rng.choice(len(population.account_bank), k, replace=False)
  base = rng.lognormal(*manner.base_usd)
  edges = []  # (payer, payee, hop): hop orders the payments along the pattern.
  if typology in ('fan_out', 'fan_in'):
    hub, spokes = accounts(1)[0], accounts(int(rng.integers(4, 13)))
    edges = [(hub, s, 0) if typology == 'fan_out' else (s, hub, 0) for s in spokes]
  elif typology == 'cycle':
    ring = accounts(int(rng.integers(3, 9)))
    edges = [(ring[i], ring[(i + 1) % len(ring)], i) for i in range(len(ring))]
  elif typology in ('scatter_gather', 'gather_scatter'):
    ends, middle = accounts(2), accounts(int(rng.integers(3, 9)))
    if typology == 'scatter_gather':
      edges = [(ends[0], m, 0) for m in middle] + [(m, ends[1], 1) for m in middle]
    else:
      hub = ends[0]
      outer = accounts(int(rng.integers(3, 9)))
      edges = [(m, hub, 0) for m in middle] + [(hub, o, 1) for o in outer]
  elif typology in ('bipartite', 'stack'):
    layers = [accounts(int(rng.integers(2, 6))) for _ in range(2 if typology == 'bipartite' else 3)]
    for hop, (left, right) in enumerate(zip(layers, layers[1:])):
      edges += [(a, b, hop) for a in left for b in right if rng.random() < 0.7]
  elif typology == 'random':
    group = accounts(int(rng.integers(3, 7)))
    walk = [group[0]] + [group[i] for i in rng.integers(0, len(group), int(rng.integers(4, 10)))]
    edges = [(a, b, i) for i, (a, b) in enumerate(zip(walk, walk[1:]))]
  else:  # structuring: just under the reporting threshold, to a few accounts.
    smurf, targets = accounts(1)[0], accounts(int(rng.integers(1, 4)))
    edges = [(smurf, t, 0) for t in rng.choice(targets, int(rng.integers(3, 9)))]
  edges = [e for e in edges if e[0] != e[1]] or [tuple(accounts(2)) + (0,)]
  payer, payee, hop = (np.array(x) for x in zip(*edges))
  n = len(edges)
  if typology == 'structuring':
    usd = REPORTING_THRESHOLD * rng.uniform(manner.structuring_low, 0.999, n)
  else:  # Fees shave each hop; amounts vary around the pattern's base.
    usd = base * 0.98 ** hop * rng.uniform(0.85, 1.15, n)
  minute = _pattern_minutes(typology, hop, manner, rng)
  names = np.array(list(manner.formats), object)
  formats = names[rng.choice(len(names), n, p=list(manner.formats.values()))]
  if typology == 'structuring':
    formats = np.array(['Cash', 'ACH', 'Wire'], object)[rng.choice(3, n, p=[0.5, 0.3, 0.2])]
  return dict(payer=payer, payee=payee, usd=usd, payment_format=formats, minute=minute)


def _pattern_minutes(typology: str, hop: np.ndarray, manner: _Style, rng) -> np.ndarray:
  """Minutes after the pattern's start, in order along its hops (a cycle's strictly so)."""
  n = len(hop)
  if typology == 'cycle':
    return np.cumsum(rng.integers(*manner.cycle_gap, n))
  minute = hop * manner.hop_minutes + rng.integers(0, manner.spread_days * 24 * 60, n)
  if manner.hours is not None:  # Keep the day, move to an hour people pay at.
    minute = minute // (24 * 60) * (24 * 60) + _pick(manner.hours, n, rng) * 60 + rng.integers(0, 60, n)
  return np.sort(minute)


def _integration(population: Population, received: tuple[np.ndarray, np.ndarray], n: int, rng) -> dict:
  """`n` payments that look like anyone's (salaries, suppliers, purchases...), made by accounts
  that received laundering money, within three days after it arrived; half of them pay another
  account of the laundering network (a front business), half anyone.

  `received`: the pattern payments' payees and their minutes.
  """
  payees, minutes = received
  pick = rng.integers(0, len(payees), n)
  # A weekday's mix of kinds: integration poses as business-day activity (salaries, suppliers).
  payments = _normal_payments(population, n, int(rng.integers(0, 5)), rng)
  own = payments['payer'] == payments['payee']  # Reinvestments stay an account paying itself.
  payments['payer'] = payees[pick]
  network = rng.choice(np.unique(payees), n)
  payments['payee'] = np.where(own, payments['payer'], np.where(rng.random(n) < 0.5, network, payments['payee']))
  # At the kind's usual hour, on one of the three days after the money arrived.
  day = (minutes[pick] + rng.integers(0, 3 * 24 * 60, n)) // (24 * 60) + 1
  payments['minute'] = day * 24 * 60 + payments['minute']
  return payments


def _rows(population: Population, payments: dict, start_minute: np.ndarray, label: int) -> pd.DataFrame:
  """AMLworld columns (plus `minute`) of payments starting at `start_minute`."""
  payer, payee, formats = payments['payer'], payments['payee'], payments['payment_format']
  bitcoin = formats == 'Bitcoin'
  pay_currency = np.where(bitcoin, 'Bitcoin', population.currency[payer])
  receive_currency = np.where(bitcoin, 'Bitcoin', population.currency[payee])
  rate = np.vectorize(CURRENCIES.get, otypes=[float])
  paid = payments['usd'] / rate(pay_currency)
  received = payments['usd'] / rate(receive_currency)
  return pd.DataFrame({
      'minute': start_minute + payments['minute'],
      'from_bank': population.bank_codes[population.account_bank[payer]],
      'from_account': population.account_codes[payer],
      'to_bank': population.bank_codes[population.account_bank[payee]],
      'to_account': population.account_codes[payee],
      'amount_received': np.round(received, 2),
      'receiving_currency': receive_currency,
      'amount_paid': np.round(paid, 2),
      'payment_currency': pay_currency,
      'payment_format': formats,
      'is_laundering': label,
  })


@dataclasses.dataclass(frozen=True)
class Report:
  transactions: int
  laundering: int
  patterns: dict[str, int]  # Typology -> patterns injected.
  laundering_by_typology: dict[str, int]  # Typology (or 'integration') -> laundering transactions.
  banks: int
  accounts: int
  seconds: float

  @property
  def transactions_per_second(self) -> float:
    return self.transactions / self.seconds


def _timestamps(minutes: np.ndarray) -> np.ndarray:
  days, minute = np.divmod(minutes, 24 * 60)
  day_text = {d: (START + datetime.timedelta(days=int(d))).strftime('%Y/%m/%d ') for d in np.unique(days)}
  prefix = np.array([day_text[d] for d in days], object)
  clock = np.array([f'{h:02d}:{m:02d}' for h in range(24) for m in range(60)], object)
  return prefix + clock[minute]


def generate(
    output: str,
    *,
    num_banks: int,
    num_transactions: int,
    seed: int,
    setting: Setting = Setting.HI,
    laundering_rate: Optional[float] = None,
    days: int = 30,
    accounts_per_transaction: float = 0.05,
    patterns_output: Optional[str] = None,
    log: Callable[[str], None] = lambda _: None,
    amount_scale: float = 1.0,
    typologies: Optional[tuple[str, ...]] = None,
) -> Report:
  """Writes `num_transactions` transactions to `output` (AMLworld CSV), atomically.

  Args:
    output: The CSV to write.
    num_banks: Banks in the population (>= 2).
    num_transactions: Transactions in the file, laundering included.
    seed: Everything derives from it: the same seed writes the same bytes.
    setting: How laundering looks (`Setting`; module docstring).
    laundering_rate: Target fraction of laundering transactions (patterns
      are whole, so the count is at least this and at most one pattern
      more); None: the setting's (0.1% for hi, 1 in 1,942 for li).
    days: Days the file spans, from 2022/09/01.
    accounts_per_transaction: Accounts in the population per transaction.
    patterns_output: Optional CSV of the laundering payments with their
      pattern id and typology (AMLworld ships such a file too).
    log: Progress lines.
    amount_scale: Every amount times this, but structuring's (the reporting
      threshold is law, not scale): a public corpus unlike the data it
      helps (tffaml.training.public).
    typologies: The patterns' typologies, in turn (repeat one to weigh it
      more); None: every one of `TYPOLOGIES` once.

  Returns:
    Counts and the time taken.
  """
  if not amount_scale > 0:
    raise errors.InputError(f'{{amount_scale}} must be > 0, got {amount_scale}.', blames=('amount_scale',))
  manner = style(setting)
  if amount_scale != 1.0:  # Every amount but structuring's (the reporting threshold is law, not scale).
    manner = dataclasses.replace(manner, base_usd=(manner.base_usd[0] + np.log(amount_scale), manner.base_usd[1]))
  typologies = tuple(typologies or TYPOLOGIES)
  unknown = set(typologies) - set(TYPOLOGIES)
  if unknown:
    raise errors.InputError(f'unknown typologies {sorted(unknown)}; known: {TYPOLOGIES}.')
  target = _check(num_banks=num_banks, num_transactions=num_transactions,
                  laundering_rate=manner.laundering_rate if laundering_rate is None else laundering_rate, days=days)
  num_accounts = max(20 * num_banks, int(accounts_per_transaction * num_transactions))
  started = time.monotonic()
  rng = np.random.default_rng(seed)
  population = make_population(num_banks=num_banks, num_accounts=num_accounts, rng=rng)
  laundering = _laundering(population, manner, target=target, days=days, rng=rng, typologies=typologies,
                           amount_scale=amount_scale)
  if len(laundering) > num_transactions // 2:
    raise errors.InputError(f'--num_transactions={num_transactions} is too few for the patterns.')
  _write_days(output, population, laundering, normal=num_transactions - len(laundering), days=days,
              rng=rng, log=log, amount_scale=amount_scale)
  if patterns_output:
    patterns = laundering.assign(timestamp=_timestamps(laundering['minute'].to_numpy()))
    with io.atomic_path(patterns_output) as tmp:
      patterns[['pattern', 'typology'] + list(amlworld.COLUMNS)].to_csv(
          tmp, index=False, float_format='%.2f')
  by_typology = laundering.groupby('typology')
  return Report(
      transactions=num_transactions, laundering=len(laundering),
      patterns={t: int(n) for t, n in by_typology['pattern'].nunique().items() if t != 'integration'},
      laundering_by_typology={t: int(n) for t, n in by_typology.size().items()},
      banks=num_banks, accounts=num_accounts, seconds=time.monotonic() - started)


def _check(*, num_banks: int, num_transactions: int, laundering_rate: float, days: int) -> int:
  """Refuses impossible settings; returns the target count of laundering transactions."""
  if num_banks < 2:
    raise errors.InputError(f'--num_banks must be >= 2, got {num_banks}.')
  if not 0.0 < laundering_rate < 0.5:
    raise errors.InputError(f'--laundering_rate must be in (0, 0.5), got {laundering_rate}.')
  if days < 1:
    raise errors.InputError(f'--days must be >= 1, got {days}.')
  target = max(1, int(round(laundering_rate * num_transactions)))
  if num_transactions < 2 * target or num_transactions < days:
    raise errors.InputError(f'--num_transactions={num_transactions} is too few for {days} days and'
                     f' a laundering rate of {laundering_rate}.')
  return target


def _laundering(population, manner: _Style, *, target: int, days: int, rng: np.random.Generator,
                typologies: tuple[str, ...] = TYPOLOGIES, amount_scale: float = 1.0) -> pd.DataFrame:
  """Whole patterns, typologies in turn, then integration payments by their payees, until
  `target` payments; those inside `days`, by time."""
  frames, received, count, pattern_id = [], [], 0, 0
  while count < target * (1.0 - manner.integration_share):
    typology = typologies[pattern_id % len(typologies)]
    payments = _pattern(typology, population, manner, rng)
    start = int(rng.integers(0, max(1, days - manner.spread_days) * 24 * 60))
    frame = _rows(population, payments, start, label=1)
    frames.append(frame.assign(pattern=pattern_id, typology=typology))
    received.append((payments['payee'], start + payments['minute']))
    count += len(frame)
    pattern_id += 1
  if count < target:
    payments = _integration(population, tuple(np.concatenate(a) for a in zip(*received)), target - count, rng)
    payments['usd'] = payments['usd'] * amount_scale
    frames.append(_rows(population, payments, 0, label=1).assign(pattern=-1, typology='integration'))
  laundering = pd.concat(frames, ignore_index=True)
  return laundering[laundering['minute'] < days * 24 * 60].sort_values('minute', kind='stable')


def _write_days(output: str, population, laundering: pd.DataFrame, *, normal: int, days: int,
                rng: np.random.Generator, log, amount_scale: float = 1.0) -> None:
  """The file, a day at a time: `normal` ordinary payments (fewer at weekends) among the laundering."""
  weekdays = [(START + datetime.timedelta(days=d)).weekday() for d in range(days)]
  weights = np.array([0.6 if w >= 5 else 1.0 for w in weekdays])
  per_day = rng.multinomial(normal, weights / weights.sum())
  laundering_day = laundering['minute'].to_numpy() // (24 * 60)
  columns = [c for c in amlworld.COLUMNS]
  with io.atomic_path(output) as tmp, open(tmp, 'w', newline='') as f:
    f.write(','.join(amlworld.HEADER) + '\n')
    for day in range(days):
      payments = _normal_payments(population, int(per_day[day]), weekdays[day], rng)
      payments['usd'] = payments['usd'] * amount_scale
      normal = _rows(population, payments, day * 24 * 60, label=0)
      rows = pd.concat([normal, laundering[laundering_day == day][normal.columns]], ignore_index=True)
      rows = rows.sort_values('minute', kind='stable')
      rows.insert(0, 'timestamp', _timestamps(rows.pop('minute').to_numpy()))
      rows[columns].to_csv(f, header=False, index=False, float_format='%.2f')
      log(f'day {day + 1}/{days}: {len(rows):,} transactions')

"""Per-account activity before each transaction, as one bank sees it.

For a transaction at time t from account s to account r, every aggregate is
over the bank's own transactions strictly earlier than t (minute resolution:
transactions in the same minute are not yet known), so a model never sees
the future:

* `sender_out_count_1d`, `sender_out_count_7d`: payments s sent in the last
  day and week; `sender_out_amount_1d` their amount paid;
* `sender_in_amount_1d`: amount s received in the last day (money passing
  through an account: cycles, stacks);
* `sender_out_degree_7d`: distinct accounts s paid in the last week (fan-out);
* `receiver_in_count_1d`, `receiver_in_count_7d`, `receiver_in_amount_1d`,
  `receiver_out_amount_1d`, `receiver_in_degree_7d`: the same for r, with
  fan-in degree.

Graph features, after the AMLworld papers' cycles and scatter-gather (over
two-step paths a -> x -> b whose second payment follows the first within
three days, `two_step_paths`; the generator's patterns spread over three):

* `reverse_count_7d`: payments r made to s in the last week (a two-cycle:
  the money goes back);
* `three_cycle_3d`: two-step paths r -> x -> s in the last three days, so
  this payment closes a three-cycle;
* `gather_paths_3d`: two-step paths in the last three days from the account that
  last paid s to r: at the gather end of scatter-gather (a source pays
  several accounts, which each pay one destination), the accounts that
  already passed the source's money on to r.

An account is its bank and account code. A bank knows all transactions of
its own customers but only the part of another bank's customer's activity
that touches it, so the aggregates of a counterparty are partial by design.

Each window query is two binary searches over the history sorted by
(account, time), so a bank's aggregates take O(n log n) time.
"""

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

DAY = 24 * 60  # Minutes.
WEEK = 7 * DAY
AGGREGATES = (
    'sender_out_count_1d', 'sender_out_count_7d', 'sender_out_amount_1d',
    'sender_in_amount_1d', 'sender_out_degree_7d',
    'receiver_in_count_1d', 'receiver_in_count_7d', 'receiver_in_amount_1d',
    'receiver_out_amount_1d', 'receiver_in_degree_7d',
    'reverse_count_7d', 'three_cycle_3d', 'gather_paths_3d',
)
# A two-step path's first payment is among the middle account's last this
# many payments received: a busy account (a shop's thousands of sales a day)
# would otherwise make millions of paths, and laundering relays are quiet.
MAX_PATHS_PER_PAYMENT = 32
PATH_WIDTH = 3 * DAY


class _Timeline:
  """Positions key * span + minute on one axis, so one sort serves every key."""

  def __init__(self, minutes: np.ndarray, width: int):
    self.origin = int(minutes.min()) - width  # Keeps t - width >= origin.
    self.span = int(minutes.max()) - self.origin + 2 * width + 2

  def position(self, keys: np.ndarray, minutes: np.ndarray) -> np.ndarray:
    return keys.astype(np.int64) * self.span + (minutes - self.origin)


def window_sum(
    history_keys: np.ndarray, history_minutes: np.ndarray, weights: np.ndarray,
    query_keys: np.ndarray, query_minutes: np.ndarray, *, width: int,
) -> np.ndarray:
  """Per query: Σ weights of history rows with its key and minute in [t - width, t)."""
  timeline = _Timeline(np.concatenate([history_minutes, query_minutes]), width)
  position = timeline.position(history_keys, history_minutes)
  order = np.argsort(position, kind='stable')
  cumulative = np.concatenate([[0.0], np.cumsum(weights[order], dtype=np.float64)])
  sorted_position = position[order]
  end = np.searchsorted(sorted_position, timeline.position(query_keys, query_minutes), 'left')
  start = np.searchsorted(sorted_position, timeline.position(query_keys, query_minutes - width), 'left')
  return cumulative[end] - cumulative[start]


def window_distinct(
    history_keys: np.ndarray, history_others: np.ndarray, history_minutes: np.ndarray,
    query_keys: np.ndarray, query_minutes: np.ndarray, *, width: int,
) -> np.ndarray:
  """Per query: distinct `others` of history rows with its key in [t - width, t).

  A (key, other) pair counts at t when its last occurrence r before t is in
  the window: t in (time_r, min(time_r + width, next_r)], next_r being the
  pair's next occurrence. So the count is #{time_r < t} - #{end_r < t} over
  the key's rows, end_r = min(time_r + width, next_r).
  """
  pair = pd.factorize(pd.MultiIndex.from_arrays([history_keys, history_others]))[0]
  order = np.lexsort((history_minutes, pair))
  sorted_pair, sorted_minutes = pair[order], history_minutes[order]
  same_pair_next = np.append(sorted_pair[1:] == sorted_pair[:-1], False)
  next_minutes = np.where(same_pair_next, np.roll(sorted_minutes, -1), np.iinfo(np.int64).max)
  ends = np.empty_like(history_minutes)
  ends[order] = np.minimum(sorted_minutes + width, next_minutes)
  timeline = _Timeline(np.concatenate([history_minutes, query_minutes]), width)
  query = timeline.position(query_keys, query_minutes)
  started = np.searchsorted(np.sort(timeline.position(history_keys, history_minutes)), query, 'left')
  ended = np.searchsorted(np.sort(timeline.position(history_keys, ends)), query, 'left')
  return (started - ended).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Paths:
  """Two-step paths start -> middle -> end: first payment at `first`, second at `second`."""

  start: np.ndarray
  end: np.ndarray
  first: np.ndarray
  second: np.ndarray


def two_step_paths(sender: np.ndarray, receiver: np.ndarray, minute: np.ndarray, *, width: int) -> Paths:
  """Every a -> x then x -> b with the second payment strictly later, within `width` minutes.

  For each payment x -> b, the paths through x take x's payments received in
  [t - width, t), at most the last `MAX_PATHS_PER_PAYMENT` of them.
  """
  timeline = _Timeline(minute, width)
  received = timeline.position(receiver, minute)
  order = np.argsort(received, kind='stable')
  sorted_received = received[order]
  hi = np.searchsorted(sorted_received, timeline.position(sender, minute), 'left')
  lo = np.searchsorted(sorted_received, timeline.position(sender, minute - width), 'left')
  lo = np.maximum(lo, hi - MAX_PATHS_PER_PAYMENT)
  counts = hi - lo
  second = np.repeat(np.arange(len(minute)), counts)
  # Positions lo..hi-1 of each second payment, flattened.
  offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  first = order[np.repeat(lo, counts) + offsets]
  return Paths(start=sender[first], end=receiver[second], first=minute[first], second=minute[second])


def _pair(a: np.ndarray, b: np.ndarray, accounts: int) -> np.ndarray:
  """One int64 key per (account a, account b)."""
  return a.astype(np.int64) * accounts + b


def paths_in_window(paths: Paths, queries: Sequence[tuple[np.ndarray, np.ndarray]], minute: np.ndarray, *,
                    width: int, accounts: int) -> list[np.ndarray]:
  """Per query (start, end) and row: `paths` from start to end with both payments in [t - width, t).

  Paths with second < t include every path with first < t - width (a path's
  second payment is within `width` of its first, so before t), so the count
  is the difference. The paths are sorted once for all `queries`.
  """
  timeline = _Timeline(np.concatenate([paths.first, paths.second, minute]), width)
  key = _pair(paths.start, paths.end, accounts)
  ends = np.sort(timeline.position(key, paths.second))
  starts = np.sort(timeline.position(key, paths.first))
  counts = []
  for start, end in queries:
    query = _pair(start, end, accounts)
    counts.append((np.searchsorted(ends, timeline.position(query, minute), 'left')
                   - np.searchsorted(starts, timeline.position(query, minute - width), 'left')).astype(np.float64))
  return counts


def last_payer(sender: np.ndarray, receiver: np.ndarray, minute: np.ndarray, query: np.ndarray,
               query_minute: np.ndarray) -> np.ndarray:
  """Per query: the account that last paid `query` strictly before its minute, or -1."""
  timeline = _Timeline(np.concatenate([minute, query_minute]), 0)
  received = timeline.position(receiver, minute)
  order = np.argsort(received, kind='stable')
  before = np.searchsorted(received[order], timeline.position(query, query_minute), 'left') - 1
  found = (before >= 0) & (receiver[order][np.maximum(before, 0)] == query)
  return np.where(found, sender[order][np.maximum(before, 0)], -1)


def _graph(sender: np.ndarray, receiver: np.ndarray, minute: np.ndarray, accounts: int) -> dict:
  """The graph features (module docstring)."""
  paths = two_step_paths(sender, receiver, minute, width=PATH_WIDTH)
  payer = last_payer(sender, receiver, minute, sender, minute)
  cycle, gather = paths_in_window(paths, [(receiver, sender), (np.maximum(payer, 0), receiver)], minute,
                                  width=PATH_WIDTH, accounts=accounts)
  return {
      'reverse_count_7d': window_sum(_pair(sender, receiver, accounts), minute, np.ones(len(minute)),
                                     _pair(receiver, sender, accounts), minute, width=WEEK),
      'three_cycle_3d': cycle,
      'gather_paths_3d': np.where(payer >= 0, gather, 0.0),
  }


def compute(rows: pd.DataFrame) -> pd.DataFrame:
  """`AGGREGATES` of every row of one bank's transactions (`amlworld.bank_view`)."""
  accounts = pd.concat([rows['from_bank'] + ' ' + rows['from_account'],
                        rows['to_bank'] + ' ' + rows['to_account']])
  codes = pd.factorize(accounts)[0]
  sender, receiver = codes[:len(rows)], codes[len(rows):]
  minute = rows['minute'].to_numpy(np.int64)
  paid = rows['amount_paid'].to_numpy(np.float64)
  received = rows['amount_received'].to_numpy(np.float64)
  ones = np.ones(len(rows))

  def activity(history, weights, query, width):
    return window_sum(history, minute, weights, query, minute, width=width)

  values = {
      'sender_out_count_1d': activity(sender, ones, sender, DAY),
      'sender_out_count_7d': activity(sender, ones, sender, WEEK),
      'sender_out_amount_1d': activity(sender, paid, sender, DAY),
      'sender_in_amount_1d': activity(receiver, received, sender, DAY),
      'sender_out_degree_7d': window_distinct(sender, receiver, minute, sender, minute, width=WEEK),
      'receiver_in_count_1d': activity(receiver, ones, receiver, DAY),
      'receiver_in_count_7d': activity(receiver, ones, receiver, WEEK),
      'receiver_in_amount_1d': activity(receiver, received, receiver, DAY),
      'receiver_out_amount_1d': activity(sender, paid, receiver, DAY),
      'receiver_in_degree_7d': window_distinct(receiver, sender, minute, receiver, minute, width=WEEK),
      **_graph(sender, receiver, minute, int(codes.max()) + 1),
  }
  return pd.DataFrame(values, index=rows.index)[list(AGGREGATES)]

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

An account is its bank and account code. A bank knows all transactions of
its own customers but only the part of another bank's customer's activity
that touches it, so the aggregates of a counterparty are partial by design.

Each window query is two binary searches over the history sorted by
(account, time), so a bank's aggregates take O(n log n) time.
"""

import numpy as np
import pandas as pd

DAY = 24 * 60  # Minutes.
WEEK = 7 * DAY
AGGREGATES = (
    'sender_out_count_1d', 'sender_out_count_7d', 'sender_out_amount_1d',
    'sender_in_amount_1d', 'sender_out_degree_7d',
    'receiver_in_count_1d', 'receiver_in_count_7d', 'receiver_in_amount_1d',
    'receiver_out_amount_1d', 'receiver_in_degree_7d',
)


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
  }
  return pd.DataFrame(values, index=rows.index)[list(AGGREGATES)]

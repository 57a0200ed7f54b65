import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml.data import account_aggregates as aggregates

DAY = aggregates.DAY


def frame(rows):
  """rows: (minute, sender, receiver, amount)."""
  minute, sender, receiver, amount = zip(*rows)
  return pd.DataFrame({
      'minute': np.array(minute, np.int64), 'from_bank': '1', 'from_account': sender,
      'to_bank': '1', 'to_account': receiver, 'amount_paid': amount,
      'amount_received': amount})


ROWS = [
    (0, 'a', 'x', 10.0),
    (60, 'a', 'y', 20.0),
    (60, 'a', 'x', 30.0),  # Same minute as the previous row: neither sees the other.
    (DAY + 30, 'a', 'z', 40.0),  # Exactly a day after row 0 and 30 min after rows 1-2.
    (8 * DAY + 60, 'a', 'x', 50.0),  # Over a week after row 3: the window is empty.
    (8 * DAY + 61, 'x', 'a', 5.0),
]


class AggregatesTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.values = aggregates.compute(frame(ROWS))

  def test_hand_computed(self):
    v = self.values
    self.assertEqual(v['sender_out_count_1d'].tolist(), [0, 1, 1, 2, 0, 0])
    self.assertEqual(v['sender_out_count_7d'].tolist(), [0, 1, 1, 3, 0, 0])
    self.assertEqual(v['sender_out_amount_1d'].tolist(), [0, 10, 10, 50, 0, 0])
    self.assertEqual(v['sender_out_degree_7d'].tolist(), [0, 1, 1, 2, 0, 0])
    self.assertEqual(v['receiver_in_count_7d'].tolist(), [0, 0, 1, 0, 0, 0])
    self.assertEqual(v['receiver_in_degree_7d'].tolist(), [0, 0, 1, 0, 0, 0])
    # Row 5 (x pays a): a sent 50 to x one minute earlier, x received it.
    self.assertEqual(v['sender_in_amount_1d'].tolist(), [0, 0, 0, 0, 0, 50])
    self.assertEqual(v['receiver_out_amount_1d'].tolist(), [0, 0, 0, 0, 0, 50])

  def test_no_look_ahead(self):
    # Later transactions (or ones in the same minute), or changes to them,
    # leave earlier rows' aggregates as they were.
    future = ROWS + [(DAY + 30, 'q', 'a', 1e6), (9 * DAY, 'a', 'q', 1e6)]
    changed = list(ROWS)
    changed[4] = (8 * DAY + 60, 'a', 'w', 999.0)
    for rows in (future, changed):
      values = aggregates.compute(frame(rows))
      self.assertAllEqual(values.iloc[:4].to_numpy(), self.values.iloc[:4].to_numpy())

  def test_matches_brute_force_on_random_history(self):
    rng = np.random.default_rng(0)
    n = 300
    rows = list(zip(rng.integers(0, 20 * DAY, n), rng.choice(list('abcde'), n),
                    rng.choice(list('abcdefgh'), n), rng.uniform(1, 100, n).round(2)))
    values = aggregates.compute(frame(rows))
    minute = np.array([r[0] for r in rows])
    sender = np.array([r[1] for r in rows])
    receiver = np.array([r[2] for r in rows])
    for i in range(n):
      week = (minute < minute[i]) & (minute >= minute[i] - aggregates.WEEK)
      self.assertEqual(values['sender_out_count_7d'][i], np.sum(week & (sender == sender[i])))
      self.assertEqual(values['sender_out_degree_7d'][i], len(set(receiver[week & (sender == sender[i])])))
      self.assertEqual(values['receiver_in_degree_7d'][i], len(set(sender[week & (receiver == receiver[i])])))


class GraphFeaturesTest(tf.test.TestCase):

  def test_hand_computed_scatter_gather_and_cycles(self):
    rows = [
        (0, 's', 'm1', 100.0), (1, 's', 'm2', 100.0), (2, 's', 'm3', 100.0),  # Scatter...
        (10, 'm1', 'd', 98.0), (11, 'm2', 'd', 98.0), (12, 'm3', 'd', 98.0),  # ...gather.
        (20, 'a', 'b', 50.0), (25, 'b', 'c', 49.0), (30, 'c', 'a', 48.0),  # A three-cycle.
        (40, 'b', 'a', 5.0),  # Back along a -> b.
        (aggregates.PATH_WIDTH + 100, 'm3', 'd', 1.0),  # Its paths from s are too old.
    ]
    v = aggregates.compute(frame(rows))
    self.assertEqual(v['gather_paths_3d'].tolist(), [0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0])
    self.assertEqual(v['three_cycle_3d'].tolist(), [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0])
    self.assertEqual(v['reverse_count_7d'].tolist(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0])

  def test_matches_brute_force_on_random_history(self):
    rng = np.random.default_rng(1)
    n = 400
    minute = np.sort(rng.choice(8 * DAY, n, replace=False))  # Distinct: "last payer" is unambiguous.
    sender, receiver = rng.choice(list('abcdefgh'), n), rng.choice(list('abcdefgh'), n)  # Under the cap.
    values = aggregates.compute(frame(list(zip(minute, sender, receiver, np.ones(n)))))
    busiest = max(np.sum((receiver == sender[k]) & (minute < minute[k]) & (minute >= minute[k] - aggregates.PATH_WIDTH))
                  for k in range(n))
    self.assertLessEqual(busiest, aggregates.MAX_PATHS_PER_PAYMENT)  # The cap does not bite here.
    for i in range(n):
      t = minute[i]
      window = lambda width: (minute < t) & (minute >= t - width)
      self.assertEqual(values['reverse_count_7d'][i],
                       np.sum(window(aggregates.WEEK) & (sender == receiver[i]) & (receiver == sender[i])))
      day = np.flatnonzero(window(aggregates.PATH_WIDTH))
      paths = [(j, k) for j in day for k in day if minute[j] < minute[k] and receiver[j] == sender[k]]
      self.assertEqual(values['three_cycle_3d'][i], sum(
          sender[j] == receiver[i] and receiver[k] == sender[i] for j, k in paths))
      paid = np.flatnonzero((receiver == sender[i]) & (minute < t))
      gather = 0 if not len(paid) else sum(
          sender[j] == sender[paid[-1]] and receiver[k] == receiver[i] for j, k in paths)
      self.assertEqual(values['gather_paths_3d'][i], gather, i)

  def test_a_busy_middle_makes_at_most_the_cap_of_paths_per_payment(self):
    cap = aggregates.MAX_PATHS_PER_PAYMENT
    sender = np.arange(cap + 10)  # Accounts 0..cap+9 each pay the shop (account 1000)...
    receiver = np.full(cap + 10, 1000)
    minute = np.arange(cap + 10)
    sender, receiver, minute = (np.append(a, b) for a, b in ((sender, 1000), (receiver, 2000), (minute, 100)))
    paths = aggregates.two_step_paths(sender, receiver, minute, width=aggregates.PATH_WIDTH)  # ...which pays once.
    self.assertLen(paths.start, cap)
    self.assertCountEqual(paths.start, np.arange(10, cap + 10))  # The last `cap` payers.

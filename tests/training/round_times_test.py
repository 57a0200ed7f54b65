"""Round times: each round's own wall time in metrics.csv, TensorBoard and the progress line."""

import dataclasses
import glob
import os
import time
from unittest import mock

import pandas as pd
import tensorflow as tf

from tests import helpers
from tffaml.training import program

# Injected delays, in seconds, on the run's clock (not slept): a plain round beside the suite varied
# by over 1.5 s, more than a slept delay short enough for a test could be told apart from.
SLOW = 600.0  # Round 2's.
EVAL = 30.0  # Each per-round evaluation's.


class _Clock:
  """`time` as program.py sees it, its monotonic clock advanced by `advance` (all else is `time`'s)."""

  def __init__(self):
    self.offset = 0.0

  def monotonic(self) -> float:
    return time.monotonic() + self.offset

  def advance(self, seconds: float) -> None:
    self.offset += seconds

  def __getattr__(self, name):
    return getattr(time, name)


CLOCK = _Clock()


class _SlowRound2(program.InProcess):
  """The simulation, with round 2's training and every per-round evaluation made slow."""

  def build(self, config, choices, setup, space, noise_seed):
    built = super().build(config, choices, setup, space, noise_seed)

    def train_round(state, members, round_num):
      if round_num == 2:
        CLOCK.advance(SLOW)
      return built.train_round(state, members, round_num)

    def evaluate(weights, per_institution):
      if not per_institution:  # The rounds' pooled evaluation, not the final one.
        CLOCK.advance(EVAL)
      return built.evaluate(weights, per_institution)

    return dataclasses.replace(built, train_round=train_round, evaluate=evaluate)


def _scalars(logdir: str, tag: str) -> dict[int, float]:
  values = {}
  for path in glob.glob(os.path.join(logdir, '**', 'events.out.tfevents.*'), recursive=True):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


class RoundTimesTest(tf.test.TestCase):

  def test_a_slow_round_2_is_recorded_as_round_2_alone(self):
    root = self.create_tempdir().full_path
    config = helpers.smoke_config(root, rounds=4)
    config.federated.eval_every = 2  # Rounds 2 and 4 evaluate; 1 and 3 do not.
    lines = []
    with mock.patch.object(program, 'time', CLOCK):
      result = program.run(config, os.path.join(root, 'run'), runtime=_SlowRound2(), log=lines.append)
    rows = pd.read_csv(result.paths.metrics_csv).set_index('round')
    seconds, evals = rows['round_seconds'], rows['eval_seconds']
    self.assertEqual(evals[1], 0.0)
    self.assertEqual(evals[3], 0.0)
    self.assertGreaterEqual(evals[2], EVAL)
    self.assertGreaterEqual(evals[4], EVAL)
    self.assertTrue((seconds >= evals).all(), rows)
    self.assertGreaterEqual(seconds[2], SLOW + EVAL)
    # A running mean would carry at least a third of round 2's delay (200 s) into round 3.
    self.assertLess(seconds[3], seconds[4] - evals[4] + SLOW / 3, rows)
    progress = [line for line in lines if line.startswith('round 2/4 ')]
    self.assertLen(progress, 1)
    self.assertIn(f'| {seconds[2]:.2f} s this round | ETA ', progress[0])
    for tag, column in (('round_seconds', seconds), ('eval_seconds', evals)):
      logged = _scalars(result.paths.logdir, tag)
      self.assertEqual(sorted(logged), [1, 2, 3, 4], tag)
      for round_num, value in logged.items():
        self.assertAlmostEqual(value, column[round_num], places=4, msg=tag)


class ProgressTest(tf.test.TestCase):

  def test_eta_is_the_median_of_the_later_rounds(self):
    lines = []
    progress = program._Progress(10, lines.append)
    progress.round_done(1, 'loss 1', 100.0)  # Start-up: the only estimate so far.
    progress.round_done(2, 'loss 1', 3.0)
    progress.round_done(3, 'loss 1', 5.0)
    progress.round_done(4, 'loss 1', 4.5)
    self.assertEqual(lines[0], 'round 1/10 | loss 1 | 100.00 s this round | ETA 00:15:00')  # 9 x 100 s.
    self.assertEndsWith(lines[1], '| 3.00 s this round | ETA 00:00:24')  # 8 x 3 s: round 1 left out.
    self.assertEndsWith(lines[2], '| 5.00 s this round | ETA 00:00:28')  # 7 x median(3, 5).
    self.assertEndsWith(lines[3], '| 4.50 s this round | ETA 00:00:27')  # 6 x median(3, 5, 4.5).
    self.assertAlmostEqual(progress.mean_seconds, 112.5 / 4)

  def test_round_estimate(self):
    self.assertEqual(program.round_estimate([7.0]), 7.0)
    self.assertEqual(program.round_estimate([104.0, 3.0, 2.9, 2.5]), 2.9)


if __name__ == '__main__':
  tf.test.main()

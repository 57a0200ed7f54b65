import dataclasses
import math
import statistics as stdlib_statistics
from unittest import mock

from absl.testing import parameterized
import dp_accounting
import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats
import tensorflow as tf

from tffaml.privacy import accounting

A = accounting


def _analytic_gaussian_delta(epsilon, sigma):
  """Exact delta of the Gaussian mechanism (Balle & Wang 2018, Thm. 8)."""
  return (stats.norm.cdf(1 / (2 * sigma) - epsilon * sigma)
          - math.exp(epsilon) * stats.norm.cdf(-1 / (2 * sigma) - epsilon * sigma))


def _dp_sgd(q, z, steps):
  return dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)


def _client(z=1.0, n=12, m=12, sampling=A.Sampling.FULL):
  return A.ClientLevelDp(noise_multiplier=z, institutions=n, clients_per_round=m,
                         sampling=sampling, clipping='fixed clip 1')


def _record(z=1.0, units=(400, 993, 384), batch=32):
  return A.RecordLevelDp(noise_multiplier=z, clip=1.0, expected_batch_size=batch, epochs=1,
                         units=units)


class EpsilonTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.parameters(
      (0.0025, 1.3, 6000, 1e-5, A.Accountant.RDP, 0.7242),  # Abadi et al. 2016 setting.
      (0.001, 1.0, 30000, 1e-7, A.Accountant.RDP, 1.4155),
      (0.0025, 1.3, 6000, 1e-5, A.Accountant.PLD, 0.6506),
      (0.001, 1.0, 30000, 1e-7, A.Accountant.PLD, 1.1521),
  )
  def test_poisson_gaussian_known_values(self, q, z, steps, delta, accountant, expected):
    self.assertAlmostEqual(
        A.epsilon(_dp_sgd(q, z, steps), delta, accountant=accountant), expected, places=4)

  def test_full_participation_between_exact_and_classic_rdp_bounds(self):
    z, rounds, delta = 1.0, 100, 1e-5
    rdp = A.epsilon(_client(z).event(rounds), delta)
    pld = A.epsilon(_client(z).event(rounds), delta, accountant=A.Accountant.PLD)
    # T Gaussian rounds = one Gaussian with multiplier z / sqrt(T): exact ε known.
    sigma = z / math.sqrt(rounds)
    exact = optimize.brentq(lambda e: _analytic_gaussian_delta(e, sigma) - delta, 1.0, 200.0)
    self.assertBetween(pld, exact - 1e-3, exact * 1.001)  # PLD is tight here.
    self.assertLess(pld, rdp)
    orders = np.linspace(1.01, 200, 20000)
    classic = np.min(rounds * orders / (2 * z**2) + math.log(1 / delta) / (orders - 1))
    self.assertLessEqual(rdp, classic)  # Mironov 2017, Prop. 3.
    self.assertAlmostEqual(rdp, 96.1163, places=3)

  def test_sampling_amplifies(self):
    def eps(sampling, m):
      return A.epsilon(_client(n=50, m=m, sampling=sampling).event(100), 1e-5,
                       relation=_client(n=50, m=m, sampling=sampling).relation)
    self.assertLess(eps(A.Sampling.POISSON, 5), eps(A.Sampling.FULL, 50))
    self.assertLess(eps(A.Sampling.FIXED_SIZE, 5), eps(A.Sampling.FULL, 50))

  def test_pld_refuses_what_it_cannot_compose(self):
    client = _client(n=50, m=5, sampling=A.Sampling.FIXED_SIZE)
    with self.assertRaisesRegex(ValueError, 'the pld accountant cannot compose SelfComposedDpEvent'):
      A.epsilon(client.event(10), 1e-5, accountant=A.Accountant.PLD, relation=client.relation)

  def test_pld_refuses_noise_it_would_need_gigabytes_for(self):
    # σ = 0.01 took 104 s and 15 GB before this check; RDP accounts it at once.
    tiny = A.poisson_gaussian_event(sampling_rate=0.2, noise_multiplier=0.01, steps=60)
    with self.assertRaisesRegex(ValueError, 'noise multiplier 0.01 is below 0.1, .* use the rdp accountant'):
      A.epsilon(tiny, 1e-5, accountant=A.Accountant.PLD)
    self.assertGreater(A.epsilon(tiny, 1e-5, accountant=A.Accountant.RDP), 1000)

  def test_smallest_noise_looks_inside_every_event(self):
    event = dp_accounting.ComposedDpEvent((
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(14.0), 2),
        A.poisson_gaussian_event(sampling_rate=0.2, noise_multiplier=0.7, steps=3)))
    self.assertEqual(A.smallest_noise(event), 0.7)
    self.assertEqual(A.smallest_noise(dp_accounting.NonPrivateDpEvent()), math.inf)
    # No noise at all is ε = inf, which PLD finds at once (a sabotaged node's plan in the audits).
    noiseless = A.poisson_gaussian_event(sampling_rate=0.5, noise_multiplier=0.0, steps=10)
    self.assertEqual(A.smallest_noise(noiseless), math.inf)
    self.assertEqual(A.epsilon(noiseless, 1e-5, accountant=A.Accountant.PLD), math.inf)

  def test_bad_delta(self):
    with self.assertRaisesRegex(ValueError, r'delta must be in \(0, 1\), got 0'):
      A.epsilon(_client().event(1), 0)


class CalibrationTest(tf.test.TestCase, parameterized.TestCase):

  def test_recovers_the_known_noise(self):
    noise = A.noise_for_epsilon(
        lambda z: _dp_sgd(0.0025, z, 6000), target_epsilon=0.7242, delta=1e-5,
        accountant=A.Accountant.RDP)
    self.assertAlmostEqual(noise, 1.3, delta=0.003)

  @parameterized.parameters(A.Accountant.RDP, A.Accountant.PLD)
  def test_a_target_looser_than_the_least_noise_gets_the_least_noise(self, accountant):
    event = lambda z: _dp_sgd(0.01, z, 10)
    self.assertLess(A.epsilon(event(A.MIN_NOISE_MULTIPLIER), 1e-5, accountant=accountant), 1e4)
    noise = A.noise_for_epsilon(event, target_epsilon=1e4, delta=1e-5, accountant=accountant)
    self.assertEqual(noise, A.MIN_NOISE_MULTIPLIER)

  # The last case's answer is below the guess, so both searches account the least noise, where PLD is
  # slowest (about 2 CPU-s each): RDP there; the search is the same for both accountants.
  @parameterized.parameters((A.Accountant.PLD, 0.05, 40, 1.0), (A.Accountant.RDP, 0.05, 40, 1.0),
                            (A.Accountant.PLD, 0.2, 200, 1.0), (A.Accountant.RDP, 0.05, 40, 8.0))
  def test_the_noise_is_dp_accountings_own_search_without_accounting_the_least_noise(
      self, accountant, q, steps, target):
    event = lambda z: _dp_sgd(q, z, steps)
    asked = []
    noise = A.noise_for_epsilon(lambda z: asked.append(z) or event(z), target_epsilon=target, delta=1e-5,
                                accountant=accountant)
    # dp_accounting's whole search from the same (lower end, guess), as before the shortcut.
    expected = dp_accounting.calibrate_dp_mechanism(
        lambda: accountant.make(), event, target, 1e-5,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(A.MIN_NOISE_MULTIPLIER, 1.0), tol=1e-3)
    self.assertEqual(noise, expected)  # The same interval: brentq's same steps, bit for bit.
    if noise > 1.0:  # The guess has too little noise, and so has the least: never accounted.
      self.assertNotIn(A.MIN_NOISE_MULTIPLIER, asked)
    else:
      self.assertIn(A.MIN_NOISE_MULTIPLIER, asked)

  @parameterized.parameters(A.Accountant.RDP, A.Accountant.PLD)
  def test_record_noise_meets_target_at_the_worst_institution(self, accountant):
    record = _record()
    noise = A.calibrate_record_noise(record, rounds=20, target_epsilon=3.0, delta=1e-5,
                                     accountant=accountant)
    calibrated = A.PrivacyPlan(client=None, record=_record(z=noise), delta=1e-5,
                               accountant=accountant)
    eps = calibrated.statement(rounds=20, participation=[20, 20, 20]).epsilon
    self.assertBetween(eps, 2.97, 3.0)
    # The smallest institution (384 rows: the largest sampling rate) is the worst.
    self.assertIn('384 units', calibrated.statement(rounds=20, participation=[20] * 3).text())

  def test_record_noise_is_the_largest_institutions_own_and_calibrates_only_those_it_leaves_short(self):
    target = dict(rounds=5, target_epsilon=2.0, delta=1e-5, accountant=A.Accountant.RDP)
    own = lambda record, i: A.noise_for_epsilon(
        lambda z: dataclasses.replace(record, noise_multiplier=z).event(i, 5), target_epsilon=2.0,
        delta=1e-5, accountant=A.Accountant.RDP)
    record = _record(units=(400, 993, 384, 384))
    with mock.patch.object(A, 'noise_for_epsilon', wraps=A.noise_for_epsilon) as calibrations:
      noise = A.calibrate_record_noise.__wrapped__(record, **target)  # Not from memory.
    self.assertLen(calibrations.call_args_list, 1)  # The 384-unit banks' noise covers the larger ones.
    self.assertAlmostEqual(noise, max(own(record, i) for i in range(4)), delta=1e-3)

    class LargerTrainsLonger(A.RecordLevelDp):  # 100 rounds' steps for the larger: it needs more noise.
      def event(self, institution, rounds):
        return super().event(institution, rounds * (20 if self.units[institution] > 500 else 1))

    longer = LargerTrainsLonger(**dataclasses.asdict(record))
    with mock.patch.object(A, 'noise_for_epsilon', wraps=A.noise_for_epsilon) as calibrations:
      noise = A.calibrate_record_noise.__wrapped__(longer, **target)
    self.assertLen(calibrations.call_args_list, 2)
    self.assertAlmostEqual(noise, own(longer, 1), delta=1e-3)
    self.assertGreater(noise, own(longer, 2) + 0.1)
    for i in range(4):
      met = dataclasses.replace(longer, noise_multiplier=noise).event(i, 5)
      self.assertLessEqual(A.epsilon(met, 1e-5, accountant=A.Accountant.RDP), 2.0)

  def test_a_repeated_calibration_is_answered_from_memory_and_another_is_not(self):
    target = dict(rounds=7, target_epsilon=2.5, delta=1e-5, accountant=A.Accountant.RDP)  # RDP: fast.
    first = A.calibrate_record_noise(_record(), **target)
    hits = A.calibrate_record_noise.cache_info().hits
    self.assertEqual(A.calibrate_record_noise(_record(), **target), first)  # An equal record: the same question.
    self.assertEqual(A.calibrate_record_noise.cache_info().hits, hits + 1)
    looser = A.calibrate_record_noise(_record(), **{**target, 'target_epsilon': 5.0})
    self.assertLess(looser, first)
    self.assertEqual(A.calibrate_record_noise.cache_info().hits, hits + 1)

  def test_client_noise(self):
    noise = A.calibrate_client_noise(_client(), rounds=100, target_epsilon=96.1163, delta=1e-5,
                                     accountant=A.Accountant.RDP)
    self.assertAlmostEqual(noise, 1.0, delta=0.002)


class StatementTest(tf.test.TestCase):

  def test_no_mechanism_is_not_private(self):
    statement = A.PrivacyPlan(client=None, record=None, delta=1e-5).statement(
        rounds=5, participation=[5, 5, 5])
    self.assertFalse(statement.is_private)
    self.assertEqual(statement.to_dict()['epsilon'], 'inf')
    self.assertIn('No differential privacy guarantee', statement.text())

  def test_record_guarantee_first_and_uses_the_ledger(self):
    plan = A.PrivacyPlan(client=_client(n=3, m=3), record=_record(), delta=1e-5)
    statement = plan.statement(rounds=10, participation=[10, 10, 4])
    self.assertLen(statement.guarantees, 2)
    self.assertStartsWith(statement.guarantees[0].unit, 'record')
    self.assertEqual(statement.epsilon, statement.guarantees[0].epsilon)
    expected = max(A.epsilon(_record().event(i, r), 1e-5) for i, r in enumerate([10, 10, 4]))
    self.assertAlmostEqual(statement.epsilon, expected)
    every_round = plan.statement(rounds=10, participation=[10, 10, 10]).epsilon
    self.assertLess(statement.epsilon, every_round)
    self.assertAlmostEqual(statement.epsilon_for('institution'),
                           A.epsilon(_client(n=3, m=3).event(10), 1e-5))

  def test_text_names_unit_epsilon_delta_accountant(self):
    plan = A.PrivacyPlan(client=_client(n=10, m=4, sampling=A.Sampling.POISSON),
                         record=None, delta=1e-6, accountant=A.Accountant.PLD)
    text = plan.statement(rounds=10, participation=[4] * 10).text()
    for part in ('institution', '1e-06', 'PLD', 'Poisson sampling', 'q = 4/10', '10 rounds',
                 'simulated as a plain sum'):
      self.assertIn(part, text)

  def test_a_weak_guarantee_says_so_in_the_statement(self):
    client = _client(n=10, m=10)
    weak = A.PrivacyPlan(client=dataclasses.replace(client, noise_multiplier=0.3), record=None, delta=1e-5)
    strong = A.PrivacyPlan(client=dataclasses.replace(client, noise_multiplier=20.0), record=None, delta=1e-5)
    weak_statement = weak.statement(rounds=50, participation=[50] * 10)
    self.assertGreater(weak_statement.epsilon, A.WEAK_EPSILON)
    self.assertIn('This guarantee is weak: at ε > 10', weak_statement.text())
    strong_statement = strong.statement(rounds=5, participation=[5] * 10)
    self.assertLess(strong_statement.epsilon, A.WEAK_EPSILON)
    self.assertNotIn('weak', strong_statement.text())

  def test_batch_larger_than_smallest_institution_is_refused(self):
    with self.assertRaisesRegex(ValueError, 'expected_batch_size=500 exceeds the smallest'
                                ' institution \\(384 privacy units\\)'):
      _record(batch=500)



class DispatchTest(tf.test.TestCase):

  def test_every_accountant_gives_a_finite_epsilon(self):
    event = A.poisson_gaussian_event(sampling_rate=0.01, noise_multiplier=1.0, steps=100)
    for accountant in A.Accountant:
      self.assertBetween(A.epsilon(event, 1e-5, accountant=accountant), 0.1, 10.0, accountant)

  def test_every_sampling_has_an_event_and_a_description(self):
    for sampling in A.Sampling:
      client = _client(n=10, m=4, sampling=sampling)
      self.assertTrue(math.isfinite(A.epsilon(client.event(5), 1e-5, relation=client.relation)), sampling)
      self.assertIn('10', client.cohort())


  def test_every_aggregation_says_what_dp_relies_on(self):
    mechanism = accounting.DistributedRecordDp(noise_multiplier=4.0, clip=1.0, sampling_rate=0.25,
                                               units=(100, 300))
    plan = accounting.PrivacyPlan(client=_client(n=2, m=2, sampling=A.Sampling.FULL), record=mechanism,
                                  delta=1e-5)
    texts = {a: plan.statement(rounds=3, participation=[3, 3], aggregation=a).text() for a in A.Aggregation}
    for aggregation, text in texts.items():
      self.assertIn(aggregation.distributed_note(), text)
      self.assertIn(aggregation.client_note(), text)
    self.assertIn('simulated here as a plain sum', texts[A.Aggregation.SIMULATED])
    self.assertIn('which this federation did not run', texts[A.Aggregation.VISIBLE_UPDATES])
    self.assertNotIn('simulated', texts[A.Aggregation.VISIBLE_UPDATES])
    self.assertIn('which this federation ran (SecAgg+', texts[A.Aggregation.SECURE])
    self.assertNotIn('simulated', texts[A.Aggregation.SECURE])


class DistributedRecordDpTest(tf.test.TestCase):

  def _mechanism(self, **overrides):
    values = dict(noise_multiplier=4.0, clip=1.0, sampling_rate=0.25, units=(100, 300, 400, 200))
    values.update(overrides)
    return accounting.DistributedRecordDp(**values)

  def test_shares_sum_to_the_full_noise(self):
    mechanism = self._mechanism()
    # Four shares of variance (4/2)^2 sum to variance 4^2.
    self.assertAlmostEqual(mechanism.noise_share, 2.0)
    self.assertAlmostEqual(4 * mechanism.noise_share ** 2, 16.0)
    self.assertAlmostEqual(mechanism.expected_batch_size, 0.25 * 1000)

  def test_tolerated_dropouts_enlarge_the_shares_and_keep_the_accounted_noise(self):
    mechanism = self._mechanism(dropouts=1)
    # Any three of the four shares, variance (4/√3)^2 each, sum to variance 16: at least σ = 4.
    self.assertAlmostEqual(3 * mechanism.noise_share ** 2, 16.0)
    self.assertEqual(mechanism.event(0, 30), self._mechanism().event(0, 30))  # The accountant counts σ.
    self.assertLess(accounting.epsilon(mechanism.colluding_event(30), 1e-5),
                    accounting.epsilon(self._mechanism().colluding_event(30), 1e-5))  # A larger own share.
    text = mechanism.mechanism(0, [30] * 4, delta=1e-5, accountant=A.Accountant.PLD)
    self.assertIn('any 3 of the 4 shares carry it, so a round may lose 1 institution', text)
    for bad in (-1, 4):
      with self.assertRaisesRegex(ValueError, r'dropouts must be in \[0, 3\]'):
        self._mechanism(dropouts=bad)

  def test_epsilon_is_dp_sgd_on_the_union_for_every_institution(self):
    mechanism = self._mechanism()
    expected = accounting.epsilon(
        accounting.poisson_gaussian_event(sampling_rate=0.25, noise_multiplier=4.0, steps=30), 1e-5)
    plan = accounting.PrivacyPlan(client=None, record=mechanism, delta=1e-5)
    statement = plan.statement(rounds=30, participation=[30, 30, 30, 30])
    self.assertAlmostEqual(statement.epsilon, expected)
    for institution in range(4):
      self.assertEqual(mechanism.event(institution, 30), mechanism.event(0, 30))
    colluding = accounting.epsilon(mechanism.colluding_event(30), 1e-5)
    self.assertGreater(colluding, expected)
    text = statement.text()
    self.assertIn('relies on secure aggregation', text)
    self.assertIn(f'{colluding:.4g}', text)
    self.assertNotIn('Client-level DP assumes', text)

  def test_collusion_below_what_pld_handles_is_rdp_said_so(self):
    # The default run at ε = 300: twelve shares of σ = 0.2037 are 0.059 each,
    # and PLD's discretisation fails on them composed with the statistics.
    mechanism = self._mechanism(noise_multiplier=0.2037, sampling_rate=0.2, units=(100,) * 12)
    statistics = accounting.FeatureStatisticsDp(noise_multiplier=14.0, numeric=5, categorical=4,
                                                institutions=12)
    colluding = dp_accounting.ComposedDpEvent((mechanism.colluding_event(60), statistics.colluding_event()))
    with self.assertRaises(ValueError):
      accounting.epsilon(colluding, 1e-5, accountant=accounting.Accountant.PLD)
    plan = accounting.PrivacyPlan(client=None, record=mechanism, delta=1e-5, statistics=statistics,
                                  accountant=accounting.Accountant.PLD)
    text = plan.statement(rounds=60, participation=[60] * 12).text()
    rdp = accounting.epsilon(colluding, accounting.accountant_delta(1e-5, statistics),
                             accountant=accounting.Accountant.RDP)
    self.assertIn(f'ε = {rdp:.4g} (RDP: too little noise for PLD)', text)

  def test_calibration_reaches_the_target(self):
    noise = accounting.calibrate_record_noise(
        self._mechanism(noise_multiplier=1.0), rounds=20, target_epsilon=1.0, delta=1e-5,
        accountant=accounting.Accountant.RDP)
    plan = accounting.PrivacyPlan(client=None, record=self._mechanism(noise_multiplier=noise), delta=1e-5)
    self.assertAlmostEqual(plan.statement(rounds=20, participation=[20] * 4).epsilon, 1.0, delta=0.002)

  def test_bad_sampling_rate(self):
    with self.assertRaisesRegex(ValueError, 'sampling_rate must be in'):
      self._mechanism(sampling_rate=0.0)


class FeatureStatisticsDpTest(tf.test.TestCase):

  def _statistics(self, **overrides):
    values = dict(noise_multiplier=10.0, numeric=5, categorical=4, institutions=4)
    values.update(overrides)
    return accounting.FeatureStatisticsDp(**values)

  def test_noise_and_threshold_by_hand(self):
    statistics = self._statistics()
    self.assertAlmostEqual(statistics.stddev, 30.0)  # 10 * sqrt(5 + 4).
    self.assertAlmostEqual(statistics.threshold_delta(1e-5), 1e-6)
    tau = statistics.vocabulary_threshold(1e-5)
    # Four categorical values of one unit, each alone in its count: together
    # published with probability threshold_delta.
    alone = 1 - stdlib_statistics.NormalDist(1.0, 30.0).cdf(tau)
    self.assertAlmostEqual(4 * alone / 1e-6, 1.0, places=6)
    self.assertEqual(self._statistics(categorical=0).threshold_delta(1e-5), 0.0)

  def test_composed_before_the_training_steps(self):
    statistics = self._statistics()
    record = accounting.DistributedRecordDp(noise_multiplier=4.0, clip=1.0, sampling_rate=0.25,
                                            units=(100, 300, 400, 200))
    plan = accounting.PrivacyPlan(client=None, record=record, delta=1e-5, statistics=statistics)
    statement = plan.statement(rounds=30, participation=[30] * 4)
    # Two Gaussian releases at z = 10, then 30 steps, at the accountant's 0.9 of δ.
    expected = accounting.epsilon(dp_accounting.ComposedDpEvent([
        dp_accounting.GaussianDpEvent(10.0), dp_accounting.GaussianDpEvent(10.0),
        accounting.poisson_gaussian_event(sampling_rate=0.25, noise_multiplier=4.0, steps=30)]), 9e-6)
    self.assertAlmostEqual(statement.epsilon, expected, places=6)
    without = accounting.PrivacyPlan(client=None, record=record, delta=1e-5)
    self.assertGreater(statement.epsilon, without.statement(rounds=30, participation=[30] * 4).epsilon)
    self.assertIn('Covered: the model and every update it was computed from; the feature statistics',
                  statement.text())
    self.assertIn('Not covered: the federated feature statistics',
                  without.statement(rounds=30, participation=[30] * 4).text())
    # Before any round the statistics alone have been released.
    self.assertGreater(plan.statement(rounds=0, participation=[0] * 4).epsilon, 0.0)
    # An exact alert threshold in the metadata: the package is no longer wholly covered.
    with_threshold = dataclasses.replace(plan, exact_alert_threshold=True)
    text = with_threshold.statement(rounds=30, participation=[30] * 4).text()
    self.assertNotIn('its alert threshold', text.split('Not covered:')[0])
    self.assertIn('Not covered: the alert threshold', text)
    self.assertEqual(with_threshold.statement(rounds=30, participation=[30] * 4).epsilon,
                     statement.epsilon)
    # A DP alert threshold: two more releases at z = 10, and the package stays covered.
    dp_threshold = dataclasses.replace(plan, statistics=self._statistics(alert_passes=2, alert_rows=16))
    covered = dp_threshold.statement(rounds=30, participation=[30] * 4)
    expected = accounting.epsilon(dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(10.0)] * 4
        + [accounting.poisson_gaussian_event(sampling_rate=0.25, noise_multiplier=4.0, steps=30)]), 9e-6)
    self.assertAlmostEqual(covered.epsilon, expected, places=6)
    self.assertIn('; its alert threshold. Not covered: the evaluation metrics', covered.text())
    self.assertIn('the alert threshold comes from 2 histograms of the training scores (each unit adding at'
                  ' most 16 rows\' worth) with noise of standard deviation 160', covered.text())

  def test_hashed_slot_counts_have_the_sensitivity_the_statistics_event_counts(self):
    # Issue 34: under DP the categorical counts are over public hashed slots. Removing any one
    # unit's row changes the release 2 vector (fine histograms, slot counts) by exactly √columns in
    # L2, as it did with per-value counts: noise σ = z·√columns is a Gaussian mechanism of
    # multiplier z, what the statistics' DpEvent holds for each release.
    from tffaml import features  # pylint: disable=g-import-not-at-top
    from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
    schema = schema_lib.Schema(label='y', positive='1', numeric=('income', 'age'), categorical=('region', 'employer'))
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        'income': rng.lognormal(10, 1, 50), 'age': rng.uniform(18, 90, 50),
        'region': rng.choice(['n', 's'], 50), 'employer': [f'employer {i}' for i in range(50)], 'y': 0})
    ranges = [(1e3, 1e6, 1e3), (10.0, 100.0, 1.0)]

    def release(rows):
      answer = features.answer(rows, schema, features.Request.FINE_COUNTS,
                               {'ranges': ranges, 'hash_buckets': features.HASH_BUCKETS})
      return np.concatenate([answer['fine'].ravel(), answer['category_counts']])
    full = release(frame)
    self.assertLen(full, 2 * features.FINE_BINS + 2 * features.HASH_BUCKETS)
    changes = {round(float(np.linalg.norm(full - release(frame.drop(index=i)))), 9) for i in range(50)}
    self.assertEqual(changes, {round(math.sqrt(4), 9)})
    statistics = self._statistics(numeric=2, categorical=2)
    self.assertAlmostEqual(statistics.stddev / math.sqrt(4), statistics.noise_multiplier)
    hand_built = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(10.0), 2)
    self.assertEqual(statistics.event(), hand_built)
    self.assertAlmostEqual(accounting.epsilon(statistics.event(), 1e-5),
                           accounting.epsilon(hand_built, 1e-5), places=9)
    self.assertIn('public hashed slots of 2 categorical columns', statistics.mechanism(1e-5))

  def test_the_statement_lists_what_it_covers_and_the_exact_counts_it_does_not(self):
    record = accounting.DistributedRecordDp(noise_multiplier=4.0, clip=1.0, sampling_rate=0.25,
                                            units=(100, 300, 400, 200))
    plan = accounting.PrivacyPlan(client=None, record=record, delta=1e-5, statistics=self._statistics())
    statement = plan.statement(rounds=3, participation=[3] * 4)
    value = statement.to_dict()
    self.assertTrue(value['package_withholds_per_institution'])
    self.assertIn(f' Covered: {"; ".join(value["covered"])}. Not covered: {"; ".join(value["not_covered"])}.',
                  value['text'])
    self.assertIn('no category value left an institution', value['covered'][1])
    self.assertIn("each institution's numbers of training and test rows, of positives among them and of privacy"
                  ' units, quoted in this statement, exact', value['not_covered'][-1])
    self.assertIn('left out of the exported package', value['not_covered'][-1])
    self.assertIn('the exported package holds the pooled ones only', value['not_covered'][-2])
    # Without DP: nothing is claimed, and the statement is as it was.
    none = accounting.PrivacyPlan(client=None, record=None, delta=1e-5).statement(rounds=3, participation=[3] * 4)
    self.assertNotIn('covered', none.to_dict())
    self.assertNotIn('package_withholds_per_institution', none.to_dict())

  def test_calibration_counts_the_statistics(self):
    record = accounting.DistributedRecordDp(noise_multiplier=1.0, clip=1.0, sampling_rate=0.25,
                                            units=(100, 300, 400, 200))
    target = dict(rounds=20, target_epsilon=1.0, delta=1e-5, accountant=accounting.Accountant.RDP)
    alone = accounting.calibrate_record_noise(record, **target)
    noise = accounting.calibrate_record_noise(record, statistics=self._statistics(), **target)
    self.assertGreater(noise, alone)  # The statistics spend some of ε.
    plan = accounting.PrivacyPlan(
        client=None, record=dataclasses.replace(record, noise_multiplier=noise), delta=1e-5,
        statistics=self._statistics())
    self.assertAlmostEqual(plan.statement(rounds=20, participation=[20] * 4).epsilon, 1.0, delta=0.002)


if __name__ == '__main__':
  tf.test.main()

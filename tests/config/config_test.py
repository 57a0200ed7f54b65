import collections
import copy
import dataclasses
import math
from unittest import mock

from absl.testing import parameterized
import tensorflow as tf

from configs import loan_risk
from tffaml import errors
from tffaml.config import builders as config_builders
from tffaml.config import checks as config_checks
from tffaml.config import data as config_data
from tffaml.config import plan as config_plan
from tffaml.data import loading
from tffaml.data import transactions
from tffaml.federated import aggregators
from tffaml.privacy import accounting
from tffaml.models import tabular


def _config(**overrides):
  config = loan_risk.get_config('smoke')
  for key, value in overrides.items():
    section, name = key.split('__')
    config[section][name] = value
  return config


class ParseChoicesTest(tf.test.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ('pld_fixed_size', dict(privacy__accountant='pld', federated__sampling='fixed_size',
                              federated__clients_per_round=3),
       "accountant='pld' cannot account for config.federated.sampling='fixed_size'"),
      ('autoencoder_with_bce', dict(model__name='autoencoder', model__alert_budget=0.01),
       "config.model.loss='bce' does not fit config.model.name='autoencoder'"),
      ('classifier_with_reconstruction', dict(model__loss='reconstruction'),
       "config.model.loss='reconstruction' does not fit config.model.name='mlp'"),
      ('autoencoder_without_budget', dict(model__name='autoencoder', model__loss='reconstruction'),
       'set config.model.alert_budget'),
      ('budget', dict(model__alert_budget=1.5), r'config.model.alert_budget must be in \[0, 1\), got 1.5'),
      ('evaluation_budgets', dict(evaluation__alert_budgets=(0.01, 2.0)),
       'config.evaluation.alert_budgets must lie in'),
      ('loss', dict(model__loss='hinge'), "config.model.loss='hinge' is not one of"),
      ('input_rounding', dict(export__input_rounding='rate=1,amount'),
       r"config.export.input_rounding: 'amount' is not column=step"),
      ('score_decimals', dict(export__score_decimals=12), 'config.export: score_decimals must be in'),
      ('record_dp_fedprox', dict(record_dp__enabled=True, federated__algorithm='fedprox',
                                 federated__proximal_strength=0.1),
       "config.federated.algorithm='fedprox' must be 'fedavg'"),
      ('record_dp_weighted', dict(record_dp__enabled=True, aggregator__type='mean',
                                  federated__weighting='examples'),
       "needs config.federated.weighting='uniform'"),
      ('median_weighted', dict(aggregator__type='median', federated__weighting='examples'),
       "config.aggregator.type='median' weighs every institution alike; set config.federated.weighting='uniform'"),
      ('record_dp_clip', dict(record_dp__enabled=True, record_dp__clip=0.0),
       'config.record_dp.clip must be > 0, got 0.0'),
      ('target_without_mechanism', dict(aggregator__type='mean', aggregator__noise_multiplier=0.0,
                                        privacy__target_epsilon=3.0),
       'config.privacy.target_epsilon=3.0 needs a DP mechanism'),
      ('distributed_sampled_cohort', dict(record_dp__enabled=True, record_dp__mode='distributed',
                                          aggregator__type='mean', federated__sampling='poisson',
                                          federated__clients_per_round=2),
       "config.record_dp.mode='distributed' needs every institution's noise share"),
      ('distributed_dp_aggregator', dict(record_dp__enabled=True, record_dp__mode='distributed'),
       "set config.aggregator.type='mean' \\(got 'gaussian_adaptive'\\)"),
      ('record_dp_mode', dict(record_dp__mode='central'),
       "config.record_dp.mode='central' is not one of"),
      ('sampling_rate', dict(record_dp__sampling_rate=1.5), r'config.record_dp.sampling_rate must be in \(0, 1\]'),
      ('bad_statistics_noise', dict(record_dp__enabled=True, features__noise_multiplier=0.0),
       r'config.features.noise_multiplier must be > 0, got 0.0 \(None: exact statistics'),
      ('pld_tiny_record_noise', dict(record_dp__enabled=True, record_dp__mode='distributed',
                                     aggregator__type='mean', record_dp__noise_multiplier=0.01,
                                     privacy__accountant='pld'),
       "config.record_dp.noise_multiplier=0.01 is below 0.1: too little noise for config.privacy.accountant='pld'"),
      ('pld_tiny_statistics_noise', dict(record_dp__enabled=True, record_dp__mode='distributed',
                                         aggregator__type='mean', features__noise_multiplier=0.05,
                                         privacy__accountant='pld', privacy__target_epsilon=1.0),
       "config.features.noise_multiplier=0.05 is below 0.1: .* set config.privacy.accountant='rdp'"),
      ('pld_tiny_client_noise', dict(aggregator__noise_multiplier=0.02, privacy__accountant='pld'),
       'config.aggregator.noise_multiplier=0.02 is below 0.1'),
      ('bad_accountant', dict(privacy__accountant='moments'),
       "config.privacy.accountant='moments' is not one of \\['rdp', 'pld'\\]"),
  )
  def test_bad_privacy_config_is_named(self, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      config_checks.parse_choices(_config(**overrides))

  def test_pld_takes_small_noise_it_can_account_and_rdp_any(self):
    config_checks.parse_choices(_config(aggregator__noise_multiplier=0.1, privacy__accountant='pld'))
    config_checks.parse_choices(_config(aggregator__noise_multiplier=0.01, privacy__accountant='rdp'))

  def test_good_record_dp_config(self):
    choices = config_checks.parse_choices(loan_risk.get_config('record_dp'))
    self.assertEqual(choices.aggregator.value, 'mean')



class ClientWorkTest(tf.test.TestCase):

  def test_one_choice_of_client_work_and_every_one_builds_its_process(self):
    from tests import helpers  # pylint: disable=g-import-not-at-top
    from tffaml import features  # pylint: disable=g-import-not-at-top
    from tffaml.federated import client_data  # pylint: disable=g-import-not-at-top
    data = helpers.load_federation()
    config = _config(aggregator__type='mean', record_dp__enabled=True)
    choices = config_checks.parse_choices(config)
    record = config_plan.privacy_plan_for_data(config, choices, data, cohort=3)
    config.record_dp.mode = 'distributed'
    distributed_choices = config_checks.parse_choices(config)
    distributed = config_plan.privacy_plan_for_data(config, distributed_choices, data, cohort=3)
    config.record_dp.enabled = False
    plain = config_plan.privacy_plan_for_data(config, choices, data, cohort=3)
    self.assertIs(config_builders.client_work(plain, boosting=False), config_builders.ClientWork.FEDERATED)
    self.assertIs(config_builders.client_work(record, boosting=False), config_builders.ClientWork.DP_SGD)
    self.assertIs(config_builders.client_work(plain, boosting=True), config_builders.ClientWork.SCALED_UPDATES)
    self.assertIs(config_builders.client_work(distributed, boosting=False),
                  config_builders.ClientWork.DISTRIBUTED_DP_SGD)
    space = features.compute_feature_space(data, min_category_count=1)
    keras_model = config_builders.keras_model_fn(config, choices, space)
    model_fn = config_builders.model_fn(config, choices, keras_model, client_data.element_spec(data.schema))
    aggregator = config_builders.build_aggregator(config, choices, plain, cohort=3, noise_seed=0)
    for work in config_builders.ClientWork:
      plan = {config_builders.ClientWork.DP_SGD: record,
              config_builders.ClientWork.DISTRIBUTED_DP_SGD: distributed}.get(work, plain)
      process = config_builders.build_train_process(config, choices, plan, work=work, model_fn=model_fn,
                                               aggregator=aggregator)
      self.assertIn('next', dir(process), work)
    built = {}
    with mock.patch.object(config_builders, '_BUILT', collections.OrderedDict()), \
        mock.patch.object(config_builders, 'BUILT_KEPT', 2):
      for side in reversed(config_builders.Side):  # Every side builds; only a node's has no aggregator.
        built[side] = config_builders.build_training(config, choices, plain, space, data.schema, side=side, cohort=3)
        self.assertIs(built[side].work, config_builders.ClientWork.FEDERATED)
        self.assertEqual(built[side].parts.aggregator is None, side is config_builders.Side.NODE, side)
        self.assertEqual(built[side].process is None, side is config_builders.Side.NODE, side)
      # Built once per process: the same config elsewhere on disk is the same build ...
      moved = copy.deepcopy(config)
      moved.data.dir, moved.data.schema_file = '/elsewhere', '/elsewhere/schema.json'
      counts = config_builders.build_counts()
      again = config_builders.build_training(moved, choices, plain, space, data.schema,
                                             side=config_builders.Side.WHOLE, cohort=3)
      self.assertIs(again, built[config_builders.Side.WHOLE])
      # ... while the two most recent are kept: the node's, built first, is built again.
      node = config_builders.build_training(config, choices, plain, space, data.schema,
                                            side=config_builders.Side.NODE, cohort=3)
      self.assertIsNot(node, built[config_builders.Side.NODE])
      self.assertEqual(config_builders.build_counts(),
                       {'hits': counts['hits'] + 1, 'misses': counts['misses'] + 1})
    # A kept build's model is the config's when it was built, whatever the config becomes.
    first = config_builders.initial_weights(node.keras_model_fn)
    config.seed += 1
    for kept, built_first in zip(config_builders.initial_weights(node.keras_model_fn).trainable, first.trainable):
      self.assertAllEqual(kept, built_first)
    self.assertNotAllClose(config_builders.initial_weights(config_builders.keras_model_fn(config, choices, space))
                           .trainable[0], first.trainable[0])

  def test_a_build_is_keyed_by_all_it_reads_but_the_file_locations(self):
    from tests import helpers  # pylint: disable=g-import-not-at-top
    from tffaml import features  # pylint: disable=g-import-not-at-top
    data = helpers.load_federation()
    config = _config(aggregator__type='mean')
    plan = config_plan.privacy_plan_for_data(config, config_checks.parse_choices(config), data, cohort=3)
    space = features.compute_feature_space(data, min_category_count=1)
    key = lambda c=config, p=plan, s=space, **kw: config_builders._build_key(  # pylint: disable=protected-access
        c, p, s, data.schema, **{'side': 'whole', 'noise_seed': 0, **kw})
    moved = copy.deepcopy(config)
    moved.data.update(dir='/a', path='/b.csv', schema_file='/c.json')
    moved.public.path = '/d.csv'
    moved.data.stream = not config.data.stream
    self.assertEqual(key(moved), key())
    run_only = copy.deepcopy(config)  # What a run reads after its build: one build for both.
    run_only.evaluation.validation_fraction /= 2
    run_only.reference.centralized_epochs += 1
    run_only.personalize.epochs += 1
    run_only.runtime.workers = 'localhost:1'
    self.assertEqual(key(run_only), key())
    changed_rate = copy.deepcopy(config)
    changed_rate.federated.client_learning_rate *= 2
    changed_model = copy.deepcopy(config)
    changed_model.model.threshold /= 2
    changed_space = dataclasses.replace(space, mean={**space.mean, 'amount': space.mean['amount'] + 1})
    others = [key(changed_rate), key(changed_model), key(s=changed_space), key(side='node'), key(noise_seed=1),
              key(p=dataclasses.replace(plan, delta=plan.delta / 2))]
    self.assertLen(set(others + [key()]), len(others) + 1)



class RegistryTest(tf.test.TestCase):
  """The config layer's readers: one entry per model, aggregator and data source."""

  def test_every_member_has_a_reader(self):
    # A new member without its reader fails here, not in a run.
    self.assertCountEqual(config_builders.AGGREGATOR_PARAMS, aggregators.AggregatorType)
    self.assertCountEqual(config_builders.MODEL_PARAMS, tabular.ModelType)
    self.assertCountEqual(config_data.SPEC_READERS, loading.Source)

  def test_a_member_without_a_reader_is_refused_by_name(self):
    config = _config(aggregator__type='median')
    choices = config_checks.parse_choices(config)
    with mock.patch.dict(config_builders.AGGREGATOR_PARAMS):
      del config_builders.AGGREGATOR_PARAMS[aggregators.AggregatorType.MEDIAN]
      with self.assertRaisesRegex(ValueError, r'MEDIAN.*has no entry in tffaml.config.builders.AGGREGATOR_PARAMS'):
        config_builders.aggregator_params(
            config, choices, accounting.PrivacyPlan(client=None, record=None, delta=1e-5), cohort=3, noise_seed=0)
    with mock.patch.dict(config_data.SPEC_READERS):
      del config_data.SPEC_READERS[loading.Source.LENDING_CLUB]
      with self.assertRaisesRegex(ValueError, r'LENDING_CLUB.*has no entry in tffaml.config.data.SPEC_READERS'):
        config_data.data_spec(config)

  def test_each_reader_reads_its_own_keys_of_its_section(self):
    config = loan_risk.get_config()
    config.aggregator.update(clip=0.3, zeroing_norm=2.0, trim_fraction=0.1, target_unclipped_quantile=0.7)
    read = lambda t: config_builders.AGGREGATOR_PARAMS[t](config.aggregator)
    self.assertEqual(read(aggregators.AggregatorType.CLIPPING), dict(clip=0.3, zeroing_norm=2.0))
    self.assertEqual(read(aggregators.AggregatorType.TRIMMED_MEAN), dict(trim_fraction=0.1))
    self.assertEqual(read(aggregators.AggregatorType.MEAN), {})
    for aggregator_type in aggregators.AggregatorType:  # Every reader gives fields of aggregators.Params.
      aggregators.Params(weighted=False, clients_per_round=3, **read(aggregator_type))
    config.model.update(hidden_units=[8], embedding_dim=3)
    self.assertEqual(config_builders.MODEL_PARAMS[tabular.ModelType.MLP](config.model),
                     dict(hidden_units=(8,), embedding_dim=3, prior_positive_rate=0.5))
    self.assertEqual(config_builders.MODEL_PARAMS[tabular.ModelType.LOGISTIC](config.model),
                     dict(prior_positive_rate=0.5))
    for model_type in tabular.ModelType:
      tabular.ModelParams(**config_builders.MODEL_PARAMS[model_type](config.model))

  def test_every_source_reads_its_data_spec(self):
    config = loan_risk.get_config()
    config.data.update(path='t.csv', dir='d', schema_file='s.json')
    for source in loading.Source:
      config.data.source = source.value
      self.assertIs(config_data.data_spec(config).source, source)
    self.assertIs(config_data.agreed_schema(config), transactions.SCHEMA)  # amlworld_federation's own.
    config.data.source = 'csv_dir'
    self.assertEqual(config_data.data_spec(config).directory, 'd')


class DefaultsTest(tf.test.TestCase):

  def test_default_is_record_level_dp_at_epsilon_one(self):
    config = loan_risk.get_config()
    choices = config_checks.parse_choices(config)
    self.assertTrue(config.record_dp.enabled)
    self.assertIs(choices.record_dp_mode, accounting.RecordDpMode.DISTRIBUTED)
    self.assertEqual(config.privacy.target_epsilon, 1.0)
    self.assertLessEqual(config.privacy.delta, 1e-5)

  def test_every_aml_preset_parses_and_the_default_protects_accounts(self):
    from configs import aml  # pylint: disable=g-import-not-at-top
    from configs import aml_autoencoder  # pylint: disable=g-import-not-at-top
    for preset in ('', 'public', 'client_dp', 'smoke', 'no_dp', 'compare', 'stream'):
      config = aml.get_config(preset)
      config.data.path = 'transactions.csv'
      config_checks.parse_choices(config)
      self.assertEqual(config_data.data_spec(config).selection.path, 'transactions.csv')
      self.assertEqual(config.record_dp.enabled, preset in ('', 'public'), preset)
    public = aml.get_config('public')  # The default's mechanism, from make train-aml's public corpus.
    self.assertEqual((public.public.path, public.federated.rounds), (aml.PUBLIC_CORPUS, 30))
    # Each bank's own copy too; no other preset personalizes (compare's private row uses its own config).
    self.assertEqual(public.personalize.epochs, 3)
    self.assertEqual(aml.get_config().personalize.epochs, 0)
    self.assertEqual(public.privacy.target_epsilon, aml.get_config().privacy.target_epsilon)
    with self.assertRaisesRegex(ValueError, "unknown preset 'nope'"):
      aml.get_config('nope')
    config = aml.get_config()
    config.data.path = 'transactions.csv'
    self.assertIs(config_checks.parse_choices(config).record_dp_mode,
                  accounting.RecordDpMode.DISTRIBUTED)
    self.assertEqual(config.privacy.target_epsilon, 1.0)
    # The autoencoder keeps client-level DP (its DP-SGD form is unmeasured).
    self.assertFalse(aml_autoencoder.get_config().record_dp.enabled)

  def test_rarity_presets_parse_protect_accounts_and_refuse_data_without_payments(self):
    from configs import aml_rarity  # pylint: disable=g-import-not-at-top
    from tests import helpers  # pylint: disable=g-import-not-at-top
    for preset in ('', 'client_dp', 'smoke', 'no_dp', 'compare'):
      config = aml_rarity.get_config(preset)
      config.data.path = 'transactions.csv'
      choices = config_checks.parse_choices(config)
      self.assertIs(choices.model, tabular.ModelType.RARITY, preset)
      self.assertEqual(config.record_dp.enabled, preset == '', preset)
    schema = helpers.load_federation().schema
    with self.assertRaisesRegex(errors.ConfigError, r"config.model.name='rarity' scores transactions .* this data"
                                r" has no \['direction', 'hour_cos', 'hour_sin', 'log_amount_paid', 'payment_format'\]"):
      config_checks.check_model_fits(config, choices, schema)
    config.model.name = 'logistic'
    config.model.loss = 'bce'
    config_checks.check_model_fits(config, config_checks.parse_choices(config), schema)  # Fits any table.

  def test_clip_rule_bounds_a_row_where_the_noise_is_small_else_clips_to_one(self):
    # Two numeric and one categorical column: |(x, 1)| is about 2.
    row = config_plan.row_gradient_norm(tabular.ModelType.LOGISTIC, (2, 1))
    self.assertEqual(row, 2.0)
    self.assertEqual(config_plan.clip_rule(row, noise_multiplier=5.0, expected_batch_size=1000), 2.0)
    self.assertEqual(config_plan.clip_rule(row, noise_multiplier=5.0, expected_batch_size=999), 1.0)
    lenders = config_plan.row_gradient_norm(tabular.ModelType.LOGISTIC, (17, 4))
    self.assertAlmostEqual(config_plan.clip_rule(lenders, noise_multiplier=6.48, expected_batch_size=1478),
                           math.sqrt(22))  # The default lenders.

  def test_every_model_has_a_row_gradient_size(self):
    # The rarity model's softmax - one-hot is below sqrt(2) whatever the columns; the others sized as logistic's.
    for model in tabular.ModelType:
      expected = math.sqrt(2) if model is tabular.ModelType.RARITY else math.sqrt(26)
      self.assertAlmostEqual(config_plan.row_gradient_norm(model, (20, 5)), expected, msg=model)

  def test_sampling_rate_rule_depends_on_rows_only(self):
    self.assertEqual(config_plan.sampling_rate_rule(7392), 0.2)
    self.assertEqual(config_plan.sampling_rate_rule(100_000), 0.2)
    self.assertAlmostEqual(config_plan.sampling_rate_rule(1_000_000), 0.02)

  def test_plan_uses_the_rule_and_calibrates_to_the_target(self):
    from tests import helpers  # pylint: disable=g-import-not-at-top
    data = helpers.load_federation()
    config = loan_risk.get_config()
    config.federated.rounds = 5
    plan = config_plan.privacy_plan_for_data(config, config_checks.parse_choices(config), data, cohort=3)
    units = sum(len(i.train) for i in data.institutions)
    self.assertEqual(plan.record.sampling_rate, 0.2)
    self.assertEqual(plan.record.units, tuple(len(i.train) for i in data.institutions))
    # So few rows are noisy (σ / batch > 0.005): the clip of 1; server SGD steps at most 5.
    self.assertGreater(plan.record.noise_multiplier / plan.record.expected_batch_size, 0.005)
    self.assertEqual(plan.record.clip, 1.0)
    self.assertEqual(config_plan.server_learning_rate(config, plan), 5.0)
    config.record_dp.clip, config.federated.server_learning_rate = 2.0, 0.3  # Set: as set.
    plan = config_plan.privacy_plan_for_data(config, config_checks.parse_choices(config), data, cohort=3)
    self.assertEqual((plan.record.clip, config_plan.server_learning_rate(config, plan)), (2.0, 0.3))
    without = loan_risk.get_config()  # No record-level DP: FedAvg's server rate 1.
    without.record_dp.enabled, without.privacy.target_epsilon = False, None
    self.assertEqual(config_plan.server_learning_rate(without, config_plan.privacy_plan_for_data(
        without, config_checks.parse_choices(without), data, cohort=3)), 1.0)
    statement = plan.statement(rounds=5, participation=[5] * len(data.institutions))
    self.assertAlmostEqual(statement.epsilon, 1.0, delta=0.01)
    self.assertIn(f'{units} units', statement.text())

  def test_statistics_that_spend_the_whole_target_are_refused_by_name(self):
    config = loan_risk.get_config()
    config.federated.rounds = 5
    config.features.noise_multiplier = 2.0  # Alone, its releases cost more than ε = 1.
    choices = config_checks.parse_choices(config)
    with self.assertRaisesRegex(errors.ConfigError, r'config.features.noise_multiplier=2: the feature'
                                r' statistics alone spend ε = [\d.]+, not below config.privacy.target_epsilon=1'):
      config_plan.privacy_plan(config, choices, institution_units=[400, 900], cohort=2, columns=(5, 4))
    config.features.noise_multiplier = 14.0  # The default leaves the training most of it.
    plan = config_plan.privacy_plan(config, choices, institution_units=[400, 900], cohort=2, columns=(5, 4))
    self.assertAlmostEqual(plan.statement(rounds=5, participation=[5, 5]).epsilon, 1.0, delta=0.01)

  def test_crowding_note_by_hand(self):
    config = loan_risk.get_config()
    config.federated.rounds = 5
    choices = config_checks.parse_choices(config)
    plan = config_plan.privacy_plan(config, choices, institution_units=[400, 700], cohort=2, columns=(16, 14))
    # 44 / (1 * 1100) = 0.04, attrition's; 16 / 1100 = 0.0145 is just below 0.015.
    self.assertRegex(config_plan.crowding_note(plan, weights=44, epsilon=1.0),
                     r'^1,100 records train 44 weights at ε = 1: weights / \(ε · units\) = 0.040, at or above 0.015')
    self.assertIsNone(config_plan.crowding_note(plan, weights=16, epsilon=1.0))
    self.assertIsNotNone(config_plan.crowding_note(plan, weights=16, epsilon=0.5))  # 0.029.
    self.assertIsNone(config_plan.crowding_note(plan, weights=44, epsilon=None))  # No target: nothing to weigh.
    config.record_dp.enabled, config.privacy.target_epsilon = False, None
    no_record = config_plan.privacy_plan(config, config_checks.parse_choices(config), institution_units=[400, 700],
                                        cohort=2)
    self.assertIsNone(config_plan.crowding_note(no_record, weights=44, epsilon=1.0))

  def test_a_node_checks_the_calibrated_noise_it_is_sent_instead_of_calibrating(self):
    config = loan_risk.get_config()  # Local DP-SGD: each institution's ε depends on its size.
    config.record_dp.mode, config.features.noise_multiplier = 'local', None
    config.federated.rounds, config.federated.batch_size = 5, 32
    choices = config_checks.parse_choices(config)
    units = [400, 900, 2000]
    plan = config_plan.privacy_plan(config, choices, institution_units=units, cohort=3)
    sent = plan.noise_multipliers()
    self.assertEqual(set(sent), {'record'})
    for index in range(len(units)):
      received = config_plan.privacy_plan(config, choices, institution_units=units, cohort=3, noise=sent)
      self.assertEqual(received, plan)
      config_plan.check_noise(config, received, index)
    # Calibrated for the largest institution's size: the smallest one's ε would exceed the target.
    too_little = config_plan.privacy_plan(config, choices, institution_units=[2000] * 3, cohort=3)
    lowered = config_plan.privacy_plan(config, choices, institution_units=units, cohort=3,
                                      noise=too_little.noise_multipliers())
    config_plan.check_noise(config, lowered, 2)
    with self.assertRaisesRegex(errors.RunFailed, r'gives this institution ε = [\d.]+ after 5 rounds, above'
                                r' config.privacy.target_epsilon=1'):
      config_plan.check_noise(config, lowered, 0)
    config.privacy.target_epsilon = None  # Without a target, the config's own noise only.
    fixed = config_plan.privacy_plan(config, choices, institution_units=units, cohort=3)
    config_plan.check_noise(config, fixed, 0)
    with self.assertRaisesRegex(errors.RunFailed, 'are not the config'):
      config_plan.check_noise(config, config_plan.privacy_plan(
          config, choices, institution_units=units, cohort=3,
          noise={'record': config.record_dp.noise_multiplier / 2}), 0)

  def test_units_of_many_rows_are_sampled_by_the_rows_they_hold(self):
    # 3,000 accounts with 300,000 transactions: q caps the round's rows, not its accounts.
    config = loan_risk.get_config()
    config.features.noise_multiplier = None
    plan = config_plan.privacy_plan(
        config, config_checks.parse_choices(config), institution_units=[1000, 2000], cohort=2,
        unit_column='account', rows=300_000)
    self.assertAlmostEqual(plan.record.sampling_rate, 20_000 / 300_000)
    self.assertEqual(plan.record.units, (1000, 2000))
    unit_rows = config_plan.privacy_plan(
        config, config_checks.parse_choices(config), institution_units=[1000, 2000], cohort=2)
    self.assertEqual(unit_rows.record.sampling_rate, 0.2)

  def test_delta_must_be_below_one_over_the_smallest_institution(self):
    from tests import helpers  # pylint: disable=g-import-not-at-top
    data = helpers.load_federation()
    config = loan_risk.get_config()
    config.privacy.delta = 0.5
    smallest = min(len(i.train) for i in data.institutions)
    with self.assertRaisesRegex(ValueError, f'config.privacy.delta=0.5 is not below 1/{smallest}'):
      config_plan.privacy_plan_for_data(config, config_checks.parse_choices(config), data, cohort=3)


if __name__ == '__main__':
  tf.test.main()

import dataclasses
import math
import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import pandas as pd
import tensorflow as tf

from configs import csv as csv_config
from tests import helpers
from tffaml import errors
from tffaml.data import federated_data
from tffaml.data import schema as schema_lib
from tffaml.data import transaction_generator
from tffaml.training import centralized
from tffaml.training import personalize
from tffaml.studies import compare

M = compare.Method
CONFIGURED_METHODS = set(compare.CONFIGURED)
_ON_PUBLIC = (M.PUBLIC_ONLY, M.PUBLIC_GBT, M.GBT_LOCAL_PUBLIC)  # They need a public corpus.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CombineAndSummaryTest(tf.test.TestCase):

  def test_average_and_vote(self):
    per_model = [{'a': np.array([0.2, 0.7])}, {'a': np.array([0.6, 0.9])}]
    self.assertAllClose(compare._combine(per_model)['a'], [0.4, 0.8])
    # Model 1 votes at 0.5: [0, 1]; model 2 at 0.95: [0, 0].
    self.assertAllClose(compare._combine(per_model, [0.5, 0.95])['a'], [0.0, 0.5])

  def test_vote_threshold_flags_the_positive_rate(self):
    scores = np.linspace(0, 1, 101)
    labels = np.r_[np.zeros(91), np.ones(10)]
    threshold = compare._vote_threshold(scores, labels)
    self.assertEqual((scores >= threshold).sum(), 10)

  def test_summary_over_seeds(self):
    rows = []
    for seed, (a, b, pooled) in enumerate([(0.6, 0.8, 0.7), (0.7, 0.9, 0.8)]):
      rows += [{'method': 'fedavg', 'seed': seed, 'institution': 'x', 'train_rows': 10, 'auc': a},
               {'method': 'fedavg', 'seed': seed, 'institution': 'y', 'train_rows': 20, 'auc': b},
               {'method': 'fedavg', 'seed': seed, 'institution': 'all test rows',
                'train_rows': 30, 'auc': pooled}]
    summary = compare.summarize(pd.DataFrame(rows)).iloc[0]
    self.assertAlmostEqual(summary['pooled_auc_mean'], 0.75)
    self.assertAlmostEqual(summary['pooled_auc_std'], np.std([0.7, 0.8], ddof=1))
    self.assertAlmostEqual(summary['median_institution_auc_mean'], 0.75)  # (0.7 + 0.8) / 2
    self.assertAlmostEqual(summary['worst_institution_auc_mean'], 0.65)
    self.assertEqual(summary['seeds'], 2)


class ThresholdF1Test(tf.test.TestCase):

  def test_validation_rows_pick_the_threshold_and_leave_the_metrics(self):
    frame = lambda labels: pd.DataFrame({schema_lib.LABEL_COLUMN: labels})
    a = federated_data.Institution('a', train=frame([0, 1]), test=frame([0, 1, 0, 1, 1, 0, 0, 0, 1, 0]))
    scored = compare.Scored(data=federated_data.FederatedData(schema=None, institutions=(a,)))
    # Validation (first 4 rows): the best F1 flags >= 0.6. Later rows: flags 0.7 (a 1), 0.65 (a 0).
    scored.scores[M.FEDAVG] = {'a': np.array([0.9, 0.8, 0.7, 0.6, 0.7, 0.65, 0.1, 0.2, 0.3, 0.4])}
    scored.thresholds[M.FEDAVG] = {'a': 0.35}  # Flags 0.7, 0.65, 0.4: one of two positives.
    rows = compare._seed_rows(scored, 0, budgets=(), validation_fraction=0.4)
    pooled = [r for r in rows if r['institution'] == 'all test rows'][0]
    self.assertAlmostEqual(pooled['f1_at_validation_threshold'], 2 * 1 / (2 + 2))
    self.assertAlmostEqual(pooled['f1_at_alert_threshold'], 2 * 1 / (3 + 2))
    self.assertAlmostEqual(pooled['auc'], 0.75)  # The 6 later rows only: 0.7 and 0.3 among the 1s.


class AmlCompareScriptTest(tf.test.TestCase):
  """scripts/compare.py --config=configs/aml.py:compare with the shipped private default."""

  def test_prints_the_table_with_minority_f1(self):
    root = tempfile.mkdtemp()
    path = os.path.join(root, 'transactions.csv')
    transaction_generator.generate(path, num_banks=4, num_transactions=12_000, seed=2,
                                   laundering_rate=0.01, days=10)
    public = os.path.join(root, 'public.csv')  # Another seed, bank count, time span, scale and mix.
    transaction_generator.generate(public, num_banks=3, num_transactions=8_000, seed=7, laundering_rate=0.01,
                                   days=8, amount_scale=1.3, typologies=transaction_generator.TYPOLOGIES[1:])
    out = os.path.join(root, 'compare')
    # (gbt_centralized, centralized and trees_on_release: CompareRunTest, the same code on any rows;
    # rarity_model: autoencoder's path, a program run on its own config, aml_program_test trains it.)
    methods = ('gbt_local,public_only,public_gbt,gbt_local_public,fedavg_record_dp,personalized,autoencoder,'
               'rarity_federated,rarity_local')
    small = ['--config.data.min_rows=200', '--config.data.min_positives=2', '--config.federated.rounds=2',
             '--config.model.hidden_units=(8,)', '--config.federated.eval_every=0']
    done = subprocess.run(
        [sys.executable, 'scripts/compare.py', '--config=configs/aml.py:compare', f'--config.data.path={path}',
         '--private_config=configs/aml.py', '--private_config.federated.rounds=3',
         f'--private_config.public.path={public}', '--private_config.public.epochs=1',
         '--private_config.personalize.epochs=1',
         '--autoencoder_config=configs/aml_autoencoder.py:smoke', '--autoencoder_config.federated.eval_every=0',
         f'--methods={methods}', '--seeds=0', f'--output_dir={out}', *small],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    self.assertEqual(done.returncode, 0, done.stderr[-3000:])
    for title in ("minority F1 at the threshold best on each institution's validation period",
                  'minority F1 at the alert threshold', 'AUPRC:', 'recall at 1% alert budget'):
      self.assertIn(title, done.stdout)
    summary = pd.read_csv(os.path.join(out, 'compare.csv')).set_index('method')
    self.assertEqual(summary.index.tolist(), methods.split(','))
    self.assertTrue(summary['pooled_f1_at_validation_threshold_mean'].between(0, 1).all())
    thresholds = summary['pooled_f1_at_alert_threshold_mean']
    self.assertTrue(thresholds.drop(['rarity_federated', 'rarity_local']).between(0, 1).all())
    self.assertTrue(thresholds[['rarity_federated', 'rarity_local']].isna().all())  # They export none.
    # Laundering here is 1%, in large payments at any hour: the unlabelled rarity score finds it.
    self.assertGreater(summary.loc['rarity_federated', 'pooled_auprc_mean'], 0.05)
    with open(os.path.join(out, 'runs', 'seed0', 'fedavg_record_dp', 'privacy.txt')) as f:
      statement = f.read()
    self.assertRegex(statement, r'\((1(\.0+)?|0\.99\d*), 1e-05\)-differential privacy for each customer')
    self.assertIn(f"the model training started from, computed from the public corpus '{public}' alone", statement)
    self.assertIn('public_only\n  public corpus', done.stdout)  # Pretrained once more for its row.
    # The personalized row's copies are compare's: the private run releases its model only.
    self.assertFalse(os.path.exists(os.path.join(out, 'runs', 'seed0', 'fedavg_record_dp', 'personalized')))
    self.assertNotIn('  personalized 1/', done.stdout)


class TreesOnReleaseTest(tf.test.TestCase):

  def test_the_release_reaches_the_trees_as_log_odds(self):
    from sklearn import metrics  # pylint: disable=g-import-not-at-top
    from tffaml.federated import client_data  # pylint: disable=g-import-not-at-top
    from tffaml.models import tabular  # pylint: disable=g-import-not-at-top
    # 300 rows a bank: LightGBM's leaves hold at least 20 rows, so 60 could not split off the positives.
    config, data, space = helpers.loaded_smoke_federation(rows=300)
    config.model.alert_budget = 0.1
    release, copy = (tabular.build_model(model_type=tabular.ModelType.MLP, feature_space=space, seed=s)
                     for s in (0, 1))
    # Labels the release's score sets (above its 70% quantile on one bank's rows): a release that knows them all.
    cut = np.quantile(client_data.predict(release, data.institutions[0].train, data.schema), 0.7)
    knows = lambda frame: frame.assign(**{schema_lib.LABEL_COLUMN: (
        client_data.predict(release, frame, data.schema) >= cut).astype(int)})
    data = federated_data.FederatedData(data.schema, tuple(
        dataclasses.replace(i, train=knows(i.train), test=knows(i.test)) for i in data.institutions))
    scored = compare.Scored(data)
    copies = {n: personalize.Personalized(n, copy, None, (None, None)) for n in data.names}
    compare._trees_on_release(scored, space, config, release, copies, log=lambda _: None)
    gbt, _ = compare._gbt_scores(data, space, [M.GBT_LOCAL], seed=0, budget=0.0)
    label = lambda frame: frame[schema_lib.LABEL_COLUMN].to_numpy()
    for institution in data.institutions:
      trees_auc = metrics.roc_auc_score(label(institution.test), scored.scores[M.TREES_ON_RELEASE][institution.name])
      self.assertGreater(trees_auc, 0.999)
      self.assertLess(metrics.roc_auc_score(label(institution.test), gbt[M.GBT_LOCAL][institution.name]), trees_auc)
    self.assertEqual(set(scored.thresholds[M.TREES_ON_RELEASE]), set(data.names))


class TreesOnPublicTest(tf.test.TestCase):

  def test_the_public_corpus_alone_trains_public_gbt_and_reaches_each_banks_trees_as_log_odds(self):
    from sklearn import metrics  # pylint: disable=g-import-not-at-top
    from tffaml.config import data as config_data  # pylint: disable=g-import-not-at-top
    from tffaml.models import trees  # pylint: disable=g-import-not-at-top
    root = tempfile.mkdtemp()
    # 300 rows a bank: LightGBM's leaves hold at least 20 rows. The public corpus: other rows, other names.
    base = helpers.smoke_config(root)
    base.data.dir, _ = helpers.write_federation(root, rows=300)
    public_dir, _ = helpers.write_federation(os.path.join(root, 'public'), institutions=('pub_x', 'pub_y'),
                                             rows=600, seed=100)
    base.model.alert_budget = 0.1
    private = csv_config.get_config('')
    private.public.path = public_dir
    scored = compare.method_scores(base, [M.GBT_LOCAL, M.PUBLIC_GBT, M.GBT_LOCAL_PUBLIC], tempfile.mkdtemp(),
                                   log=lambda _: None, configs={M.FEDAVG_RECORD_DP: private})
    data, space = scored.data, config_data.feature_space(base, scored.data)
    corpus = config_data.load_public(compare._run_config(base, M.FEDAVG_RECORD_DP, {M.FEDAVG_RECORD_DP: private}))
    rows = pd.concat([corpus.pooled('train'), corpus.pooled('test')], ignore_index=True)
    self.assertLen(rows, 2 * (600 + 300))  # Every public row, and no bank's.
    label = lambda frame: frame[schema_lib.LABEL_COLUMN].to_numpy()
    public = trees.fit_lightgbm(trees.forest_inputs(rows, space), label(rows), space, seed=base.seed)
    public_score = lambda frame: public.predict_proba(trees.forest_inputs(frame, space))[:, 1]
    for institution in data.institutions:
      test = institution.test
      np.testing.assert_allclose(scored.scores[M.PUBLIC_GBT][institution.name], public_score(test), atol=1e-12)
      # The bank's own trees: its columns, then the public model's log-odds.
      with_odds = lambda frame: np.column_stack([trees.forest_inputs(frame, space),
                                                 np.log(public_score(frame) / (1 - public_score(frame)))])
      own = trees.fit_lightgbm(with_odds(institution.train), label(institution.train), space, seed=base.seed)
      np.testing.assert_allclose(scored.scores[M.GBT_LOCAL_PUBLIC][institution.name],
                                 own.predict_proba(with_odds(test))[:, 1], atol=1e-9)
      self.assertNotAlmostEqual(metrics.roc_auc_score(label(test), scored.scores[M.GBT_LOCAL_PUBLIC][institution.name]),
                                metrics.roc_auc_score(label(test), scored.scores[M.GBT_LOCAL][institution.name]))
    # Each alerts at its budget: of the public rows for the public model, of its own rows for a bank's trees.
    threshold = scored.thresholds[M.PUBLIC_GBT][data.names[0]]
    self.assertAllClose(np.mean(public_score(rows) >= threshold), 0.1, atol=0.01)
    self.assertEqual(set(scored.thresholds[M.GBT_LOCAL_PUBLIC]), set(data.names))


class CompareRunTest(tf.test.TestCase):

  def test_smoke_compare_every_method(self):
    root = tempfile.mkdtemp()
    base = helpers.smoke_config(root)  # configs/csv.py: no pooled reference in its runs.
    self.assertEqual(base.reference.centralized_epochs, 0)
    # As configs/loan_risk.py:compare: no DP in the base, a target ε for record-level DP.
    base.aggregator.type, base.aggregator.noise_multiplier = 'mean', 0.0
    base.privacy.target_epsilon = 5.0
    out = os.path.join(root, 'compare')
    # Every method but those for transactions (AmlCompareScriptTest runs them; those on a public
    # corpus there too, and TreesOnPublicTest).
    methods = [m for m in M if m not in (M.AUTOENCODER, M.RARITY_MODEL, M.RARITY_FEDERATED, M.RARITY_LOCAL,
                                         *_ON_PUBLIC)]
    lines = []
    with mock.patch.object(centralized, 'train', wraps=centralized.train) as train:
      summary, per_institution = compare.run(base, seeds=[0], methods=methods, output_dir=out, log=lines.append)
    self.assertEqual(summary['method'].tolist(), [m.value for m in methods])
    self.assertTrue(summary['pooled_auc_mean'].between(0, 1).all())
    self.assertLen(per_institution, len(methods) * 4)  # 3 banks + all test rows.
    self.assertTrue(per_institution['auc'].between(0, 1).all())
    for name in ('compare.csv', 'compare_institutions.csv', 'compare.md', 'compare.png'):
      self.assertTrue(os.path.isfile(os.path.join(out, name)), name)
    record = os.path.join(out, 'runs', 'seed0', 'fedavg_record_dp', 'privacy.txt')
    with open(record) as f:
      self.assertRegex(f.read(), r'\((5|4\.99\d*), 1e-05\)-differential privacy for each record')
    client = os.path.join(out, 'runs', 'seed0', 'fedavg_client_dp', 'privacy.txt')
    with open(client) as f:
      self.assertIn('Gaussian noise multiplier 0.5 on updates', f.read())
    # The own-data base trains the Keras models the default epochs.
    epochs = compare.DEFAULT_REFERENCE_EPOCHS
    self.assertIn(f'local-only models train {epochs} epochs', '\n'.join(lines))
    # Centralized on 180 pooled rows; each bank's own 60 rows as many steps' worth (3x the epochs), alone
    # and then (personalized) from the private release, with (trees_on_release) a copy on each two of
    # three folds of its rows.
    self.assertEqual([c.kwargs['epochs'] for c in train.call_args_list],
                     [epochs] + [math.ceil(epochs * 3)] * 3 + [math.ceil(epochs * 3)] * (3 + 3 * 3))

  def test_refusals_before_any_work(self):
    base = csv_config.get_config('smoke')
    base.reference.centralized_epochs = 1
    for method, flag in (('autoencoder', 'autoencoder_config'), ('rarity_model', 'rarity_config')):
      with self.assertRaisesRegex(errors.ConfigError,
                                  f'{method} method needs its config \\(scripts/compare.py --{flag}\\)'):
        compare.run(base, seeds=[0], methods=[M(method)], output_dir='/tmp/never')
    self.assertFalse(os.path.exists('/tmp/never'))

  def test_rarity_needs_transactions(self):
    root = tempfile.mkdtemp()
    base = helpers.smoke_config(root)
    base.reference.centralized_epochs = 1
    with self.assertRaisesRegex(ValueError, "rarity methods score transactions; this data has no"):
      compare.run(base, seeds=[0], methods=[M.RARITY_FEDERATED],
                  output_dir=os.path.join(root, 'out'), log=lambda _: None)

  def test_negative_epochs_are_refused_before_any_work(self):
    base = csv_config.get_config('smoke')
    base.reference.centralized_epochs = -1
    with self.assertRaisesRegex(errors.ConfigError, r'^config.reference.centralized_epochs=-1: compare trains'):
      compare.run(base, seeds=[0], methods=[M.LOCAL_ONLY], output_dir='/tmp/never')
    self.assertFalse(os.path.exists('/tmp/never'))

  def test_default_methods_are_those_that_apply(self):
    loans = schema_lib.Schema.from_dict(helpers.SCHEMA)
    unlabelled = {M.AUTOENCODER, M.RARITY_MODEL, M.RARITY_FEDERATED, M.RARITY_LOCAL}
    self.assertEqual(compare.default_methods(loans, {}), [m for m in M if m not in unlabelled | set(_ON_PUBLIC)])
    private = csv_config.get_config('')
    private.public.path = '/data/public'  # Only named here: default_methods reads no file.
    with_public = compare.default_methods(loans, {M.FEDAVG_RECORD_DP: private})
    self.assertEqual([m for m in with_public if m in _ON_PUBLIC], list(_ON_PUBLIC))
    with_autoencoder = compare.default_methods(loans, {M.AUTOENCODER: csv_config.get_config('smoke')})
    self.assertIn(M.AUTOENCODER, with_autoencoder)
    self.assertNotIn(M.RARITY_MODEL, with_autoencoder)
    transactions = helpers.payment_space().schema
    self.assertEqual(compare.default_methods(transactions, {}),
                     [m for m in M if m not in CONFIGURED_METHODS and m not in _ON_PUBLIC])

  def test_public_only_without_a_public_corpus_is_refused(self):
    base = helpers.smoke_config(tempfile.mkdtemp())
    with self.assertRaisesRegex(errors.ConfigError, '^--methods: public_only scores the model pretrained on'):
      compare.method_scores(base, [M.PUBLIC_ONLY], tempfile.mkdtemp(), log=lambda _: None)
    with self.assertRaisesRegex(errors.ConfigError, r'^--methods: public_gbt and gbt_local_public train LightGBM'
                                r" on fedavg_record_dp's public corpus; set --private_config.public.path"):
      compare.method_scores(base, [M.PUBLIC_GBT, M.GBT_LOCAL_PUBLIC], tempfile.mkdtemp(), log=lambda _: None)


if __name__ == '__main__':
  tf.test.main()

"""Loan risk on LendingClub, federated across regional lenders, record-level DP at ε = 1.

By default every customer record has (1, 1e-5)-DP (PLD accountant): each round is one step
of DP-SGD over the whole federation, each institution adding a share of the
noise (`record_dp.mode='distributed'`, which relies on secure aggregation).
The training settings below follow rules, not tuning on this data: the
logistic model on robustly scaled features; each record sampled with
probability 0.2 a round (capped so that a round samples at most 20,000
records); a per-record clip of sqrt(feature columns + 1) where the noise on
the mean gradient is small (σ / expected batch <= 0.005: it bounds a row's
gradient without cutting it), else 1 (tffaml.config.plan.clip_rule);
60 rounds; server SGD stepping at most 5 a round (rate 5 / clip); and the
released model a moving average of the rounds'.

Run:
  python scripts/train.py --config=configs/loan_risk.py --workdir=runs/loan_risk
Presets (`--config=configs/loan_risk.py:NAME`):
  smoke     client_dp, tiny and fast, for tests (under a minute).
  no_dp     the same federation without noise, to see what DP costs:
            FedAvg, local SGD epochs, no DP.
  client_dp the former default: MLP, client-level DP (adaptive clipping,
            noise 0.5; ε = 192 for each institution, a weak guarantee).
  record_dp local DP-SGD in each institution at ε = 3 (δ = 1e-5),
            no client-level noise; logistic regression, 20 rounds.
  sweep     record_dp's training settings without DP, the base of
            scripts/privacy_sweep.py (which adds each DP mechanism).
  compare   the same, the base of scripts/compare.py (record-level DP at
            ε = 3 where a method uses it).
  attack    sweep's training settings, 10 rounds: the base of
            scripts/attack_eval.py (which sets attacks and defences).
"""

import ml_collections
from ml_collections import config_dict


def _data(config: ml_collections.ConfigDict) -> None:
  """Where the rows come from and how they are split into institutions."""
  config.data = ml_collections.ConfigDict()
  # lending_club | csv_dir | amlworld | federation, amlworld_federation (a coordinator's).
  config.data.source = 'lending_club'
  config.data.dir = ''  # csv_dir: <dir>/<institution>/{train,test}.csv
  config.data.schema_file = ''  # csv_dir: schema.json (see README)
  config.data.path = ''  # amlworld: the transactions CSV (configs/aml.py).
  config.data.max_banks = 0  # amlworld: only the largest this many banks; 0: all that qualify.
  config.data.max_rows = 0  # Subsample the pooled table first; 0 keeps all.
  config.data.partition = 'column'  # column | iid | dirichlet | quantity
  config.data.column = ''  # column: default addr_state (US state)
  # column: merge smaller groups, or groups with fewer positives (amlworld:
  # a bank joins with this many training transactions, this many laundering).
  config.data.min_rows = 500
  config.data.min_positives = 25
  config.data.num_institutions = 10  # iid | dirichlet | quantity
  config.data.alpha = 0.5  # dirichlet | quantity: Dir(alpha) concentration
  config.data.test_fraction = 0.25  # Held out per institution (amlworld: the last part of the time span).
  config.data.stream = False  # amlworld, csv_dir: rows stored per institution and streamed from the files.


def _features_and_model(config: ml_collections.ConfigDict) -> None:
  """Federated feature statistics, the model and its loss."""
  config.features = ml_collections.ConfigDict()
  config.features.min_category_count = 5  # k-anonymity of vocabulary values.
  # With record-level DP the statistics (ranges, means, variances,
  # vocabularies) are DP too: this noise multiplier on each of their two
  # releases of counts (together worth one release at 10), composed into the
  # same ε. None: exact statistics, outside the guarantee.
  config.features.noise_multiplier = config_dict.placeholder(float)
  config.features.noise_multiplier = 14.0

  config.model = ml_collections.ConfigDict()
  config.model.name = 'logistic'  # mlp | logistic
  config.model.hidden_units = (64, 32)
  config.model.embedding_dim = 4
  config.model.threshold = 0.5  # Probability at which `label` is 1.
  config.model.loss = 'bce'  # bce | focal | weighted_bce | reconstruction (autoencoder)
  config.model.positive_weight = 1.0  # weighted_bce: weight of a positive row.
  config.model.focal_gamma = 2.0  # focal: down-weights easy rows.
  # mlp, logistic: the score before training (the output bias starts at its
  # log-odds). A public prior, not read from the data: no privacy cost.
  config.model.prior_positive_rate = 0.5
  # > 0: the exported threshold flags this fraction of training rows instead,
  # found from federated score quantiles (tffaml.federated.quantiles).
  config.model.alert_budget = 0.0

  config.evaluation = ml_collections.ConfigDict()
  # Recall and precision when flagging these fractions of test rows (top scores).
  config.evaluation.alert_budgets = ()
  # > 0: the first fraction of each institution's test rows (in file order;
  # time order for transactions) is its validation period and picks its
  # best-F1 threshold; metrics.json reports the minority F1 there on the
  # later rows (`f1_at_validation_threshold`), and scripts/compare.py
  # measures every metric on the later rows.
  config.evaluation.validation_fraction = 0.0


def _public(config: ml_collections.ConfigDict) -> None:
  """A public corpus: statistics and a starting model that cost no privacy (tffaml.training.public)."""
  config.public = ml_collections.ConfigDict()
  # A file (or, for data.source='csv_dir', a directory with the same schema)
  # of rows no institution's customers are in, read by the same source as
  # config.data: e.g. scripts/generate_transactions.py with another seed, bank
  # count, typology mix, time span and amount scale. Set, the feature
  # statistics and the alert threshold come from it exactly (the whole ε goes
  # to training) and the federation starts from a model pretrained on it.
  # '': none.
  config.public.path = ''
  config.public.epochs = 2  # Central pretraining epochs on it; 0: its statistics only.
  config.public.batch_size = 256
  config.public.learning_rate = 1e-3


def _personalize(config: ml_collections.ConfigDict) -> None:
  """Each institution's own copy of the release, fine-tuned on its own rows (tffaml.training.personalize)."""
  config.personalize = ml_collections.ConfigDict()
  # > 0: after the run, each institution trains a copy of the released model
  # that many epochs on its own training rows, without DP (as it would train
  # a model alone), exported to <workdir>/personalized/<institution>/export
  # with its own alert threshold. The other institutions' customers keep the
  # release's guarantee (post-processing); its own customers get none. 0: off.
  config.personalize.epochs = 0
  config.personalize.learning_rate = 1e-3  # Keras's Adam.
  # With epochs > 0: each institution also trains LightGBM on its own rows'
  # columns and the release's and its copy's log-odds (tffaml.training.
  # personalize.trees_on_scores), exported beside the copy in
  # <workdir>/personalized/<institution>/trees/export; the same guarantee.
  config.personalize.trees = False


def _federated(config: ml_collections.ConfigDict) -> None:
  """The federated algorithm, its rounds, cohorts and optimizers."""
  config.federated = ml_collections.ConfigDict()
  config.federated.algorithm = 'fedavg'  # fedavg | fedprox | fedsgd
  config.federated.weighting = 'uniform'  # uniform | examples (not with DP)
  config.federated.rounds = 60
  config.federated.sampling = 'full'  # full | poisson | fixed_size
  config.federated.clients_per_round = 0  # poisson (expected) | fixed_size
  config.federated.client_epochs = 1
  config.federated.batch_size = 32
  config.federated.eval_batch_size = 1024
  config.federated.client_optimizer = 'sgd'  # sgd | adam | yogi
  config.federated.client_learning_rate = 0.05
  config.federated.client_momentum = 0.0
  config.federated.server_optimizer = 'sgd'  # adam = FedAdam, yogi = FedYogi
  # None: 5 / clip under record-level DP (a step of at most 5 a round), else 1.
  config.federated.server_learning_rate = config_dict.placeholder(float)
  config.federated.server_momentum = 0.0
  config.federated.proximal_strength = 0.0  # fedprox: mu > 0
  config.federated.eval_every = 1  # Pooled test metrics every k rounds.
  # The released model is this exponential moving average of the rounds'
  # models (0: the last round's). Averaging cancels much of DP's noise, free.
  config.federated.weight_averaging = 0.9


def _privacy(config: ml_collections.ConfigDict) -> None:
  """The aggregator (client-level DP or a poisoning defence), record-level DP and the accountant."""
  config.aggregator = ml_collections.ConfigDict()
  # mean | gaussian_fixed | gaussian_adaptive | secure, or a poisoning defence:
  # robust (adaptive clipping + zeroing) | clipping (fixed) | median | trimmed_mean
  config.aggregator.type = 'mean'
  config.aggregator.noise_multiplier = 0.5  # Total, incl. adaptive clipping's share.
  config.aggregator.clip = 0.5  # Fixed clip, or adaptive clip's start.
  config.aggregator.target_unclipped_quantile = 0.5
  config.aggregator.clip_learning_rate = 0.2
  config.aggregator.clipped_count_stddev = config_dict.placeholder(float)  # None: max(0.05 * cohort, noise)
  config.aggregator.zeroing_norm = config_dict.placeholder(float)  # clipping: None = 10 * clip.
  config.aggregator.trim_fraction = 0.2  # trimmed_mean: trimmed at each end.

  # Record-level DP: DP-SGD inside each institution (expected batch =
  # federated.batch_size, federated.client_epochs expected passes per round).
  config.record_dp = ml_collections.ConfigDict()
  config.record_dp.enabled = True
  # distributed: each round one DP-SGD step on the whole federation, every
  # institution adding a share of the noise (relies on secure aggregation);
  # local: DP-SGD inside each institution with its own full noise.
  config.record_dp.mode = 'distributed'
  # distributed: q, each unit's chance to be in a round's sample; None: the
  # rule min(0.2, 20000 / training rows in the federation).
  config.record_dp.sampling_rate = config_dict.placeholder(float)
  config.record_dp.noise_multiplier = 1.0
  # Per-unit gradient L2 norm; None: config.plan.clip_rule (sqrt(feature columns + 1) or 1).
  config.record_dp.clip = config_dict.placeholder(float)
  # With a schema `unit` column (e.g. an account id) the unit is all rows
  # sharing a value, of which at most this many train per round (0: all).
  config.record_dp.max_rows_per_unit = 0
  # distributed: institutions whose update a round may lose (a node down
  # mid-round) and still carry the planned noise: each adds σ/√(K - this)
  # instead of σ/√K, so any K - this shares sum to at least σ (the accountant
  # counts σ). 0: a round missing one institution is discarded (the run
  # stops, resumable); each one tolerated costs noise: √(K / (K - 1)) = 4%
  # more for one of the default 12.
  config.record_dp.tolerated_dropouts = 0

  config.privacy = ml_collections.ConfigDict()
  config.privacy.delta = 1e-5
  # pld: tighter than rdp for the same mechanism (on the default run the
  # calibrated noise is 9% lower at the same ε), and calibrates in seconds.
  config.privacy.accountant = 'pld'  # pld | rdp
  # Set: calibrate the noise to this ε before training (record_dp's noise if
  # enabled, else the DP aggregator's), planned for every round.
  config.privacy.target_epsilon = config_dict.placeholder(float)  # Stays a float field when None.
  config.privacy.target_epsilon = 1.0
  # None draws a secret seed (kept in <workdir>/secret/, never in checkpoints). Set it for
  # bit-identical DP reruns in research; whoever knows it can remove the noise.
  config.privacy.noise_seed = config_dict.placeholder(int)

  # A one-run canary audit (scripts/canary_audit.py, or scripts/coordinator.py
  # and every node with the same config); an audit run exports nothing.
  # Under record-level DP, canaries > 0 adds that many canary records to
  # `institution`'s training rows ('': the first), each included by a coin
  # from `seed`, and trains the audited model (tffaml.models.canaries); under
  # client-level DP the coordinator adds that many canary institutions.
  config.canary_audit = ml_collections.ConfigDict()
  config.canary_audit.canaries = 0
  config.canary_audit.institution = ''
  config.canary_audit.seed = 0


def _export_attack_reference(config: ml_collections.ConfigDict) -> None:
  """Serving hardening, simulated poisoning and the centralized reference."""
  # What the served model reveals (tffaml.export.saved_model.Hardening).
  config.export = ml_collections.ConfigDict()
  config.export.score_decimals = config_dict.placeholder(int)  # None: full precision.
  config.export.decision_only = False  # Return only the label / alert.
  config.export.input_rounding = ''  # e.g. 'annual_inc=1000,revol_util=5': granularity.

  # Simulated poisoning (tffaml.federated.poisoning), to measure defences.
  config.attack = ml_collections.ConfigDict()
  config.attack.type = 'none'  # none | label_flip | boost | backdoor
  config.attack.institutions = ''  # Comma-separated names; or:
  config.attack.count = 0  # this many drawn from config.seed.
  config.attack.boost_factor = 0.0  # boost: update multiplier; 0 = number of institutions.
  config.attack.trigger = ''  # backdoor: 'column=value,...'; '' = first numeric at 10x its max.

  config.reference = ml_collections.ConfigDict()
  config.reference.centralized_epochs = 10  # Pooled Keras reference; 0 skips.
  config.reference.learning_rate = 1e-3


def _federation(config: ml_collections.ConfigDict) -> None:
  """A federation of separate machines (scripts/coordinator.py, scripts/node.py); the simulation ignores it."""
  config.federation = ml_collections.ConfigDict()
  # Nodes send their updates only through SecAgg+ (Flower 1.12): the
  # coordinator gets the cohort's sum, which distributed DP-SGD relies on.
  # Needs aggregator.type='mean' and at least 3 nodes a round. False: each
  # update reaches the coordinator (robust and client-level DP aggregators
  # need that), and the privacy statement says so.
  config.federation.secure_aggregation = True
  # The share of a node's SecAgg+ peers whose key shares rebuild its
  # secrets: more resists collusion, fewer tolerates nodes lost mid-round.
  config.federation.reconstruction_threshold = 0.67
  # Each coordinate of an update is clipped to +-this and quantized to 2^22
  # levels before masking (a node counts what it clipped).
  config.federation.clipping_range = 8.0


def _runtime(config: ml_collections.ConfigDict) -> None:
  """Where the simulation runs: this process, or TFF workers on several machines (scripts/worker.py)."""
  config.runtime = ml_collections.ConfigDict()
  # host:port,host:port: the workers, each holding some institutions' files;
  # rounds run on them, the merge and server step here. '': this process.
  config.runtime.workers = ''
  # scripts/pki.py --cluster's directory: mutual TLS to the workers (their
  # ca.crt, coordinator.pem, coordinator.key). '': in the clear, for workers
  # on this machine or a private network only (worker_binary authenticates nobody).
  config.runtime.certificates = ''
  config.runtime.connect_seconds = 60.0  # How long to wait for a worker to answer at the start.


def _fedavg(config: ml_collections.ConfigDict) -> None:
  """FedAvg without record-level DP: local SGD epochs, server momentum, the last round's model."""
  config.record_dp.enabled = False
  config.record_dp.mode = 'local'
  config.privacy.target_epsilon = None
  config.federated.server_learning_rate = 1.0
  config.federated.server_momentum = 0.9
  config.federated.weight_averaging = 0.0
  config.record_dp.clip = 1.0  # Local DP-SGD's, as the research presets were measured.
  # Local DP-SGD calibrates once per distinct institution size: with PLD that
  # takes about 40 s on the 12 default lenders (RDP 15 s, noise 7% higher).
  # The research presets built on this keep RDP, fast to sweep.
  config.privacy.accountant = 'rdp'


def _client_dp(config: ml_collections.ConfigDict) -> None:
  """The former default: an MLP under client-level DP only (a weak guarantee, ε = 192)."""
  _fedavg(config)
  config.model.name = 'mlp'
  config.aggregator.type = 'gaussian_adaptive'
  config.federation.secure_aggregation = False  # The DP aggregator clips each update it receives.


def _apply_preset(config: ml_collections.ConfigDict, preset: str) -> None:
  """Presets only override the defaults above."""
  if preset == 'smoke':  # The client_dp federation, small (the tests' base).
    _client_dp(config)
    config.data.max_rows = 3000
    config.data.min_rows = 400
    config.data.min_positives = 10
    config.model.hidden_units = (8,)
    config.federated.rounds = 3
    config.reference.centralized_epochs = 1
  elif preset == 'client_dp':
    _client_dp(config)
  elif preset == 'no_dp':
    _fedavg(config)
    config.aggregator.type = 'mean'
    config.aggregator.noise_multiplier = 0.0
  elif preset in ('sweep', 'record_dp', 'compare', 'attack'):
    # Settings that train well under local DP-SGD's clipping and noise:
    # logistic regression, larger local steps, no server momentum (it
    # amplifies noise).
    _fedavg(config)
    config.federated.rounds = 20
    config.federated.client_learning_rate = 0.5
    config.federated.server_momentum = 0.0
    config.aggregator.type = 'mean'
    config.aggregator.noise_multiplier = 0.0
    if preset in ('sweep', 'attack'):  # The scripts set the mechanism.
      config.reference.centralized_epochs = 0
    if preset == 'attack':
      config.federated.rounds = 10
      config.federated.eval_every = 0  # Measured once, at the end.
    if preset in ('sweep', 'compare'):
      # Research runs must repeat: a known noise seed (never for release).
      config.privacy.noise_seed = 0
    if preset == 'compare':  # scripts/compare.py sets each method's DP.
      config.privacy.target_epsilon = 3.0  # For fedavg_record_dp.
    elif preset != 'attack':
      config.record_dp.enabled = True
      config.privacy.target_epsilon = 3.0
  elif preset:
    raise ValueError(f'unknown preset {preset!r}; presets: smoke, client_dp, no_dp, record_dp, sweep,'
                     ' compare, attack.')


def get_config(preset: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Data split, initial weights, cohorts, batch order.
  for section in (_data, _features_and_model, _public, _personalize, _federated, _privacy,
                  _export_attack_reference, _federation, _runtime):
    section(config)
  _apply_preset(config, preset)
  return config

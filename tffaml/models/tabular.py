"""Keras models for tabular data: classifiers and an anomaly autoencoder.

All take the raw named features (see `features.keras_inputs`) and return one
score per row, shape [batch, 1]:

* `mlp`: categorical embeddings and standardised numerics, then ReLU layers;
  the score is the probability of the positive class.
* `logistic`: one-hot categoricals and standardised numerics, then a single
  sigmoid unit: the research baseline.
* `autoencoder`: the one-hot and standardised feature vector through a
  bottleneck and back; the score is the mean squared reconstruction error,
  an anomaly score that needs no labels (Hawkins et al. 2002, "Outlier
  Detection Using Replicator Neural Networks"). Trained on unlabeled rows with
  the `reconstruction` loss, which is the score itself.
* `rarity`: for transactions, -log of the federation's learned share of the
  payment's format x direction x amount x hour cell (`tffaml.models.rarity`);
  no labels, trained with the `reconstruction` loss like the autoencoder.
"""

import contextlib
import dataclasses
import enum
import math
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context  # pylint: disable=g-direct-tensorflow-import
from keras.src import backend as keras_backend  # pylint: disable=g-direct-tensorflow-import

from tffaml import errors
from tffaml import features
from tffaml.models import rarity


class ModelType(enum.Enum):
  MLP = 'mlp'
  LOGISTIC = 'logistic'
  AUTOENCODER = 'autoencoder'
  RARITY = 'rarity'

  @property
  def is_classifier(self) -> bool:
    """Whether its score is a probability learned from labels (else an unlabelled anomaly score)."""
    return self not in (ModelType.AUTOENCODER, ModelType.RARITY)


class LossType(enum.Enum):
  BCE = 'bce'  # Binary cross-entropy.
  FOCAL = 'focal'  # Focal loss (Lin et al. 2017, arXiv:1708.02002): rare positives.
  WEIGHTED_BCE = 'weighted_bce'  # Cross-entropy with positives weighted up.
  RECONSTRUCTION = 'reconstruction'  # The autoencoder's score, labels unused.


PerExampleLoss = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def per_example_loss(
    loss_type: LossType, *, positive_weight: float = 1.0, focal_gamma: float = 2.0
) -> PerExampleLoss:
  """`(labels [batch, 1], scores [batch, 1]) -> losses [batch]`."""
  if loss_type is LossType.BCE:
    return tf.keras.losses.binary_crossentropy
  if loss_type is LossType.FOCAL:
    if not focal_gamma >= 0:
      raise ValueError(f'focal_gamma must be >= 0, got {focal_gamma}.')
    return lambda y, p: tf.keras.losses.binary_focal_crossentropy(y, p, gamma=focal_gamma)
  if loss_type is LossType.WEIGHTED_BCE:
    if not positive_weight > 0:
      raise ValueError(f'positive_weight must be > 0, got {positive_weight}.')
    return lambda y, p: tf.keras.losses.binary_crossentropy(y, p) * (
        1.0 + (positive_weight - 1.0) * tf.cast(y[:, 0], p.dtype))
  if loss_type is LossType.RECONSTRUCTION:  # The model's output is already the loss.
    return lambda y, score: score[:, 0]
  raise ValueError(f'no loss for {loss_type!r}.')


class _MeanLoss(tf.keras.losses.Loss):

  def __init__(self, loss_fn: PerExampleLoss):
    super().__init__(name='loss')  # Reduced by the batch mean.
    self._loss_fn = loss_fn

  def call(self, y_true, y_pred):
    return self._loss_fn(y_true, y_pred)


def keras_loss(loss_fn: PerExampleLoss) -> tf.keras.losses.Loss:
  """The batch mean of `per_example_loss`, as Keras and TFF take a loss."""
  return _MeanLoss(loss_fn)


@dataclasses.dataclass(frozen=True)
class ModelParams:
  """What a model is built from beyond the feature statistics; each type's builder reads the fields it needs.

  Attributes:
    hidden_units: Widths of the MLP's hidden layers, or of the autoencoder's
      encoder (the last is the bottleneck; the decoder mirrors it).
    embedding_dim: Categorical embedding size of the MLP (must be >= 1).
    prior_positive_rate: The classifiers' score before training: the output
      bias starts at log(p / (1 - p)). A public prior, not read from the
      data (0.5: bias 0).
  """

  hidden_units: Sequence[int] = (64, 32)
  embedding_dim: int = 4
  prior_positive_rate: float = 0.5


# The raw named inputs (`features.keras_inputs`), the feature statistics and
# the parameters, to the model.
Builder = Callable[[dict, features.FeatureSpace, ModelParams], tf.keras.Model]


def build_model(*, model_type: ModelType, feature_space: features.FeatureSpace, seed: int = 0,
                **params) -> tf.keras.Model:
  """Builds an uncompiled model whose initial weights depend only on `seed`.

  Args:
    model_type: Which architecture (its builder in `BUILDERS`).
    feature_space: Federated feature statistics, baked into the model.
    seed: Seed of the initial weights.
    **params: The fields of `ModelParams`.

  Returns:
    A `tf.keras.Model` from raw feature dict to one score per row.
  """
  builder = errors.registered(BUILDERS, model_type, 'tffaml.models.tabular.BUILDERS')
  params = ModelParams(**params)
  with _seeded(seed):
    return builder(features.keras_inputs(feature_space.schema), feature_space, params)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
  """`tf.keras.utils.set_random_seed(seed)` for the body only.

  The layers draw their initial weights from the global seeds (so a model's
  weights are what they have always been for a seed); the caller's Python,
  NumPy, TensorFlow and Keras seeds are put back afterwards, so building a
  model (which TFF does many times) does not reseed the rest of the program.
  """
  python_state, numpy_state = random.getstate(), np.random.get_state()
  tf_seed = context.global_seed() if tf.executing_eagerly() else tf.compat.v1.get_default_graph().seed
  keras_generator = getattr(keras_backend._SEED_GENERATOR, 'generator', None)  # pylint: disable=protected-access
  tf.keras.utils.set_random_seed(seed)
  try:
    yield
  finally:
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    tf.random.set_seed(tf_seed)
    keras_backend._SEED_GENERATOR.generator = keras_generator  # pylint: disable=protected-access


def _check_hidden_units(hidden_units: Sequence[int]) -> None:
  if not hidden_units or min(hidden_units) < 1:
    raise ValueError(f'hidden_units must be positive widths, got {hidden_units}.')


def _mlp(inputs, feature_space: features.FeatureSpace, p: ModelParams) -> tf.keras.Model:
  if p.embedding_dim < 1:
    raise ValueError(f'embedding_dim must be >= 1 for mlp, got {p.embedding_dim}.')
  _check_hidden_units(p.hidden_units)
  hidden = features.encode(inputs, feature_space, embedding_dim=p.embedding_dim)
  for i, units in enumerate(p.hidden_units):
    hidden = tf.keras.layers.Dense(units, activation='relu', name=f'hidden_{i}')(hidden)
  return _classifier(inputs, hidden, 'glorot_uniform', ModelType.MLP, p.prior_positive_rate)


def _logistic(inputs, feature_space: features.FeatureSpace, p: ModelParams) -> tf.keras.Model:
  # Logistic regression starts at zero (its loss is convex): a random start
  # is noise that DP training's few, noisy steps then have to undo.
  return _classifier(inputs, features.encode(inputs, feature_space, embedding_dim=0), 'zeros', ModelType.LOGISTIC,
                     p.prior_positive_rate)


def _classifier(inputs, hidden: tf.Tensor, initializer: str, model_type: ModelType,
                prior_positive_rate: float) -> tf.keras.Model:
  """`hidden` into one sigmoid unit: the probability of the positive class.

  The bias starts at the prior's log-odds, as RetinaNet's focal loss does
  (Lin et al. 2017, section 4.1): from 0, a rare class's first steps go to
  pulling every score down from 0.5, which took DP-SGD's one step a round
  about 70 rounds on 0.5% laundering.
  """
  if not 0.0 < prior_positive_rate < 1.0:
    raise ValueError(f'prior_positive_rate must be in (0, 1), got {prior_positive_rate}.')
  bias = math.log(prior_positive_rate / (1.0 - prior_positive_rate))
  probability = tf.keras.layers.Dense(1, activation='sigmoid', kernel_initializer=initializer,
                                      bias_initializer=tf.keras.initializers.Constant(bias),
                                      name='probability')(hidden)
  return tf.keras.Model(inputs, probability, name=model_type.value)


def _rarity(inputs, feature_space: features.FeatureSpace, p: ModelParams) -> tf.keras.Model:
  del p  # The cells are fixed (`rarity`): no parameters.
  missing = rarity.missing_columns(feature_space.schema.columns)
  if missing:
    raise ValueError(f'the rarity model scores transactions; this data has no {missing} columns.')
  return rarity.build(inputs, feature_space.vocabulary)


def _autoencoder(inputs, feature_space: features.FeatureSpace, p: ModelParams) -> tf.keras.Model:
  """Score: mean squared error of reconstructing the (fixed) encoded features."""
  _check_hidden_units(p.hidden_units)
  encoded = features.encode(inputs, feature_space, embedding_dim=0)
  widths = list(p.hidden_units) + list(reversed(p.hidden_units[:-1]))
  hidden = encoded
  for i, units in enumerate(widths):
    hidden = tf.keras.layers.Dense(units, activation='relu', name=f'autoencoder_{i}')(hidden)
  reconstruction = tf.keras.layers.Dense(encoded.shape[-1], name='reconstruction')(hidden)
  error = tf.keras.layers.Lambda(
      lambda t: tf.reduce_mean(tf.square(t[0] - t[1]), axis=-1, keepdims=True),
      name='reconstruction_error')([reconstruction, encoded])
  return tf.keras.Model(inputs, error, name='autoencoder')


# Each ModelType's builder (tests/models/tabular_test.py holds that every
# member has one). A model with its own layers keeps them in its own module,
# as `rarity` does.
BUILDERS: dict[ModelType, Builder] = {
    ModelType.MLP: _mlp,
    ModelType.LOGISTIC: _logistic,
    ModelType.AUTOENCODER: _autoencoder,
    ModelType.RARITY: _rarity,
}

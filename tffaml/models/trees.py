"""Gradient-boosted trees as TensorFlow ops: a LightGBM model that plain TensorFlow serves.

AML teams run trees first, and a bank's own LightGBM on its rows (plus the
federation's score, issue 34) is the strongest model we have measured; a
bank serves our SavedModels with TensorFlow alone, so the trees have to be
TensorFlow ops too. TF Decision Forests needs its own custom ops in the
serving binary, so `Forest` holds LightGBM's trees as flat node arrays and
walks every tree at once with gathers: `depth` steps, each moving every
row's position in every tree one level down (a leaf stays where it is).

The decisions are LightGBM's own (`Tree::NumericalDecision` and
`Tree::CategoricalDecision` in its tree.h), missing values included, in
float64 as LightGBM compares: the raw scores equal `Booster.predict(x,
raw_score=True)` to rounding (tests/models/trees_test.py).
"""

import dataclasses
import enum
from typing import Any, Mapping

import lightgbm
import numpy as np
import pandas as pd
import tensorflow as tf

from tffaml import features

# LightGBM's kZeroThreshold: |x| at or below it counts as zero.
_ZERO = 1e-35


class Missing(enum.IntEnum):
  """A split's `missing_type`: which values take its default direction."""

  NONE = 0  # None: NaN is read as 0 and compared.
  ZERO = 1  # Zero (and NaN, read as 0) goes the default way.
  NAN = 2  # NaN goes the default way.

  @classmethod
  def parse(cls, name: str) -> 'Missing':
    try:
      return {'None': cls.NONE, 'Zero': cls.ZERO, 'NaN': cls.NAN}[name]
    except KeyError:
      raise ValueError(f"unknown LightGBM missing_type {name!r}; expected 'None', 'Zero' or 'NaN'.") from None


@dataclasses.dataclass(frozen=True)
class Forest:
  """Every tree's nodes in flat arrays; a leaf's children are itself.

  Numerical splits go left where x <= threshold; categorical splits go left
  where int(x) is one of the node's categories (`categories[offset:offset +
  size]` marks them). `roots` holds each tree's first node.
  """

  feature: np.ndarray  # int32 [nodes]: the column a split reads (0 at leaves).
  threshold: np.ndarray  # float64 [nodes].
  left: np.ndarray  # int32 [nodes].
  right: np.ndarray  # int32 [nodes].
  value: np.ndarray  # float64 [nodes]: the leaf's value (0 at splits).
  default_left: np.ndarray  # bool [nodes].
  missing: np.ndarray  # int32 [nodes]: `Missing`.
  categorical: np.ndarray  # bool [nodes].
  offset: np.ndarray  # int32 [nodes]: where a categorical split's marks start in `categories`.
  size: np.ndarray  # int32 [nodes]: how many marks it has (the largest category + 1).
  categories: np.ndarray  # bool [marks].
  roots: np.ndarray  # int32 [trees].
  depth: int  # The deepest leaf's depth: steps to reach every leaf.
  num_features: int

  @classmethod
  def from_lightgbm(cls, booster) -> 'Forest':
    """From a trained `lightgbm.Booster` (or an `LGBMModel`, whose `booster_` it reads)."""
    booster = getattr(booster, 'booster_', booster)
    return cls.from_dump(booster.dump_model())

  @classmethod
  def from_dump(cls, dump: Mapping[str, Any]) -> 'Forest':
    """From `Booster.dump_model()`: a binary or regression model of one output."""
    if dump.get('num_tree_per_iteration', 1) != 1:
      raise ValueError(f"a model of {dump['num_tree_per_iteration']} trees per iteration (multiclass); "
                       'only single-output models convert.')
    nodes = _Nodes()
    roots, depth = [], 0
    for tree in dump['tree_info']:
      root, tree_depth = nodes.add(tree['tree_structure'], 0)
      roots.append(root)
      depth = max(depth, tree_depth)
    return nodes.forest(roots, depth, num_features=dump['max_feature_idx'] + 1)

  def raw_scores(self, x: tf.Tensor) -> tf.Tensor:
    """The sum of every tree's leaf for each row of `x` (float64 [rows, num_features]): [rows]."""
    x = tf.convert_to_tensor(x, tf.float64)
    # Each array once in the graph, and one loop body: unrolled, a SavedModel held them once per level.
    nodes = {f.name: tf.constant(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in
             ('depth', 'num_features')}
    at = tf.tile(nodes['roots'][tf.newaxis, :], [tf.shape(x)[0], 1])  # [rows, trees].
    _, at = tf.while_loop(lambda level, _: level < self.depth,
                          lambda level, at: (level + 1, _step(x, at, nodes)), (tf.constant(0), at))
    return tf.reduce_sum(tf.gather(nodes['value'], at), axis=1)


def _step(x: tf.Tensor, at: tf.Tensor, nodes: dict[str, tf.Tensor]) -> tf.Tensor:
  """Every row one level down in every tree: LightGBM's decision at each node (a leaf stays)."""
  node = lambda name: tf.gather(nodes[name], at)
  value = tf.gather(x, node('feature'), batch_dims=1)
  go_left = tf.where(node('categorical'), _categorical_left(value, at, nodes),
                     _numerical_left(value, node('threshold'), node('missing'), node('default_left')))
  return tf.where(go_left, node('left'), node('right'))


def _numerical_left(value, threshold, missing, default_left):
  nan = tf.math.is_nan(value)
  value = tf.where(nan & (missing != Missing.NAN), tf.zeros_like(value), value)  # NaN reads as 0 there.
  default = ((missing == Missing.ZERO) & (tf.abs(value) <= _ZERO)) | ((missing == Missing.NAN) & nan)
  return tf.where(default, default_left, value <= threshold)


def _categorical_left(value, at, nodes):
  """int(x) among the node's categories; NaN, negative or unseen values go right."""
  nan = tf.math.is_nan(value)
  # A cast truncates toward zero, as LightGBM's static_cast<int> does (-0.5 reads as category 0).
  category = tf.cast(tf.where(nan, -tf.ones_like(value), value), tf.int64)
  size = tf.cast(tf.gather(nodes['size'], at), tf.int64)
  known = (category >= 0) & (category < size)
  mark = tf.cast(tf.gather(nodes['offset'], at), tf.int64) + tf.where(known, category, 0)
  # A categories array of one False mark keeps the gather valid for forests without categorical splits.
  return known & tf.gather(nodes['categories'], mark)


class _Nodes:
  """Flattens LightGBM's nested tree dumps (`Forest.from_dump`)."""

  def __init__(self):
    self.rows: list[dict] = []
    self.categories: list[bool] = [False]

  def add(self, node: Mapping[str, Any], depth: int) -> tuple[int, int]:
    """Appends `node` and its subtree: (its index, its subtree's deepest leaf depth)."""
    index = len(self.rows)
    row = dict(feature=0, threshold=0.0, left=index, right=index, value=0.0, default_left=False,
               missing=Missing.NONE, categorical=False, offset=0, size=0)
    self.rows.append(row)
    if 'leaf_value' in node:
      row['value'] = float(node['leaf_value'])
      return index, depth
    row.update(feature=int(node['split_feature']), default_left=bool(node['default_left']),
               missing=Missing.parse(node['missing_type']))
    decision = node['decision_type']
    if decision == '<=':
      row['threshold'] = float(node['threshold'])
    elif decision == '==':
      row.update(categorical=True, **self._marks(str(node['threshold'])))
    else:
      raise ValueError(f"unknown LightGBM decision_type {decision!r}; expected '<=' or '=='.")
    row['left'], left_depth = self.add(node['left_child'], depth + 1)
    row['right'], right_depth = self.add(node['right_child'], depth + 1)
    return index, max(left_depth, right_depth)

  def _marks(self, threshold: str) -> dict:
    """A categorical split's categories ('1||4||7') as marks appended to `categories`."""
    chosen = [int(c) for c in threshold.split('||')]
    size = max(chosen) + 1
    offset = len(self.categories)
    marks = [False] * size
    for c in chosen:
      marks[c] = True
    self.categories.extend(marks)
    return dict(offset=offset, size=size)

  def forest(self, roots: list[int], depth: int, *, num_features: int) -> Forest:
    column = lambda name, dtype: np.array([r[name] for r in self.rows], dtype)
    return Forest(
        feature=column('feature', np.int32), threshold=column('threshold', np.float64),
        left=column('left', np.int32), right=column('right', np.int32), value=column('value', np.float64),
        default_left=column('default_left', bool), missing=column('missing', np.int32),
        categorical=column('categorical', bool), offset=column('offset', np.int32),
        size=column('size', np.int32), categories=np.array(self.categories, bool),
        roots=np.array(roots, np.int32), depth=depth, num_features=num_features)


# Gradient-boosted trees as an AML team would first run them: more, smaller
# steps (shrinkage 0.05), row and column subsampling, and XGBoost's default
# leaf regularisation (a hessian of at least 1 per leaf, L2 1). LightGBM's
# own floor (1e-3) lets a leaf hold a few rows when positives are 0.1%: on
# 1M generated transactions its trees overfit (pooled AUC 0.92, and 0.68
# with more and larger trees, against 0.99 with the floor of 1).
GBT_PARAMETERS = dict(n_estimators=300, learning_rate=0.05, num_leaves=31, subsample=0.8, subsample_freq=1,
                      colsample_bytree=0.8, min_child_weight=1.0, reg_lambda=1.0, verbose=-1)


def forest_inputs(frame: pd.DataFrame, space: features.FeatureSpace) -> np.ndarray:
  """The trees' columns: numerics as they are, categoricals as their index in the federated vocabulary - 1."""
  columns = [frame[c].to_numpy(np.float64) for c in space.schema.numeric]
  for c in space.schema.categorical:
    # The model's lookup (by hashed slot under DP statistics), 0 out of vocabulary, shifted so unknown is -1.
    columns.append(features.category_index(space.vocabulary[c], frame[c].to_numpy()).astype(np.float64) - 1)
  return np.stack(columns, axis=1)


def fit_lightgbm(inputs: np.ndarray, labels: np.ndarray, space: features.FeatureSpace, *,
                 seed: int) -> lightgbm.LGBMClassifier:
  """LightGBM (`GBT_PARAMETERS`) on `inputs`: `forest_inputs` first (categoricals as categories), then any
  further numeric columns."""
  categorical = list(range(len(space.schema.numeric), len(space.schema.numeric) + len(space.schema.categorical)))
  return lightgbm.LGBMClassifier(random_state=seed, **GBT_PARAMETERS).fit(
      inputs, labels, categorical_feature=categorical or 'auto')


def log_odds(p: tf.Tensor) -> tf.Tensor:
  """log(p / (1 - p)) in float64, p clipped to [1e-7, 1 - 1e-7]: a score of 0 or 1 stays a number to split."""
  p = tf.clip_by_value(tf.cast(p, tf.float64), 1e-7, 1 - 1e-7)
  return tf.math.log(p / (1 - p))


class ForestOnScores(tf.keras.Model):
  """Trees over a row's raw columns and the log-odds of other models' scores, as one Keras model.

  What compare's `trees_on_release` trains, served: the inputs are the
  models' own (raw named features, `features.keras_inputs`); the trees read
  the numeric columns as they are, each categorical column as its index in
  the federation's vocabulary minus 1 (-1 out of it, as
  `forest_inputs`), then one log-odds column per model in `scorers`. The
  output is the trees' probability, float32 [rows, 1], like any classifier
  here, so the export serves it unchanged.
  """

  def __init__(self, forest: Forest, space, scorers, **kwargs):
    super().__init__(**kwargs)
    self.forest, self.scorers = forest, list(scorers)
    self.numeric, self.categorical = tuple(space.schema.numeric), tuple(space.schema.categorical)
    expected = len(self.numeric) + len(self.categorical) + len(self.scorers)
    if forest.num_features != expected:
      raise ValueError(f'the trees read {forest.num_features} columns; {len(self.numeric)} numeric,'
                       f' {len(self.categorical)} categorical and {len(self.scorers)} scores make {expected}.')
    self.lookups = {c: features.category_lookup(space.vocabulary[c], name=f'trees_{c}') for c in self.categorical}

  def call(self, inputs, training=False):
    del training  # The trees are fixed.
    columns = [tf.cast(inputs[c], tf.float64) for c in self.numeric]
    columns += [tf.cast(self.lookups[c](inputs[c]), tf.float64) - 1.0 for c in self.categorical]
    columns += [log_odds(tf.reshape(m(inputs, training=False), [-1])) for m in self.scorers]
    return tf.cast(tf.sigmoid(self.forest.raw_scores(tf.stack(columns, axis=1))), tf.float32)[:, tf.newaxis]

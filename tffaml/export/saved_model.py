"""Export for local serving: a SavedModel any TensorFlow can run.

The `serving_default` signature takes the raw inputs of an `Interface`
(`tffaml.data.interface`), each
a 1-D tensor named after its column: for tabular data the schema's features
(float32 numeric, string categorical), returning `probability` (float32) and
`label` (int64, probability >= threshold); for transactions their raw fields
and account aggregates, returning `score` and `alert`. The preprocessing
learned by federation is inside the graph, so a bank needs neither tffaml nor
TFF to score: `tf.saved_model.load` or `saved_model_cli run` suffice.
`metadata.json` beside `saved_model.pb` holds the schema, the interface, the
threshold, config, metrics and privacy statement. Under DP the metrics are
the pooled ones only (`package_metadata`): no figure of one institution
(its rows, positives, test metrics) leaves in the package; the run's own
metrics.json keeps them, and the statement names them as not covered.
"""

import dataclasses
import json
import math
import os
from typing import Mapping, Optional

import tensorflow as tf
# Keras 2.14's switch for tracing every layer's call into a SavedModel; the
# stack pins Keras 2.14 with TensorFlow 2.14 (uv.lock).
from keras.src.saving.legacy.saved_model import utils as keras_saving  # pylint: disable=g-direct-third-party-import

from tffaml import io
from tffaml.data import interface as interface_lib
from tffaml.data import schema as schema_lib

SIGNATURE = 'serving_default'
METADATA_FILE = 'metadata.json'


@dataclasses.dataclass(frozen=True)
class Hardening:
  """What the served model reveals, against model inversion and extraction.

  Attributes:
    score_decimals: Round the returned score to this many decimals (None:
      full precision). Coarse confidences give an attacker probing the
      model far less to fit (Fredrikson et al. 2015, "Model Inversion
      Attacks that Exploit Confidence Information").
    decision_only: Return only the 0/1 decision, no score.
    input_steps: Numeric input -> granularity it is rounded to before the
      model sees it (e.g. income to the nearest 1,000).
  """

  score_decimals: Optional[int] = None
  decision_only: bool = False
  input_steps: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.score_decimals is not None and not 0 <= self.score_decimals <= 8:
      raise ValueError(f'score_decimals must be in [0, 8], got {self.score_decimals}.')
    for column, step in self.input_steps.items():
      if not step > 0:
        raise ValueError(f'input rounding step of {column!r} must be > 0, got {step}.')

  def to_dict(self) -> dict:
    return dataclasses.asdict(self) | {'input_steps': dict(self.input_steps)}


def check_hardening(interface: interface_lib.Interface, hardening: Hardening) -> None:
  """Input rounding must name numeric inputs of the signature."""
  numeric = [c for c, spec in interface.inputs.items() if spec.dtype == tf.float32]
  unknown = sorted(set(hardening.input_steps) - set(numeric))
  if unknown:
    raise ValueError(f'input rounding names {unknown}, not numeric inputs of the model ({numeric}).')


class _ServingModule(tf.Module):

  def __init__(self, model: tf.keras.Model, interface: interface_lib.Interface, threshold: float, hardening: Hardening):
    super().__init__()
    self.model = model

    @tf.function(input_signature=[dict(interface.inputs)])
    def serve(inputs):
      inputs = dict(inputs)
      for column, step in hardening.input_steps.items():
        inputs[column] = tf.round(inputs[column] / step) * step
      score = tf.squeeze(self.model(interface.preprocess(inputs), training=False), axis=-1)
      outputs = {interface.decision: tf.cast(score >= threshold, tf.int64)}
      if not hardening.decision_only:
        if hardening.score_decimals is not None:
          scale = 10.0 ** hardening.score_decimals
          score = tf.round(score * scale) / scale
        outputs[interface.score] = score
      return outputs

    self.serve = serve


# Where metrics hold one entry per institution (the data's summary, evaluation
# and alert metrics): `{'institutions': {name: ...}}` or `[{institution: ...}]`.
PER_INSTITUTION = 'institutions'


def package_metadata(metadata: dict) -> dict:
  """What the package holds of `metadata`: all of it, or under DP (the statement says which) no per-institution entry.

  The statement (`metadata['privacy']`, `accounting.PrivacyStatement.to_dict`)
  decides, so that what it names as left out is what is left out.
  """
  privacy = metadata.get('privacy') or {}
  if not privacy.get('package_withholds_per_institution') or 'metrics' not in metadata:
    return metadata
  return dict(metadata, metrics=_without_institutions(metadata['metrics']))


def _without_institutions(value):
  """`value` with every per-institution entry (a dict or list under PER_INSTITUTION) removed, at any depth."""
  if isinstance(value, dict):
    return {k: _without_institutions(v) for k, v in value.items()
            if not (k == PER_INSTITUTION and isinstance(v, (dict, list)))}
  if isinstance(value, list):
    return [_without_institutions(v) for v in value]
  return value


def export(
    model: tf.keras.Model,
    export_dir: str,
    *,
    schema: schema_lib.Schema,
    interface: interface_lib.Interface,
    threshold: float,
    metadata: dict,
    hardening: Hardening = Hardening(),
    replace: bool = False,
) -> None:
  """Writes the SavedModel and its metadata to `export_dir`, atomically.

  `replace`: whether an existing non-empty `export_dir` may be replaced (a
  run's own export, re-made when the run is re-run).
  """
  if not math.isfinite(threshold):
    raise ValueError(f'threshold must be finite, got {threshold}.')
  check_hardening(interface, hardening)
  module = _ServingModule(model, interface, threshold, hardening)
  with io.atomic_path(export_dir, directory=True, replace=replace) as tmp:
    # Only the signature serves: Keras's traces of each layer's call (for
    # tf.keras.models.load_model) double the package and its save time; banks
    # load it with tf.saved_model.load or saved_model_cli.
    with keras_saving.keras_option_scope(save_traces=False):
      tf.saved_model.save(module, tmp, signatures={SIGNATURE: module.serve})
    serving = interface.to_dict() | {'hardening': hardening.to_dict()}
    if hardening.decision_only:
      del serving['score']
    metadata = dict(package_metadata(metadata), schema=schema.to_dict(), serving=serving, threshold=threshold)
    with open(os.path.join(tmp, METADATA_FILE), 'w') as f:
      json.dump(metadata, f, indent=2, allow_nan=False)


def read_metadata(model_dir: str) -> dict:
  path = os.path.join(model_dir, METADATA_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no metadata; is {model_dir} a tffaml export?')
  with open(path) as f:
    return json.load(f)

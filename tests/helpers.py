"""Small federations written to disk by tests."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd

SCHEMA = {'label': 'default', 'positive': '1', 'numeric': ['amount', 'rate'], 'categorical': ['grade']}


def institution_frame(rows: int, seed: int) -> pd.DataFrame:
  rng = np.random.default_rng(seed)
  rate = rng.uniform(5, 25, rows)
  default = (rng.random(rows) < (rate - 3) / 40).astype(int)
  default[:2] = [0, 1]  # Both classes, always.
  return pd.DataFrame({
      'amount': rng.integers(1000, 30000, rows),
      'rate': rate.round(2),
      'grade': rng.choice(['A', 'B', 'C'], rows),
      'note': 'ignored column',
      'account': [f'acct{i % 12}' for i in range(rows)],  # A privacy unit, if named.
      'default': default,
  })


def write_bytes(directory: str, name: str, data: bytes) -> str:
  """Writes `data` to `directory`/`name`; returns the path."""
  path = os.path.join(directory, name)
  with open(path, 'wb') as f:
    f.write(data)
  return path


def write_federation(root: str, institutions=('bank_a', 'bank_b', 'bank_c'), rows=60,
                     seed=0) -> tuple[str, str]:
  """Writes <root>/data/<institution>/{train,test}.csv and schema.json (other rows for another `seed`)."""
  data_dir = os.path.join(root, 'data')
  for i, name in enumerate(institutions):
    os.makedirs(os.path.join(data_dir, name), exist_ok=True)
    institution_frame(rows, seed=seed + 2 * i).to_csv(os.path.join(data_dir, name, 'train.csv'), index=False)
    institution_frame(rows // 2, seed=seed + 2 * i + 1).to_csv(os.path.join(data_dir, name, 'test.csv'),
                                                               index=False)
  schema_file = os.path.join(root, 'schema.json')
  with open(schema_file, 'w') as f:
    json.dump(SCHEMA, f)
  return data_dir, schema_file


def load_federation():
  """A written federation, loaded and validated."""
  from tffaml.data import csv_dir  # pylint: disable=g-import-not-at-top
  from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
  data_dir, _ = write_federation(tempfile.mkdtemp())
  return csv_dir.load(data_dir, schema_lib.Schema.from_dict(SCHEMA))


def smoke_config(root: str, *, rounds: int = 2, batch_size: int = 16):
  """configs/csv.py:smoke on a federation written under `root`."""
  from configs import csv as csv_config  # pylint: disable=g-import-not-at-top
  data_dir, schema_file = write_federation(root)
  config = csv_config.get_config('smoke')
  config.data.dir, config.data.schema_file = data_dir, schema_file
  config.federated.rounds, config.federated.batch_size = rounds, batch_size
  return config


def loaded_smoke_federation(rows: int):
  """configs/csv.py:smoke on a federation of `rows` rows a bank: (config, loaded data, feature space)."""
  from configs import csv as csv_config  # pylint: disable=g-import-not-at-top
  from tffaml.config import data as config_data  # pylint: disable=g-import-not-at-top
  config = csv_config.get_config('smoke')
  config.data.dir, config.data.schema_file = write_federation(tempfile.mkdtemp(), rows=rows)
  data = config_data.load_data(config, log=lambda _: None)
  return config, data, config_data.feature_space(config, data)


def serve_in_fresh_process(model_dir: str, inputs: dict[str, list]) -> dict[str, list]:
  """Calls the export's signature in a process that imports only TensorFlow.

  `inputs`: column -> values (floats become float32 tensors, text strings).
  """
  return serve_all_in_fresh_process([model_dir], inputs)[0]


def serve_all_in_fresh_process(model_dirs: list[str], inputs: dict[str, list]) -> list[dict[str, list]]:
  """`serve_in_fresh_process` for several exports: one TensorFlow import, not one each."""
  code = (
      'import json, sys, tensorflow as tf\n'
      'inputs = json.load(sys.stdin)\n'
      'args = {k: tf.constant(v, tf.float32 if isinstance(v[0], float) else tf.string) for k, v in inputs.items()}\n'
      'served = []\n'
      f'for model_dir in {list(model_dirs)!r}:\n'
      '  out = tf.saved_model.load(model_dir).signatures["serving_default"](**args)\n'
      '  served.append({k: v.numpy().tolist() for k, v in out.items()})\n'
      'assert not any(m.startswith(("tffaml", "tensorflow_federated")) for m in sys.modules)\n'
      'print(json.dumps(served))\n')
  done = subprocess.run([sys.executable, '-c', code], input=json.dumps(inputs),
                        capture_output=True, text=True, check=True, timeout=300)
  return json.loads(done.stdout.strip().splitlines()[-1])


def export_rate_model(model_dir: str, *, metadata: dict = None, hardening=None) -> None:
  """Exports p(default) = sigmoid(rate - 15) on the test schema (no training).

  Its feature space is the test federation's, so scoring can check inputs.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tffaml import features  # pylint: disable=g-import-not-at-top
  from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
  from tffaml.data import interface  # pylint: disable=g-import-not-at-top
  from tffaml.export import saved_model  # pylint: disable=g-import-not-at-top
  schema = schema_lib.Schema.from_dict(SCHEMA)
  inputs = features.keras_inputs(schema)
  probability = tf.keras.layers.Lambda(lambda r: tf.sigmoid(r - 15.0)[:, None])(inputs['rate'])
  space = features.compute_feature_space(load_federation(), min_category_count=1)
  saved_model.export(tf.keras.Model(inputs, probability), model_dir, schema=schema,
                     interface=interface.table_interface(schema), threshold=0.5,
                     metadata=dict(metadata or {}, feature_space=space.to_dict()),
                     hardening=hardening or saved_model.Hardening())


def payment_frame(rows) -> pd.DataFrame:
  """The columns the rarity grid reads, from (format, direction, log amount, hour) rows."""
  fmt, direction, amount, hour = zip(*rows)
  angle = 2 * np.pi * np.array(hour) / 24
  return pd.DataFrame({'payment_format': fmt, 'direction': direction, 'log_amount_paid': amount,
                       'hour_sin': np.sin(angle), 'hour_cos': np.cos(angle)})


def payment_space():
  """A feature space of the columns the rarity model reads (statistics unused by it)."""
  from tffaml import features  # pylint: disable=g-import-not-at-top
  from tffaml.data import schema as schema_lib  # pylint: disable=g-import-not-at-top
  numeric = ['log_amount_paid', 'hour_sin', 'hour_cos']
  schema = schema_lib.Schema.from_dict({'label': 'is_laundering', 'positive': '1', 'numeric': numeric,
                                        'categorical': ['payment_format', 'direction']})
  return features.FeatureSpace(schema=schema, mean=dict.fromkeys(numeric, 0.0), variance=dict.fromkeys(numeric, 1.0),
                               vocabulary={'payment_format': ('ACH', 'Wire'), 'direction': ('incoming', 'outgoing')})

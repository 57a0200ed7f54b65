"""A federation on disk: `<dir>/<institution>/{train,test}.csv`.

This is how a consortium runs on its own data: each institution's folder
holds its two files, all described by one `schema.json`. Every file is read
and validated before training, so the first bad cell stops the run with its
file, line and column.
"""

import os

from tffaml.data import federated_data
from tffaml.data import schema as schema_lib

SPLITS = ('train', 'test')


def load(data_dir: str, schema: schema_lib.Schema) -> federated_data.FederatedData:
  """Loads and validates every institution under `data_dir`."""
  if not os.path.isdir(data_dir):
    raise schema_lib.DataError(f'{data_dir}: data directory not found.')
  names = sorted(
      n for n in os.listdir(data_dir)
      if os.path.isdir(os.path.join(data_dir, n)) and not n.startswith('.')
  )
  if not names:
    raise schema_lib.DataError(
        f'{data_dir}: no institution folders; expected'
        f' {data_dir}/<institution>/train.csv and test.csv.'
    )
  institutions = []
  for name in names:
    frames = {}
    for split in SPLITS:
      path = os.path.join(data_dir, name, f'{split}.csv')
      frames[split] = schema_lib.validate_frame(
          schema_lib.read_csv(path), schema, source=path
      )
    institutions.append(federated_data.Institution(name=name, **frames))
  return federated_data.FederatedData(
      schema=schema, institutions=tuple(institutions)
  )

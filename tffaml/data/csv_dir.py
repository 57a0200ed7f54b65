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


def _check_distinct(data_dir: str, names: list[str]) -> None:
  """Refuses two institution folders (or their files) that resolve to the same data.

  A symlinked folder would otherwise count one institution's rows twice, in
  training and in the privacy statement.
  """
  seen = {}
  for name in names:
    for path in [os.path.join(data_dir, name)] + [
        os.path.join(data_dir, name, f'{split}.csv') for split in SPLITS]:
      real = os.path.realpath(path)
      if real in seen:
        raise schema_lib.DataError(
            f'{path} and {seen[real]} are the same data ({real}); each institution needs its own'
            ' folder and files. Remove the link or copy.')
      seen[real] = path


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
  _check_distinct(data_dir, names)
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

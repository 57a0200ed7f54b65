"""A federation on disk: `<dir>/<institution>/{train,test}.csv`.

This is how a consortium runs on its own data: each institution's folder
holds its two files, all described by one `schema.json`. Every file is read
and validated before training, so the first bad cell stops the run with its
file, line and column, and every file must code the label with the same two
values (`schema.check_label_agreement`).
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
  institutions, sightings = [], []
  for name in names:
    institution, seen = read_institution(os.path.join(data_dir, name), schema)
    institutions.append(institution)
    sightings += seen
  schema_lib.check_label_agreement(schema, sightings)
  return federated_data.FederatedData(schema=schema, institutions=tuple(institutions))


def load_institution(folder: str, schema: schema_lib.Schema) -> federated_data.Institution:
  """One institution's validated `folder`/{train,test}.csv, named after the folder."""
  return read_institution(folder, schema)[0]


def read_institution(folder: str, schema: schema_lib.Schema
                     ) -> tuple[federated_data.Institution, list[schema_lib.LabelSighting]]:
  """`load_institution`, and the label values of its files (both checked to agree)."""
  if not os.path.isdir(folder):
    raise schema_lib.DataError(f'{folder}: institution folder not found.')
  frames, sightings = {}, []
  for split in SPLITS:
    path = os.path.join(folder, f'{split}.csv')
    raw = schema_lib.read_csv(path, encoding=schema.encoding)
    frames[split] = schema_lib.validate_frame(raw, schema, source=path)
    sightings.append(schema_lib.sighting(path, raw, frames[split]))
    del raw
  # Before the class counts: a test file labelled 'yes' throughout is a coding, not "no positives".
  schema_lib.check_label_agreement(schema, sightings)
  institution = federated_data.Institution(name=os.path.basename(os.path.normpath(folder)), **frames)
  federated_data.check_institution(institution)
  return institution, sightings

"""Per-institution datasets: the unit of a federation.

Each institution holds its own train and test rows; nothing here pools them
for training. `FederatedData` checks, when built, everything training needs
(rows in every split, both classes in every train split), so bad data fails
before any work starts.
"""

import dataclasses
from typing import Mapping, Protocol, Sequence

import numpy as np
import pandas as pd

from tffaml.data import schema as schema_lib

LABEL = schema_lib.LABEL_COLUMN


@dataclasses.dataclass(frozen=True)
class Institution:
  """One institution's validated rows (see `schema.validate_frame`)."""

  name: str
  train: pd.DataFrame
  test: pd.DataFrame


class InstitutionLike(Protocol):
  """An `Institution`, or one whose rows are stored (`shards.StoredInstitution`)."""

  name: str

  @property
  def train(self) -> pd.DataFrame: ...

  @property
  def test(self) -> pd.DataFrame: ...


def split_counts(institution: InstitutionLike) -> dict:
  """Rows and positives per split (stored institutions keep theirs)."""
  counts = getattr(institution, 'counts', None)
  if counts is not None:
    return counts
  counts = {}
  for split in ('train', 'test'):
    labels = getattr(institution, split)[LABEL]
    counts[f'{split}_rows'], counts[f'{split}_positives'] = len(labels), int(labels.sum())
  return counts


def check_institution(institution: InstitutionLike) -> None:
  """Rows in both splits and both classes in train, or DataError."""
  counts = split_counts(institution)
  for split in ('train', 'test'):
    if not counts[f'{split}_rows']:
      raise schema_lib.DataError(f'institution {institution.name!r}: {split} split has no rows.')
  schema_lib.check_class_counts(
      positives=counts['train_positives'], rows=counts['train_rows'],
      source=f'institution {institution.name!r} train split')


@dataclasses.dataclass(frozen=True)
class FederatedData:
  """The institutions of a federation and the schema they share."""

  schema: schema_lib.Schema
  institutions: tuple[InstitutionLike, ...]

  def __post_init__(self):
    if not self.institutions:
      raise schema_lib.DataError('no institutions: the federation is empty.')
    names = [i.name for i in self.institutions]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
      raise schema_lib.DataError(f'institution name(s) {duplicated} repeat.')
    for institution in self.institutions:
      check_institution(institution)

  @property
  def names(self) -> list[str]:
    return [i.name for i in self.institutions]

  def pooled(self, split: str) -> pd.DataFrame:
    """All institutions' rows of `split`: for reference baselines only."""
    return pd.concat(
        [getattr(i, split) for i in self.institutions], ignore_index=True
    )

  def summary(self) -> list[dict]:
    return [{'institution': i.name, **split_counts(i)} for i in self.institutions]


def stratified_split(
    labels: np.ndarray, *, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """Splits row indices into (train, test), keeping the class balance.

  Each class contributes round(test_fraction * count) rows to test, at least
  one when the class has two or more rows, so both splits see positives.

  Args:
    labels: 0/1 labels of the rows.
    test_fraction: Fraction of rows in the test split, in (0, 1).
    rng: Source of randomness.

  Returns:
    Sorted train and test row indices.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}.')
  train, test = [], []
  for value in (0, 1):
    rows = rng.permutation(np.flatnonzero(labels == value))
    n_test = int(round(test_fraction * len(rows)))
    if len(rows) >= 2:
      n_test = min(max(n_test, 1), len(rows) - 1)
    test.append(rows[:n_test])
    train.append(rows[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def from_pooled_table(
    frame: pd.DataFrame,
    schema: schema_lib.Schema,
    assignment: Mapping[str, Sequence[int]],
    *,
    test_fraction: float,
    seed: int,
) -> FederatedData:
  """Builds institutions from a validated table and a row assignment.

  Args:
    frame: A validated table (`schema.validate_frame`).
    schema: Its schema.
    assignment: Institution name -> row indices of `frame` it holds.
    test_fraction: Fraction of each institution's rows held out for testing.
    seed: Seed of the per-institution train/test splits.

  Returns:
    The federation, each institution with its own stratified split.
  """
  rng = np.random.default_rng(seed)
  institutions = []
  for name, rows in assignment.items():
    table = frame.iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)
    train, test = stratified_split(
        table[LABEL].to_numpy(), test_fraction=test_fraction, rng=rng
    )
    institutions.append(
        Institution(
            name=name,
            train=table.iloc[train].reset_index(drop=True),
            test=table.iloc[test].reset_index(drop=True),
        )
    )
  return FederatedData(schema=schema, institutions=tuple(institutions))

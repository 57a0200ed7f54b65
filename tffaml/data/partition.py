"""Research partitioners: split one pooled table into simulated institutions.

Real federations come partitioned (`csv_dir`); these recreate the kinds of
heterogeneity studied in the literature (Li et al. 2022, "Federated Learning
on Non-IID Data Silos: An Experimental Study", arXiv:2102.02079):

* `iid`: rows dealt uniformly at random.
* `dirichlet_label_skew`: each class's rows split by proportions drawn from
  Dir(alpha); small alpha gives institutions dominated by one class.
* `quantity_skew`: institution sizes drawn from Dir(alpha).
* `by_column`: one institution per value of a column (e.g. a state), small
  groups merged within a coarser grouping (e.g. a census region) until each
  has enough rows and positives.

Each returns {institution name: row indices}, deterministic given `rng`.
"""

import enum
from typing import Mapping, Optional, Sequence

import numpy as np


class Method(enum.Enum):
  IID = 'iid'
  DIRICHLET = 'dirichlet'
  QUANTITY = 'quantity'
  COLUMN = 'column'


def _names(count: int) -> list[str]:
  width = len(str(count - 1))
  return [f'institution_{i:0{width}d}' for i in range(count)]


def _check_count(num_institutions: int, num_rows: int) -> None:
  if not 1 <= num_institutions <= num_rows:
    raise ValueError(
        f'num_institutions must be in [1, {num_rows}], got {num_institutions}.'
    )


def iid(
    num_rows: int, num_institutions: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
  _check_count(num_institutions, num_rows)
  parts = np.array_split(rng.permutation(num_rows), num_institutions)
  return {n: np.sort(p) for n, p in zip(_names(num_institutions), parts)}


def _split_by_proportions(
    rows: np.ndarray, proportions: np.ndarray
) -> list[np.ndarray]:
  cuts = (np.cumsum(proportions)[:-1] * len(rows)).astype(np.int64)
  return np.split(rows, cuts)


def dirichlet_label_skew(
    labels: np.ndarray,
    num_institutions: int,
    alpha: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
  _check_count(num_institutions, len(labels))
  if alpha <= 0:
    raise ValueError(f'dirichlet alpha must be > 0, got {alpha}.')
  parts = [[] for _ in range(num_institutions)]
  for value in np.unique(labels):
    rows = rng.permutation(np.flatnonzero(labels == value))
    proportions = rng.dirichlet([alpha] * num_institutions)
    for part, chunk in zip(parts, _split_by_proportions(rows, proportions)):
      part.append(chunk)
  return {
      n: np.sort(np.concatenate(p)) for n, p in zip(_names(num_institutions), parts)
  }


def quantity_skew(
    num_rows: int,
    num_institutions: int,
    alpha: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
  _check_count(num_institutions, num_rows)
  if alpha <= 0:
    raise ValueError(f'dirichlet alpha must be > 0, got {alpha}.')
  proportions = rng.dirichlet([alpha] * num_institutions)
  parts = _split_by_proportions(rng.permutation(num_rows), proportions)
  return {n: np.sort(p) for n, p in zip(_names(num_institutions), parts)}


def _merge_in_order(members: list[str], big_enough) -> tuple[list[list[str]], list[str]]:
  """Consecutive runs of `members` that are each just `big_enough`, and the remainder."""
  formed, current = [], []
  for value in members:
    current.append(value)
    if big_enough(current):
      formed.append(current)
      current = []
  return formed, current


def by_column(
    values: Sequence[str],
    labels: np.ndarray,
    *,
    min_rows: int,
    min_positives: int,
    group_of: Optional[Mapping[str, str]] = None,
) -> dict[str, np.ndarray]:
  """One institution per column value; small ones merged.

  A value with at least `min_rows` rows and `min_positives` positives is an
  institution of its own. Smaller values are merged, largest first, with
  others of the same group (`group_of[value]`, default one group 'other')
  until the merged institution meets both minimums; a remainder that never
  does joins the smallest institution formed in its group, or else the
  smallest institution overall.

  Args:
    values: The column's value for each row.
    labels: 0/1 label of each row.
    min_rows: Minimum rows of an institution.
    min_positives: Minimum positive rows of an institution.
    group_of: Optional value -> group used to merge small values.

  Returns:
    {name: rows}; merged institutions are named 'GROUP (A+B+...)'.
  """
  values = np.asarray(values).astype(str)
  labels = np.asarray(labels)
  group_of = group_of or {}
  rows_of = {v: np.flatnonzero(values == v) for v in np.unique(values)}

  def big_enough(rows: np.ndarray) -> bool:
    return len(rows) >= min_rows and labels[rows].sum() >= min_positives

  institutions: dict[str, list[str]] = {}
  small_by_group: dict[str, list[str]] = {}
  for value, rows in sorted(rows_of.items(), key=lambda kv: (-len(kv[1]), kv[0])):
    if big_enough(rows):
      institutions[value] = [value]
    else:
      small_by_group.setdefault(group_of.get(value, 'other'), []).append(value)

  def rows_for(members: list[str]) -> np.ndarray:
    return np.concatenate([rows_of[m] for m in members])

  def smallest(names: list[str]) -> str:
    return min(names, key=lambda n: (len(rows_for(institutions[n])), n))

  for group, members in sorted(small_by_group.items()):
    formed, current = _merge_in_order(members, lambda merged: big_enough(rows_for(merged)))
    for merged in formed:
      institutions[f'{group} ({"+".join(sorted(merged))})'] = merged
    if current:
      candidates = [f'{group} ({"+".join(sorted(m))})' for m in formed]
      candidates = candidates or list(institutions)
      if candidates:
        target = smallest(candidates)
        institutions[target] = institutions[target] + current
      else:  # Nothing anywhere is big enough: keep what there is.
        institutions[f'{group} ({"+".join(sorted(current))})'] = current
  return {_final_name(name, members): np.sort(rows_for(members))
          for name, members in institutions.items()}


def _final_name(name: str, members: list[str]) -> str:
  """A merged institution is named after its final members: 'GROUP (A+B+...)'."""
  if len(members) > 1:
    return f'{name.split(" (")[0]} ({"+".join(sorted(members))})'
  return name

"""Privacy budget sweeps: ε against utility and against measured attack risk.

Each grid point is a full training run (resumable, under
`<output_dir>/runs/<point>`) followed by a membership-inference audit of its
exported model. The results go to `sweep.csv`, `sweep.md` and `sweep.png`.

`attack_auc` is the loss-threshold attack on all institutions' rows
together (the steadiest estimate); `max_attack_auc` is the largest AUC of
any attack on any single institution, which at a few hundred rows per
institution is inflated by noise (the maximum of many noisy estimates).
"""

import dataclasses
import enum
import json
import math
import os
from typing import Callable, Optional, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top
import ml_collections
import pandas as pd

from tffaml import io
from tffaml.studies import audit
from tffaml.studies import canary_audit
from tffaml.training import program


class DpUnit(enum.Enum):
  NONE = 'none'  # No noise: the non-private reference.
  INSTITUTION = 'institution'  # Client-level DP (gaussian_fixed aggregator).
  RECORD = 'record'  # Record-level DP-SGD inside each institution.


@dataclasses.dataclass(frozen=True)
class Point:
  """One grid point; the noise comes from `target_epsilon` or `noise_multiplier`."""

  unit: DpUnit
  clip: float = 1.0
  target_epsilon: Optional[float] = None
  noise_multiplier: Optional[float] = None

  def __post_init__(self):
    dp = self.unit is not DpUnit.NONE
    if dp and (self.target_epsilon is None) == (self.noise_multiplier is None):
      raise ValueError(f'{self}: give exactly one of target_epsilon and noise_multiplier.')
    if not self.clip > 0:
      raise ValueError(f'{self}: clip must be > 0.')

  @property
  def name(self) -> str:
    if self.unit is DpUnit.NONE:
      return 'none'
    noise = (f'eps{self.target_epsilon:g}' if self.target_epsilon is not None
             else f'z{self.noise_multiplier:g}')
    return f'{self.unit.value}_{noise}_clip{self.clip:g}'


def grid(
    units: Sequence[DpUnit], *, clips: Sequence[float],
    target_epsilons: Sequence[float] = (), noise_multipliers: Sequence[float] = (),
) -> list[Point]:
  """Every unit x clip x noise setting; DpUnit.NONE once."""
  points = []
  for unit in units:
    if unit is DpUnit.NONE:
      points.append(Point(unit))
      continue
    for clip in clips:
      points += [Point(unit, clip, target_epsilon=e) for e in target_epsilons]
      points += [Point(unit, clip, noise_multiplier=z) for z in noise_multipliers]
  return points


def configure(base: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
  """`base` with the point's DP mechanism (and no other) switched on."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.record_dp.enabled = point.unit is DpUnit.RECORD
  config.privacy.target_epsilon = point.target_epsilon
  if point.unit is DpUnit.INSTITUTION:
    config.aggregator.type = 'gaussian_fixed'
    config.aggregator.clip = point.clip
    config.aggregator.noise_multiplier = point.noise_multiplier or 1.0  # Or calibrated.
  else:
    config.aggregator.type = 'mean'
    config.aggregator.noise_multiplier = 0.0
  if point.unit is DpUnit.RECORD:
    config.record_dp.clip = point.clip
    config.record_dp.noise_multiplier = point.noise_multiplier or 1.0  # Or calibrated.
  return config


def _row(point: Point, metrics: dict, report: audit.AuditReport) -> dict:
  privacy = metrics['privacy']
  guarantees = {g['level']: g for g in privacy['guarantees']}
  headline = guarantees.get(point.unit.value)
  epsilon = float(headline['epsilon']) if headline else math.inf
  strongest = max(report.outcomes, key=lambda o: o.auc)
  pooled = metrics['federated']['pooled']
  return {
      'point': point.name, 'unit': point.unit.value, 'clip': point.clip,
      'target_epsilon': point.target_epsilon,
      'noise_multiplier': headline['noise_multiplier'] if headline else 0.0,
      'epsilon': epsilon, 'delta': headline['delta'] if headline else None,
      'auc': pooled['auc'], 'ks': pooled['ks'], 'brier': pooled['brier'],
      'attack_auc': report.pooled_auc(), 'max_attack_auc': strongest.auc,
      'attack_advantage': max(o.advantage for o in report.outcomes),
      'tpr_at_0.1%_fpr': max(o.tpr_at_low_fpr for o in report.outcomes),
      'epsilon_lower_bound': report.max_epsilon_lower_bound,
      'audit_flagged': bool(report.violations),
      'seconds_per_round': metrics['seconds_per_round_this_session'],
  }


def run(
    base: ml_collections.ConfigDict, points: Sequence[Point], output_dir: str,
    *, canaries: int = 0, log: Callable[[str], None] = print,
) -> pd.DataFrame:
  """Trains and audits every point; writes and returns the results table.

  Call inside `tffaml.runtime.local_runtime()`. Finished points are reused
  (each run resumes from its workdir, each canary audit is kept beside it),
  so a killed sweep picks up where it stopped.

  Args:
    base: The config every point changes.
    points: The grid.
    output_dir: Where results go.
    canaries: DP points also get a one-run canary audit (`canary_audit`, a
      second training with this many canaries; record-level points under
      distributed DP-SGD only); 0: none.
    log: Progress lines.
  """
  rows = []
  for i, point in enumerate(points, 1):
    log(f'[{i}/{len(points)}] {point.name}')
    config = configure(base, point)
    result = program.run(config, os.path.join(output_dir, 'runs', point.name),
                         log=lambda line: log(f'  {line}'))
    report = audit.audit(result.paths.export)
    io.write_json(os.path.join(result.paths.root, 'audit.json'), report.to_dict())
    rows.append({**_row(point, result.metrics, report),
                 'canary_epsilon_lower_bound': _canary_bound(config, point, result.paths.root, canaries)})
    log(f'  AUC {rows[-1]["auc"]:.4f}, ε {rows[-1]["epsilon"]:.4g},'
        f' attack AUC {rows[-1]["attack_auc"]:.3f}')
  table = pd.DataFrame(rows)
  write_outputs(table, output_dir)
  return table


def _canary_bound(config, point: Point, root: str, canaries: int) -> float:
  """The canary audit's ε lower bound for the point (NaN when none is asked, or it has no DP to audit).

  Record-level points are audited under distributed DP-SGD only: local
  DP-SGD's sampling rate moves with an institution's rows, canaries included
  (`canary_audit.check_record_level`).
  """
  if not canaries or point.unit is DpUnit.NONE:
    return math.nan
  if point.unit is DpUnit.RECORD and config.record_dp.mode != 'distributed':
    return math.nan
  path = os.path.join(root, 'canary_audit.json')
  if not os.path.exists(path):
    result = canary_audit.audit(config, canaries=canaries, seed=config.seed, log=lambda _: None)
    io.write_json(path, result.to_dict())
  with open(path) as f:
    return float(json.load(f)['lower_bound'])


def _markdown(table: pd.DataFrame) -> str:
  columns = ['unit', 'clip', 'target_epsilon', 'noise_multiplier', 'epsilon', 'auc',
             'attack_auc', 'max_attack_auc', 'attack_advantage', 'tpr_at_0.1%_fpr', 'epsilon_lower_bound',
             'audit_flagged', 'canary_epsilon_lower_bound']
  def cell(value):
    if isinstance(value, float):
      return '—' if math.isnan(value) else ('∞' if math.isinf(value) else f'{value:.4g}')
    return '—' if value is None else str(value)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(cell(r[c]) for c in columns) + ' |' for _, r in table.iterrows()]
  return '\n'.join(lines) + '\n'


def _plot(table: pd.DataFrame, output_png: str) -> None:
  fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
  private = table[table['epsilon'].apply(math.isfinite)]
  for ax, (key, title) in zip(axes[:2], (('auc', 'test AUC (pooled)'),
                                     ('attack_auc', 'loss-threshold attack AUC (all rows)'))):
    for unit, group in private.groupby('unit'):
      group = group.sort_values('epsilon')
      ax.plot(group['epsilon'], group[key], marker='o', label=f'{unit}-level DP')
    for _, row in table[~table['epsilon'].apply(math.isfinite)].iterrows():
      ax.axhline(row[key], color='grey', linestyle='--', label='no DP (ε = ∞)')
    ax.set_xscale('log')
    ax.set_xticks(sorted(set(private['epsilon'].round(2))))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter('%.3g'))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel('ε (δ from the config)')
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
  axes[1].axhline(0.5, color='black', linewidth=0.8, label='chance')
  axes[1].set_ylim(0.4, 0.8)  # Keep chance-level noise from looking like a trend.
  axes[1].legend(fontsize=8)
  _plot_canaries(axes[2], private)
  fig.tight_layout()
  with io.atomic_path(output_png) as tmp:
    fig.savefig(tmp, format='png', dpi=110)
  plt.close(fig)


def _plot_canaries(ax, private: pd.DataFrame) -> None:
  """The canary audit's lower bound against the claimed ε: a point above the diagonal refutes the claim."""
  audited = private.dropna(subset=['canary_epsilon_lower_bound'])
  top = max([1.0, *private['epsilon'], *audited['canary_epsilon_lower_bound']])
  ax.plot([0, top], [0, top], color='black', linewidth=0.8, label='bound = claim')
  for unit, points in audited.groupby('unit', sort=True):
    ax.plot(points['epsilon'], points['canary_epsilon_lower_bound'], marker='o', linestyle='none',
            label=f'{unit}-level DP')
  ax.set_xlabel('claimed ε')
  ax.set_ylabel('canary ε lower bound (95%)')
  ax.set_title('one-run canary audit' if len(audited) else 'one-run canary audit (none run)', fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def write_outputs(table: pd.DataFrame, output_dir: str) -> None:
  os.makedirs(output_dir, exist_ok=True)
  with io.atomic_path(os.path.join(output_dir, 'sweep.csv')) as tmp:
    table.to_csv(tmp, index=False)
  io.write_text(os.path.join(output_dir, 'sweep.md'), _markdown(table))
  _plot(table, os.path.join(output_dir, 'sweep.png'))

"""Plots of a run, for people."""

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import pandas as pd

from tffaml import io

_PANELS = (
    ('train/loss', 'training loss (institutions, mean)'),
    ('eval/auc', 'test AUC (pooled over institutions)'),
    ('privacy/epsilon', 'ε spent (unit: see privacy.txt)'),
)


def plot_training_curves(metrics_csv: str, output_png: str) -> None:
  rows = pd.read_csv(metrics_csv)
  panels = [(k, t) for k, t in _PANELS if k in rows and rows[k].notna().any()]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
  for ax, (key, title) in zip(axes[0], panels):
    series = rows[['round', key]].dropna()
    ax.plot(series['round'], series[key], marker='.' if len(series) < 40 else None)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('round')
    ax.grid(alpha=0.3)
  fig.tight_layout()
  with io.atomic_path(output_png) as tmp:
    fig.savefig(tmp, format='png', dpi=110)
  plt.close(fig)

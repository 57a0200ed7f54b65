"""Poisoning attacks against defences: the matrix banks and regulators ask for.

For each attack (`poisoning.AttackType`) and number of malicious
institutions (none, one, 10%, 20%, rounded up), and each aggregator
(`mean` = no defence, and the defences), trains with the training program
and measures on clean test rows: the main-task AUC, its drop against the
same aggregator without attack, and for the backdoor the AUC of triggered
bad rows against good ones (`backdoor_auc`: a working backdoor pulls it
towards or below 0.5).
"""

import os
from typing import Callable, Sequence

import ml_collections
import pandas as pd

from tffaml import io
from tffaml.config import data as config_data
from tffaml.federated import poisoning
from tffaml.training import program

LEVELS = ('none', '1', '10%', '20%')
DEFENCES = ('mean', 'clipping', 'robust', 'median', 'trimmed_mean')
ATTACKS = ('label_flip', 'boost', 'backdoor')


def run(
    base: ml_collections.ConfigDict, *, output_dir: str, attacks: Sequence[str] = ATTACKS,
    levels: Sequence[str] = LEVELS, defences: Sequence[str] = DEFENCES,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
  """Runs the matrix; writes attack_eval.csv and attack_eval.md; returns the rows.

  Call inside `tffaml.runtime.local_runtime()`.
  """
  institutions = len(config_data.load_data(base, log=lambda _: None).institutions)
  rows = []
  for defence in defences:
    for attack in attacks:
      for level in levels:
        if level == 'none' and attack != attacks[0]:
          continue  # One clean run per defence serves every attack.
        config = ml_collections.ConfigDict(base.to_dict())
        config.aggregator.type = defence
        config.attack.type = 'none' if level == 'none' else attack
        config.attack.count = 0 if level == 'none' else poisoning.malicious_count(level, institutions)
        tag = 'clean' if level == 'none' else f'{attack}_{level.replace("%", "pct")}'
        name = f'{defence}/{tag}'
        log(name)
        result = program.run(config, os.path.join(output_dir, 'runs', name), log=lambda _: None)
        measured = result.metrics.get('attack') or {
            'auc': result.metrics['federated']['pooled']['auc']}
        rows.append({'defence': defence, 'attack': 'none' if level == 'none' else attack,
                     'malicious': level, 'malicious_institutions': config.attack.count,
                     'auc': measured['auc'], 'backdoor_auc': measured.get('backdoor_auc')})
  table = pd.DataFrame(rows)
  clean = table[table['attack'] == 'none'].set_index('defence')['auc']
  table['auc_drop'] = clean.reindex(table['defence']).to_numpy() - table['auc']
  write_outputs(table, output_dir)
  return table


def _markdown(table: pd.DataFrame) -> str:
  defences = list(dict.fromkeys(table['defence']))
  lines = ['| attack | malicious | ' + ' | '.join(defences) + ' |', '|---|---|' + '---|' * len(defences)]
  clean = table[table['attack'] == 'none'].set_index('defence')
  lines.append('| none | 0 | ' + ' | '.join(f'{clean.loc[d, "auc"]:.3f}' for d in defences) + ' |')
  for (attack, level), group in table[table['attack'] != 'none'].groupby(['attack', 'malicious'], sort=False):
    by = group.set_index('defence')
    def cell(d):
      r = by.loc[d]
      text = f'{r["auc"]:.3f} ({-r["auc_drop"]:+.3f})'
      return text + (f', backdoor {r["backdoor_auc"]:.3f}' if pd.notna(r['backdoor_auc']) else '')
    lines.append(f'| {attack} | {level} ({int(group["malicious_institutions"].iloc[0])}) | '
                 + ' | '.join(cell(d) for d in defences) + ' |')
  return ('Main-task AUC on clean test rows (change against the same aggregator without attack);'
          ' for the backdoor, the AUC of triggered bad rows against good ones.\n\n' + '\n'.join(lines) + '\n')


def write_outputs(table: pd.DataFrame, output_dir: str) -> None:
  os.makedirs(output_dir, exist_ok=True)
  with io.atomic_path(os.path.join(output_dir, 'attack_eval.csv')) as tmp:
    table.to_csv(tmp, index=False)
  io.write_text(os.path.join(output_dir, 'attack_eval.md'), _markdown(table))

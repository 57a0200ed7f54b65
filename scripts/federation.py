"""A federation of separate processes on this machine: the default data, one node per institution.

  python scripts/federation.py --workdir=runs/federation        (what `make federation` runs)
  python scripts/federation.py --config=configs/aml.py --transactions=data/transactions.csv \
      --config.reference.centralized_epochs=0 --workdir=runs/federation_aml

With --transactions (an AMLworld file, an AML config), each bank that joins
under the config gets a node reading the file with --bank=<its code>,
instead of a folder.

Writes under --workdir: data/<institution>/ (each node's folder, from
--data_config's data), pki/ (scripts/pki.py's credentials), nodes/<institution>/
(each node's workdir: noise seed and privacy ledger), logs/ (one per
process); starts a SuperLink and a node process per institution on
localhost (TLS and node authentication on), runs the coordinator here
with --config, and writes run/ (as scripts/train.py's workdir: metrics,
privacy statement, export, status.json), signs run/export with the
coordinator's key and delivers it to every node (nodes/<institution>/model/:
the verified package, its own metrics, the statement; nodes/<institution>/
answers.jsonl logs what each node answered).
With --config.canary_audit.canaries=M (and, under record-level DP,
--config.canary_audit.institution=NAME) the run is a canary audit instead
(see scripts/coordinator.py): run/canary_audit.json, exit 1 when refuted.
Every process it started is stopped when it ends, also on Ctrl-C. Rerunning
reuses the data and credentials, and resumes the run; a new run on the same
nodes/ is refused by their ledgers (its ε would be spent twice).
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from tffaml import cli

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/csv.py', 'The federation\'s agreed config.')
_DATA_CONFIG = config_flags.DEFINE_config_file('data_config', 'configs/loan_risk.py',
                                               'Whose data is split into the nodes\' folders.')
_WORKDIR = flags.DEFINE_string('workdir', 'runs/federation', 'Where everything goes.')
_TRANSACTIONS = flags.DEFINE_string('transactions', None,
                                    'An AMLworld file: one node per joining bank reads it (an AML --config).')
_CONNECT_SECONDS = 600.0  # Every node imports TensorFlow: tens of seconds each on two cores.


def _nodes_rows(config, root: str) -> tuple[dict[str, list[str]], list[str]]:
  """({institution: its node's flags for its rows}, the nodes' config flags); sets `config`'s data."""
  from tffaml.consortium import local  # pylint: disable=g-import-not-at-top
  from tffaml.config import data as config_data
  if _TRANSACTIONS.value:
    from tffaml import errors  # pylint: disable=g-import-not-at-top
    from tffaml.data import transactions  # pylint: disable=g-import-not-at-top
    if config.data.source != 'amlworld':
      raise errors.InputError('--transactions needs an AML --config (config.data.source=amlworld, e.g.'
                              ' configs/aml.py).')
    path = os.path.abspath(_TRANSACTIONS.value)
    config.data.path = path
    banks = transactions.members(config_data.data_spec(config).selection)
    return {f'bank_{b}': [f'--transactions={path}', f'--bank={b}'] for b in banks}, _config_args()
  data_dir, schema_file = os.path.join(root, 'data'), os.path.join(root, 'schema.json')
  if not os.path.exists(schema_file):
    data_dir, schema_file = local.write_institutions(config_data.load_data(_DATA_CONFIG.value), root)
  config.data.schema_file = schema_file
  return ({n: [f'--data_dir={os.path.join(data_dir, n)}'] for n in os.listdir(data_dir)},
          _config_args() + [f'--config.data.schema_file={schema_file}'])


def _config_args() -> list[str]:
  """The flags that give each node the coordinator's config (file and overrides)."""
  args = [a for a in sys.argv[1:] if a.startswith('--config')]
  return args or ['--config=configs/csv.py']


def main(argv):
  del argv
  from tffaml import runtime  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import local  # pylint: disable=g-import-not-at-top
  from tffaml.config import data as config_data
  logging.set_verbosity(logging.WARNING)
  root = os.path.abspath(_WORKDIR.value)
  config = _CONFIG.value
  rows, config_args = _nodes_rows(config, root)
  names = sorted(rows)
  files = _credentials(os.path.join(root, 'pki'), names)
  fleet, driver = f'127.0.0.1:{local.free_port()}', f'127.0.0.1:{local.free_port()}'
  with local.Processes(os.path.join(root, 'logs')) as processes, runtime.local_runtime():
    link = processes.start('superlink', local.superlink_argv(files, fleet=fleet, driver=driver))
    for name in names:
      processes.start(name, local.node_argv(files, config_args=config_args, name=name, rows=rows[name],
                                            workdir=os.path.join(root, 'nodes', name), fleet=fleet))
    problem = local.wait_for_text(link, 'Starting Driver API', timeout=_CONNECT_SECONDS)
    if problem is not None:
      sys.exit(f'error: the SuperLink did not start ({link}):\n{problem}')
    result = _coordinate(config, files, names, driver, os.path.join(root, 'run'), check=processes.exited)
  if config.canary_audit.canaries:
    from tffaml.studies import canary_audit  # pylint: disable=g-import-not-at-top
    sys.exit(canary_audit.report(result, os.path.join(root, 'run', 'canary_audit.json')))
  print(f'\nmodel:   {result.paths.export} (signed: {files.coordinator_public_key})')
  print(f'privacy: {result.paths.privacy}')


def _credentials(pki: str, names: list[str]):
  from tffaml.security import credentials  # pylint: disable=g-import-not-at-top
  if not os.path.exists(pki):
    return credentials.write_federation(pki, hosts=['127.0.0.1', 'localhost'], institutions=names)
  return credentials.federation_files(pki)


def _coordinate(config, files, names, driver: str, workdir: str, *, check):
  from tffaml.consortium import coordinator  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import flower  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import messages  # pylint: disable=g-import-not-at-top
  from tffaml.training import program  # pylint: disable=g-import-not-at-top
  coordinator.at_coordinator(config)
  node_keys = {n: messages.load_public_key(os.path.join(files.nodes, f'{n}.pub')) for n in names}
  with open(files.tls.ca_certificate, 'rb') as f:
    transport = flower.FlowerTransport(driver, root_certificates=f.read(), node_keys=node_keys)
  try:
    print(f'waiting for {len(names)} nodes to connect...', flush=True)
    transport.wait_for(names, timeout=_CONNECT_SECONDS, check=check)
    federation = coordinator.Federation(transport, key=messages.load_private_key(files.coordinator_key),
                                        node_keys=node_keys)
    if config.canary_audit.canaries:
      from tffaml.studies import canary_audit  # pylint: disable=g-import-not-at-top
      return canary_audit.audit_as_configured(config, runtime=federation, workdir=workdir)
    result = program.run(config, workdir, runtime=federation)
    coordinator.deliver(federation, result, key_file=files.coordinator_key)  # Signs it, then delivers it.
    return result
  finally:
    transport.close()


if __name__ == '__main__':
  cli.run(main, import_tensorflow=True)

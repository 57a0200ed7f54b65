"""The federation's coordinator: the training program, with the rows at the institutions' nodes.

  python scripts/coordinator.py --config=configs/csv.py --config.data.schema_file=schema.json \
      --workdir=runs/federation --driver_api=127.0.0.1:9091 --ca=pki/ca.crt \
      --key=pki/coordinator/private.pem --nodes=pki/nodes

A `flower-superlink` must be running (see README "Deployment"); the nodes in
`--nodes` (one <institution>.pub each) connect to it with scripts/node.py.
Rounds, checkpoints and resume, the privacy ledger, metrics and the export
are the simulation's (scripts/train.py); rerunning the same command resumes.
After each round it rewrites <workdir>/status.json (round k/n, the nodes that
answered or dropped, ε spent, ETA). At the end it signs <workdir>/export
with --key and delivers it to every node, with that node's own metrics and
the privacy statement (each keeps them in <its workdir>/model/ once the
package verifies; a rerun delivers again to a node that missed it).

With --config.canary_audit.canaries=M (on the nodes too: the config is
agreed) the run is a one-run canary audit instead (tffaml.studies.canary_audit):
under record-level DP, node --config.canary_audit.institution=NAME adds M
canary records; under client-level DP (gaussian_fixed) this coordinator adds
M canary institutions. Nothing is exported; the script prints the claimed ε
against the audit's lower bound, writes <workdir>/canary_audit.json, and
exits 1 when the bound refutes the claim.
"""

import glob
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from tffaml import cli

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/csv.py', 'The agreed experiment config.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (resumed if it holds a run).', required=True)
_CHECKPOINT_KEY = cli.CheckpointKeyFlags()
_DRIVER_API = flags.DEFINE_string('driver_api', '127.0.0.1:9091', "The SuperLink's Driver API, HOST:PORT.")
_DRIVER_SERVER_NAME = flags.DEFINE_string(
    'driver_server_name', None, "The host name the SuperLink's certificate holds, when --driver_api dials"
    ' another (127.0.0.1): its TLS is checked for this name.')
_CA = flags.DEFINE_string('ca', None, 'The federation CA certificate (PEM).', required=True)
_KEY = flags.DEFINE_string('key', None, "The coordinator's Ed25519 private key (PEM).", required=True)
_NODES = flags.DEFINE_string('nodes', None, 'Directory of the registered nodes\' <institution>.pub keys.',
                             required=True)
_MIN_NODES = flags.DEFINE_integer('min_nodes', 1, 'Fewest updates a round needs; fewer stops the run.')
_WAIT = flags.DEFINE_float('wait', 600.0, 'Seconds to wait for every registered node to connect.')
_REPLY_TIMEOUT = flags.DEFINE_float('reply_timeout', 600.0,
                                    'Seconds a request waits for replies; later ones are dropped.')


def main(argv):
  del argv
  from tffaml.consortium import logs  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import messages  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import registry  # pylint: disable=g-import-not-at-top
  _node_keys()
  # Read again when scripts/keys.py changes the registry: a rotated key applies within the run.
  node_keys = registry.LiveKeys(_NODES.value)
  with open(_CA.value, 'rb') as f:
    root_certificates = f.read()
  from tffaml import runtime  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import coordinator  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import flower  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import messages  # pylint: disable=g-import-not-at-top
  from tffaml.training import program  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  coordinator.at_coordinator(config)
  logs.log(f'connecting to the SuperLink\'s Driver API at {_DRIVER_API.value}')
  transport = flower.FlowerTransport(_DRIVER_API.value, root_certificates=root_certificates,
                                     node_keys=node_keys, timeout=_REPLY_TIMEOUT.value, log=logs.log,
                                     server_name=_DRIVER_SERVER_NAME.value)
  try:
    logs.log(f'waiting for {len(node_keys)} nodes: {", ".join(node_keys)}')
    transport.wait_for(node_keys, timeout=_WAIT.value)
    federation = coordinator.Federation(transport, key=messages.load_private_key(_KEY.value),
                                        node_keys=node_keys, min_nodes=_MIN_NODES.value, log=logs.log)
    with runtime.local_runtime():
      if config.canary_audit.canaries:
        return _audit(config, federation)
      result = program.run(config, _WORKDIR.value, runtime=federation, checkpoint_key=_CHECKPOINT_KEY.key(),
                           log=logs.log)
      coordinator.deliver(federation, result, key_file=_KEY.value)
  finally:
    transport.close()
  logs.log(f'\nmodel:   {result.paths.export} (SavedModel, serving_default, signed with --key)'
           f'\nmetrics: {result.paths.metrics}'
           f'\nprivacy: {result.paths.privacy}')


def _node_keys() -> dict:
  """The registered nodes' public keys, by institution."""
  from tffaml import errors  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import messages  # pylint: disable=g-import-not-at-top
  node_keys = {os.path.basename(p)[:-len('.pub')]: messages.load_public_key(p)
               for p in sorted(glob.glob(os.path.join(_NODES.value, '*.pub')))}
  if not node_keys:
    raise errors.InputError(f'{_NODES.value}: no <institution>.pub keys; scripts/pki.py writes them.')
  return node_keys


def _check() -> None:
  """The refusals that need no TensorFlow (a refusal leaves nothing behind): the registry, the CA, the ranges."""
  from tffaml.config import values  # pylint: disable=g-import-not-at-top
  _node_keys()
  with open(_CA.value, 'rb'):
    pass
  values.check_values(_CONFIG.value)


def _audit(config, federation) -> None:
  """A canary audit of the run's DP (config.canary_audit): exit 1 when it refutes the claim."""
  from tffaml.studies import canary_audit  # pylint: disable=g-import-not-at-top
  result = canary_audit.audit_as_configured(config, runtime=federation, workdir=_WORKDIR.value)
  sys.exit(canary_audit.report(result, os.path.join(_WORKDIR.value, 'canary_audit.json')))


if __name__ == '__main__':
  cli.run(main, import_tensorflow=True, check=_check)

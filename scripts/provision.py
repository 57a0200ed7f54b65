"""Writes a consortium's startup kits: one folder per party, each holding only what that party needs.

  python scripts/provision.py --coordinator_host=coordinator.example --institutions=bank_a,bank_b,bank_c \
      --config=configs/csv.py [--config.x.y=...] --schema_file=schema.json --out_dir=kits

Writes under --out_dir (new or empty):
  coordinator/   for the coordinator's operator: ./start runs the SuperLink (Fleet API on
                 --coordinator_host:--fleet_port, Driver API on 127.0.0.1) and the coordinator
  <institution>/ for that institution's operator: ./start --data_dir=<its folder> runs its node
  ca/            the CA's key: keep it offline; it is in no kit
Each kit holds that party's secrets, the CA certificate, the public keys it
needs, the agreed config and schema and kit.json (every file's sha256);
`start` refuses a kit whose files changed. The TLS certificate names
--coordinator_host only: the name the banks connect to.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from tffaml import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The agreed config file[:preset] (with --config.x.y=...).')
_HOST = flags.DEFINE_string('coordinator_host', None, 'The name the banks reach the coordinator by (its certificate'
                            ' names it alone).', required=True)
_INSTITUTIONS = flags.DEFINE_list('institutions', None, 'The institutions: one kit each.', required=True)
_SCHEMA = flags.DEFINE_string('schema_file', None, 'The agreed schema.json (a csv_dir config needs one).')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where the kits go (new or empty).', required=True)
_FLEET_PORT = flags.DEFINE_integer('fleet_port', 9092, "The SuperLink's Fleet API port on --coordinator_host.")
_PUBLIC_KEYS = flags.DEFINE_string(
    'public_keys', None, "A folder of institutions' own node public keys (<institution>.pub, from scripts/pki.py"
    ' --node_key): their kits hold no private key; the other institutions\' key pairs are made here.')


def _agreement():
  """The agreed config as given: its file, preset and overrides (raw, as every party will pass them)."""
  from tffaml import errors  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import kits  # pylint: disable=g-import-not-at-top
  if _CONFIG.value is None:
    raise errors.InputError('--config: give the agreed config file (e.g. --config=configs/csv.py).')
  name = flags.FLAGS['config'].config_filename
  path, preset = (name.rsplit(':', 1) if ':' in os.path.basename(name) else (name, ''))
  overrides = tuple(a for a in sys.argv[1:] if a.startswith('--config.'))
  kits.check_overrides(overrides)
  config = _CONFIG.value
  if config.data.source == 'csv_dir' and not _SCHEMA.value:
    raise errors.InputError('--schema_file: a csv_dir config needs the agreed schema.json.')
  return kits.Agreement(config_file=path, preset=preset, overrides=overrides, values=kits.agreed_values(config))


def _check() -> None:
  from tffaml.config import values  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import kits  # pylint: disable=g-import-not-at-top
  kits.check_names(_HOST.value, _INSTITUTIONS.value)
  kits.own_public_keys(_PUBLIC_KEYS.value, _INSTITUTIONS.value)
  _agreement()
  values.check_values(_CONFIG.value)
  if _SCHEMA.value:
    with open(_SCHEMA.value, 'rb'):
      pass


def main(argv):
  del argv
  from tffaml.consortium import kits  # pylint: disable=g-import-not-at-top
  written = kits.provision(_OUT_DIR.value, host=_HOST.value, institutions=_INSTITUTIONS.value,
                           agreement=_agreement(), schema_file=_SCHEMA.value, fleet_port=_FLEET_PORT.value,
                           public_keys=_PUBLIC_KEYS.value)
  for party, kit in written.items():
    print(f'{party + ":":14}{kit}/  (give it to {party}\'s operator: {kit}/start)')
  print(f'{"CA key:":14}{os.path.join(_OUT_DIR.value, kits.CA, "ca.key")}  (keep it offline; it is in no kit)')


if __name__ == '__main__':
  cli.run(main, check=_check)

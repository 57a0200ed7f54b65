"""Admits, rotates or revokes an institution's node key while the federation runs (the coordinator's host).

  python scripts/keys.py admit  --nodes=pki/nodes --key_list=pki/authorized_nodes.csv \
      --institution=bank_d --public_key=bank_d.pub
  python scripts/keys.py rotate --nodes=pki/nodes --key_list=pki/authorized_nodes.csv \
      --institution=bank_a --public_key=bank_a_2026.pub
  python scripts/keys.py revoke --nodes=pki/nodes --key_list=pki/authorized_nodes.csv --institution=bank_b

--nodes is the coordinator's registry (scripts/coordinator.py --nodes) and
--key_list the SuperLink's --auth-list-public-keys: both are rewritten
atomically; the SuperLink (scripts/superlink.py) and the coordinator pick
the change up within seconds, without a restart. A rotated or revoked key's
next request is refused; the old key is kept in <nodes>/revoked/. An
institution makes its key on its own host (scripts/pki.py's node keys, or
`ssh-keygen -t ecdsa -b 384 -m PEM -f bank_d`) and sends only the .pub.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli

_ACTIONS = ('admit', 'rotate', 'revoke')
_NODES = flags.DEFINE_string('nodes', None, "The coordinator's registry: <institution>.pub keys.", required=True)
_KEY_LIST = flags.DEFINE_string('key_list', None, "The SuperLink's --auth-list-public-keys file.", required=True)
_INSTITUTION = flags.DEFINE_string('institution', None, 'The institution whose key changes.', required=True)
_PUBLIC_KEY = flags.DEFINE_string('public_key', None, "admit, rotate: the institution's new public key file.")


def main(argv):
  from tffaml import errors  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import registry  # pylint: disable=g-import-not-at-top
  action = argv[1] if len(argv) == 2 else ''
  if action not in _ACTIONS:
    raise errors.InputError(f'give one action: scripts/keys.py {"|".join(_ACTIONS)} --nodes=... (got {argv[1:]}).')
  if (action == 'revoke') == bool(_PUBLIC_KEY.value):
    raise errors.InputError('--public_key names the new key for admit and rotate, and is not given to revoke.')
  if action == 'revoke':
    kept = registry.revoke(_NODES.value, _KEY_LIST.value, _INSTITUTION.value)
    print(f'revoked {_INSTITUTION.value}; its key is kept in {kept}')
  else:
    path = getattr(registry, action)(_NODES.value, _KEY_LIST.value, _INSTITUTION.value, _PUBLIC_KEY.value)
    print(f'{action}: {_INSTITUTION.value} registered with {path}; {_KEY_LIST.value} rewritten')


if __name__ == '__main__':
  cli.run(main)

"""Writes a federation's credentials: CA and TLS certificate, coordinator and node keys.

  python scripts/pki.py --out_dir=pki --hosts=coordinator.example --institutions=bank_a,bank_b

Writes, under --out_dir (which must be empty or new):
  ca.crt                 every node gets it (--ca)
  ca.key                 secret; keep it offline (it signs the coordinator's certificate)
  server.pem, server.key the SuperLink's TLS certificate (for --hosts) and key (secret)
  superlink, .pub        the SuperLink's own authentication key pair (secret, coordinator's host)
  coordinator/           signing_key.pem (secret) signs plans, models and exports;
                         signing_key.pub.pem goes to every node and every bank
  nodes/<institution>    each node's private key (secret: that institution's host only)
  nodes/<institution>.pub   registered with the coordinator (--nodes) and the SuperLink
  authorized_nodes.csv   the SuperLink's --auth-list-public-keys

In a deployment each institution makes its own node key on its own host and
sends only the .pub; this writes them all for a demo or a test consortium.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where the credentials go (empty or new).', required=True)
_HOSTS = flags.DEFINE_list('hosts', ['127.0.0.1', 'localhost'], "The SuperLink's host names or addresses.")
_INSTITUTIONS = flags.DEFINE_list('institutions', None, 'Institution names (one node key each).',
                                  required=True)


def main(argv):
  del argv
  from tffaml.federation import credentials  # pylint: disable=g-import-not-at-top
  try:
    files = credentials.write_federation(_OUT_DIR.value, hosts=_HOSTS.value, institutions=_INSTITUTIONS.value)
  except FileExistsError as e:
    sys.exit(f'error: {e}')
  print(f'CA certificate:   {files.tls.ca_certificate}\nSuperLink TLS:    {files.tls.certificate}'
        f'\ncoordinator key:  {files.coordinator_key} (secret)\nnode keys:        {files.nodes}/'
        f'\nadmitted nodes:   {files.authorized_nodes}')


if __name__ == '__main__':
  cli.run(main)

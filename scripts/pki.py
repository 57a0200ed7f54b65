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
sends only the .pub:

  python scripts/pki.py --node_key=bank_a --out_dir=my_keys

writes my_keys/bank_a (secret: it never leaves the institution) and
my_keys/bank_a.pub (for scripts/provision.py --public_keys or scripts/keys.py
admit). Without --node_key this writes them all, for a demo or a test.

  python scripts/pki.py --cluster --out_dir=cluster_pki --hosts=worker1.lab,worker2.lab

writes instead the mutual TLS of a simulation spread over TFF workers
(scripts/worker.py --certificates, config.runtime.certificates):
  ca.crt                 every worker and the coordinator get it
  ca.key                 secret; keep it offline
  worker.pem, worker.key the workers' certificate (for --hosts) and key (secret, workers' hosts)
  coordinator.pem/.key   the coordinator's client certificate and key (secret, its host)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli

_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Where the credentials go (empty or new).', required=True)
_HOSTS = flags.DEFINE_list('hosts', ['127.0.0.1', 'localhost'], "The SuperLink's host names or addresses.")
_INSTITUTIONS = flags.DEFINE_list('institutions', None, 'Institution names (one node key each).')
_CLUSTER = flags.DEFINE_bool('cluster', False, "A TFF workers' cluster's mutual TLS instead (--hosts: the workers').")
_NODE_KEY = flags.DEFINE_string('node_key', None, "Only this institution's own node key pair (run at the"
                                ' institution: the private key never leaves it; send only the .pub).')


def main(argv):
  del argv
  if _CLUSTER.value:
    _cluster()
    return
  if _NODE_KEY.value:
    _node_key(_NODE_KEY.value)
    return
  if not _INSTITUTIONS.value:
    sys.exit('error: --institutions names the federation\'s institutions (or pass --cluster).')
  from tffaml.security import credentials  # pylint: disable=g-import-not-at-top
  try:
    files = credentials.write_federation(_OUT_DIR.value, hosts=_HOSTS.value, institutions=_INSTITUTIONS.value)
  except FileExistsError as e:
    sys.exit(f'error: {e}')
  print(f'CA certificate:   {files.tls.ca_certificate}\nSuperLink TLS:    {files.tls.certificate}'
        f'\ncoordinator key:  {files.coordinator_key} (secret)\nnode keys:        {files.nodes}/'
        f'\nadmitted nodes:   {files.authorized_nodes}')


def _node_key(name: str) -> None:
  from tffaml.consortium import kits  # pylint: disable=g-import-not-at-top
  from tffaml.security import credentials  # pylint: disable=g-import-not-at-top
  if not kits.is_institution_name(name):
    sys.exit(f'error: --node_key={name!r}: give the institution\'s name as the consortium agreed it (letters,'
             ' digits, _ . -), the name of its kit and its data folder.')
  try:
    private, public = credentials.write_node_key(_OUT_DIR.value, name)
  except FileExistsError as e:
    sys.exit(f'error: {e}')
  print(f'node key:         {private} (secret: it stays here; copy it into your kit once it arrives)'
        f'\npublic key:       {public} (send it to the coordinator: scripts/provision.py --public_keys,'
        ' or scripts/keys.py admit)')


def _cluster():
  from tffaml.security import tls  # pylint: disable=g-import-not-at-top
  try:
    files = tls.write_cluster_tls(_OUT_DIR.value, hosts=_HOSTS.value)
  except FileExistsError as e:
    sys.exit(f'error: {e}')
  print(f'CA certificate:   {files.ca_certificate} (workers and coordinator)\nworkers:          '
        f'{files.worker_certificate}, {files.worker_key} (secret)\ncoordinator:      '
        f'{files.coordinator_certificate}, {files.coordinator_key} (secret)')


if __name__ == '__main__':
  cli.run(main)

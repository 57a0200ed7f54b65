"""An institution's node: serves its own folder to the federation over Flower (TLS, node key).

  python scripts/node.py --config=configs/csv.py --config.data.schema_file=schema.json \
      --data_dir=/data/bank_a --workdir=/var/lib/tffaml/bank_a \
      --superlink=coordinator.example:9092 --ca=pki/ca.crt \
      --key=pki/nodes/bank_a.key --coordinator_key=pki/coordinator/public.pem

An AML bank's node reads its AMLworld transactions file instead
(`--config=configs/aml.py --transactions=FILE --bank=CODE`, its
institution named bank_CODE): its rows are the transactions it sends or
receives, split in time as the simulation splits them.

The node reads only `--data_dir` ({train,test}.csv) or `--transactions`, runs the client code
installed here, and answers only requests the coordinator signed for the
config given here (same file and overrides as the coordinator's). Its DP
noise seed stays in `--workdir/secret/noise_seed`, and its own privacy
ledger in `--workdir/privacy_ledger.json`: with a secret seed it serves one
coordinator run per agreed config and never answers a noised release twice
for different inputs (remove the ledger to grant a new budget). With
`config.federation.secure_aggregation` its updates leave it only masked
(SecAgg+). It appends what it answers to `--workdir/answers.jsonl` (never
rewritten), and keeps the coordinator's delivered model, once it verifies
against --coordinator_key, in `--workdir/model/` (export/ for
scripts/score.py, its own metrics.json, privacy.txt). Stop it with SIGTERM
or Ctrl-C.
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

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/csv.py', 'The agreed experiment config.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, "This institution's folder: train.csv, test.csv.")
_TRANSACTIONS = flags.DEFINE_string('transactions', None, "Instead: this bank's AMLworld transactions CSV.")
_BANK = flags.DEFINE_string('bank', None, "With --transactions: this bank's code in it.")
_WORKDIR = flags.DEFINE_string('workdir', None, "The node's own state: its DP noise seed and privacy ledger.",
                               required=True)
_SUPERLINK = flags.DEFINE_string('superlink', '127.0.0.1:9092', "The SuperLink's Fleet API, HOST:PORT.")
_CA = flags.DEFINE_string('ca', None, 'The federation CA certificate (PEM).', required=True)
_KEY = flags.DEFINE_string('key', None, "This node's private key (OpenSSH EC; its .pub beside it).",
                           required=True)
_COORDINATOR_KEY = flags.DEFINE_string('coordinator_key', None, "The coordinator's public key (PEM).",
                                       required=True)


def main(argv):
  del argv
  config = _CONFIG.value
  folder = _own_data(config)  # Before TFF is imported: a refusal leaves nothing behind.
  import secrets  # pylint: disable=g-import-not-at-top
  from tffaml import runtime  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import delivery  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import flower  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import logs  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import messages  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import node as node_lib  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import status  # pylint: disable=g-import-not-at-top
  from tffaml.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  key = messages.load_private_key(_KEY.value)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  noise_seed = workdir_lib.noise_seed(_WORKDIR.value, config.privacy.noise_seed, lambda: secrets.randbits(62))
  with open(_CA.value, 'rb') as f:
    root_certificates = f.read()
  with runtime.local_runtime():
    node = node_lib.Node(config, folder=folder, bank=_BANK.value or '', key=key, noise_seed=noise_seed,
                         coordinator_key=messages.load_public_key(_COORDINATOR_KEY.value),
                         ledger=node_lib.Ledger(os.path.join(_WORKDIR.value, 'privacy_ledger.json')),
                         log=logs.log, inbox=delivery.Inbox(_WORKDIR.value, _COORDINATOR_KEY.value),
                         answers=status.AnswerLog(os.path.join(_WORKDIR.value, status.ANSWERS_FILE)))
    logs.log(f'node {node.name}: {len(node.institution.train)} training rows; config {node.agreement[:12]}…;'
             f' connecting to {_SUPERLINK.value}')
    flower.run_node(node, key, superlink=_SUPERLINK.value, root_certificates=root_certificates,
                    authentication_keys=(key, key.public_key()), ca=f'--ca={_CA.value}',
                    key_file=_KEY.value)


def _own_data(config) -> str:
  """Points `config.data` at this institution's rows; returns its folder ('' for a transactions file)."""
  from tffaml import errors  # pylint: disable=g-import-not-at-top
  if bool(_DATA_DIR.value) == bool(_TRANSACTIONS.value):
    raise errors.InputError('give the node its rows: --data_dir=<its folder>, or --transactions=<its AMLworld'
                            ' file> with --bank=<its code>.')
  if _TRANSACTIONS.value:
    if config.data.source != 'amlworld' or not _BANK.value:
      raise errors.InputError('--transactions needs an AML config (config.data.source=amlworld, e.g.'
                              ' configs/aml.py) and --bank=<this bank\'s code>.')
    config.data.path = os.path.abspath(_TRANSACTIONS.value)
    return ''
  folder = os.path.abspath(_DATA_DIR.value)
  config.data.source, config.data.dir = 'csv_dir', os.path.dirname(folder)
  return folder


def _check() -> None:
  """The refusals that need no TensorFlow: which rows are this node's, and the config's ranges."""
  from tffaml.config import values  # pylint: disable=g-import-not-at-top
  _own_data(_CONFIG.value)
  values.check_values(_CONFIG.value)


if __name__ == '__main__':
  cli.run(main, import_tensorflow=True, check=_check)

"""One TFF worker of a simulation spread over several machines.

  python scripts/worker.py --port=8001 --data_dir=banks_a_to_m --certificates=cluster_pki
  python scripts/worker.py --port=8001 --data_dir=/tmp/shards --insecure   # this machine only

Serves the institutions whose files are under --data_dir: the
bring-your-own-data layout (<institution>/{train,test}.csv and schema.json,
or --schema_file), or per-institution shard files with their manifest.json
(as config.data.stream writes them). The coordinator is scripts/train.py
with --config.runtime.workers=host:port,host:port.

TFF's worker_binary authenticates nobody, runs any graph it is sent and
listens on every interface. With --certificates (scripts/pki.py --cluster),
clients reach it only through mutual TLS on --host:--port, and the
worker_binary's own port (printed) must be firewalled from other machines.
--insecure serves the worker_binary itself on --port: for one machine or a
private network you trust.

Stops on SIGTERM or Ctrl-C, and the worker_binary with it (also when this
process is killed).
"""

import os
import shutil
import sys
import tempfile
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top

from tffaml import cli
from tffaml import errors
from tffaml import runtime
from tffaml.security import tls

_PORT = flags.DEFINE_integer('port', None, 'The port clients connect to.', required=True)
_DATA_DIR = flags.DEFINE_string('data_dir', None, "The institutions' files this worker holds.", required=True)
_SCHEMA_FILE = flags.DEFINE_string('schema_file', '', 'The schema (default: <data_dir>/schema.json).')
_SERVE_DIR = flags.DEFINE_string('serve_dir', '', 'Where the worker keeps its copy (new or empty; default:'
                                 ' a temporary directory, removed when it stops).')
_HOST = flags.DEFINE_string('host', '0.0.0.0', 'With --certificates: the address the TLS port listens on.')
_CERTIFICATES = flags.DEFINE_string('certificates', '', 'scripts/pki.py --cluster\'s directory: mutual TLS.')
_INSECURE = flags.DEFINE_bool('insecure', False, 'Serve without TLS or authentication (one machine or a'
                              ' trusted private network only).')


def _certificates() -> Optional[tls.ClusterTls]:
  """--certificates, read (missing files refused), or None with --insecure."""
  if bool(_CERTIFICATES.value) == _INSECURE.value:
    raise errors.InputError('give --certificates=DIR (mutual TLS; scripts/pki.py --cluster makes them) or'
                            ' --insecure (worker_binary in the clear, authenticating nobody), not both.')
  certificates = tls.ClusterTls(_CERTIFICATES.value) if _CERTIFICATES.value else None
  if certificates:
    certificates.read('worker_key', 'worker_certificate', 'ca_certificate')  # Missing: refused now.
  return certificates


def check() -> None:
  """The security flags, certificate files and port, before TensorFlow loads (`cli.run`)."""
  _certificates()
  runtime.check_port_free(_PORT.value)


def main(argv):
  del argv
  from tffaml.cluster import worker  # pylint: disable=g-import-not-at-top
  certificates = _certificates()
  serve_dir = _SERVE_DIR.value or tempfile.mkdtemp(prefix='tffaml_worker_')
  try:
    worker.prepare(_DATA_DIR.value, serve_dir, schema_file=_SCHEMA_FILE.value)
    worker.serve(serve_dir, port=_PORT.value, host=_HOST.value, certificates=certificates)
  except KeyboardInterrupt:
    pass
  finally:
    if not _SERVE_DIR.value:
      shutil.rmtree(serve_dir, ignore_errors=True)


if __name__ == '__main__':
  cli.run(main, import_tensorflow=True, check=check)

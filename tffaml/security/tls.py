"""Mutual TLS between a coordinator and its TFF workers, by grpc's own TLS.

TFF's `worker_binary` serves gRPC in the clear, without authentication, on
every interface, and runs any graph it is sent. `scripts/worker.py` puts a
pass-through in front of it: a grpc server that accepts only clients whose
certificate the cluster's CA signed (`require_client_auth`), and forwards the
executor service's calls, as bytes, to the worker on the same machine. The
coordinator connects with its own certificate (`secure_channel`). The TLS is
grpc's (BoringSSL); nothing here implements crypto or the RPC protocol.

    write_cluster_tls(dir, hosts=['worker1.lab', '10.0.0.5'])
      ca.crt, ca.key (keep offline), worker.pem/.key (the workers' server
      certificate, for `hosts`), coordinator.pem/.key (the client certificate)

The worker's own port stays in the clear: firewall it from everything but
the machine itself (see README, "Several machines").
"""

import dataclasses
import os
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
import grpc

from tffaml import errors
from tffaml.security import credentials

_SERVICE = '/tensorflow_federated.v0.ExecutorGroup/'  # The only calls forwarded.
# TFF's own channel limits: values (models, datasets' graphs) go in one message.
MAX_MESSAGE_BYTES = 2 * 1000 * 1000 * 1000
CHANNEL_OPTIONS = (
    ('grpc.max_message_length', MAX_MESSAGE_BYTES),
    ('grpc.max_receive_message_length', MAX_MESSAGE_BYTES),
    ('grpc.max_send_message_length', MAX_MESSAGE_BYTES),
)


@dataclasses.dataclass(frozen=True)
class ClusterTls:
  """The files of `write_cluster_tls` in `directory`."""

  directory: str

  def _path(self, name: str) -> str:
    return os.path.join(self.directory, name)

  ca_certificate = property(lambda self: self._path('ca.crt'))
  ca_key = property(lambda self: self._path('ca.key'))
  worker_certificate = property(lambda self: self._path('worker.pem'))
  worker_key = property(lambda self: self._path('worker.key'))
  coordinator_certificate = property(lambda self: self._path('coordinator.pem'))
  coordinator_key = property(lambda self: self._path('coordinator.key'))

  def read(self, *names: str) -> list[bytes]:
    """The named files' bytes; a missing one is refused, naming it."""
    out = []
    for name in names:
      path = getattr(self, name)
      if not os.path.isfile(path):
        raise errors.InputError(f'{path}: not found; make the cluster\'s certificates with'
                                ' scripts/pki.py --cluster --out_dir=DIR --hosts=<worker hosts>.')
      with open(path, 'rb') as f:
        out.append(f.read())
    return out


def write_cluster_tls(directory: str, *, hosts: Sequence[str], days: int = 365) -> ClusterTls:
  """A CA, the workers' server certificate for `hosts` and the coordinator's client certificate."""
  if not hosts:
    raise ValueError("hosts must name the workers' machines (DNS names or IP addresses).")
  os.makedirs(directory, exist_ok=True)
  files = ClusterTls(directory)
  names = ('ca_certificate', 'ca_key', 'worker_certificate', 'worker_key', 'coordinator_certificate',
           'coordinator_key')
  for name in names:
    if os.path.exists(getattr(files, name)):
      raise FileExistsError(f'{getattr(files, name)} exists; credentials are never overwritten.')
  ca_key = ec.generate_private_key(credentials.CURVE())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'tffaml cluster CA')])
  ca = credentials.make_certificate(ca_name, ca_key.public_key(), ca_name, ca_key, days=days, ca=True)
  pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
  credentials.write_file(files.ca_key, credentials.pem_key(ca_key, pkcs8), private=True)
  credentials.write_file(files.ca_certificate, ca.public_bytes(pem), private=False)
  for role, role_hosts in (('worker', hosts), ('coordinator', ())):
    key = ec.generate_private_key(credentials.CURVE())
    certificate = credentials.make_certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f'tffaml {role}')]), key.public_key(),
        ca_name, ca_key, days=days, ca=False, hosts=role_hosts)
    credentials.write_file(getattr(files, f'{role}_key'), credentials.pem_key(key, pkcs8), private=True)
    credentials.write_file(getattr(files, f'{role}_certificate'), certificate.public_bytes(pem), private=False)
  return files


class _Forward(grpc.GenericRpcHandler):
  """Forwards the executor service's unary calls, as bytes, to `channel`; refuses every other call."""

  def __init__(self, channel: grpc.Channel):
    self._channel = channel

  def service(self, handler_call_details):
    method = handler_call_details.method
    if not method.startswith(_SERVICE):
      return None  # grpc answers UNIMPLEMENTED.
    call = self._channel.unary_unary(method)  # No (de)serializers: bytes through.

    def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
      try:
        return call(request)  # The coordinator sets no deadline: a round takes what it takes.
      except grpc.RpcError as e:
        context.abort(e.code(), e.details())

    return grpc.unary_unary_rpc_method_handler(forward)


def start_proxy(*, listen: str, worker_port: int, files: ClusterTls, threads: int = 16) -> grpc.Server:
  """Serves mutual TLS on `listen` (host:port), forwarding to the worker on localhost:`worker_port`."""
  key, certificate, ca = files.read('worker_key', 'worker_certificate', 'ca_certificate')
  channel = grpc.insecure_channel(f'localhost:{worker_port}', options=CHANNEL_OPTIONS)
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), handlers=[_Forward(channel)],
                       options=CHANNEL_OPTIONS)
  server_credentials = grpc.ssl_server_credentials([(key, certificate)], root_certificates=ca,
                                                   require_client_auth=True)
  if not server.add_secure_port(listen, server_credentials):
    raise errors.InputError(f'cannot listen on {listen} (in use, or not an address of this machine).')
  server.start()
  return server


def channel(address: str, files: Optional[ClusterTls]) -> grpc.Channel:
  """The coordinator's channel to a worker: mutual TLS with `files`, in the clear without."""
  if files is None:
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
  key, certificate, ca = files.read('coordinator_key', 'coordinator_certificate', 'ca_certificate')
  return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, certificate),
                             options=CHANNEL_OPTIONS)

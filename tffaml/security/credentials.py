"""Credentials of a federation of real nodes: TLS certificates and node keys.

Flower (`flwr` 1.12) carries the federation between institutions' machines.
Its SuperLink (the coordinator's endpoint) serves TLS with a certificate
signed by the consortium's CA, and admits only SuperNodes (one per
institution) whose elliptic-curve public key is on its list: each node signs
its requests with its private key, which never leaves the institution.

    write_tls(dir, hosts=['coordinator.example'])  # ca.crt, server.pem, server.key (+ ca.key)
    write_node_key(dir, 'bank_a')                   # bank_a (private), bank_a.pub
    write_authorized_nodes(dir + '/nodes.csv', [dir + '/bank_a.pub', ...])

Everything is made with `cryptography`; nothing here implements crypto.
Files are written atomically, private ones readable by their owner only, and
existing files are never overwritten.
"""

import dataclasses
import datetime
import ipaddress
import os
from typing import Optional, Sequence

from cryptography import exceptions as cryptography_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tffaml import errors
from tffaml import io
from tffaml.security import signing

# Flower's node authentication derives shared secrets on this curve.
CURVE = ec.SECP384R1


@dataclasses.dataclass(frozen=True)
class TlsFiles:
  ca_certificate: str  # Give to every node (flower-supernode --root-certificates).
  ca_key: str  # Keep offline: it signs the coordinator's certificates.
  certificate: str  # The SuperLink's (--ssl-certfile), signed by the CA.
  key: str  # The SuperLink's private key (--ssl-keyfile).


def _refuse_existing(*paths: str) -> None:
  """Before any file of a set is written: none of them may exist."""
  for path in paths:
    if os.path.exists(path):
      raise FileExistsError(f'{path} exists; credentials are never overwritten.')


def write_file(path: str, data: bytes, *, private: bool) -> str:
  _refuse_existing(path)
  with io.atomic_path(path) as tmp:
    if private:
      os.chmod(tmp, 0o600)
    with open(tmp, 'wb') as f:
      f.write(data)
  return path


def pem_key(key: ec.EllipticCurvePrivateKey, form: serialization.PrivateFormat) -> bytes:
  return key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
  try:
    return x509.IPAddress(ipaddress.ip_address(host))
  except ValueError:
    return x509.DNSName(host)


def make_certificate(subject: x509.Name, public_key, issuer: x509.Name, signer, *, days: int, ca: bool,
                 hosts: Sequence[str] = ()) -> x509.Certificate:
  now = datetime.datetime.now(datetime.timezone.utc)
  builder = (x509.CertificateBuilder()
             .subject_name(subject)
             .issuer_name(issuer).public_key(public_key).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
  if hosts:
    builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
  return builder.sign(signer, hashes.SHA256())


def _tls_files(out_dir: str) -> TlsFiles:
  return TlsFiles(*(os.path.join(out_dir, n) for n in ('ca.crt', 'ca.key', 'server.pem', 'server.key')))


def write_tls(out_dir: str, *, hosts: Sequence[str], days: int = 365) -> TlsFiles:
  """A CA and the coordinator's certificate for `hosts` (names or IP addresses)."""
  if not hosts:
    raise ValueError('hosts must name the coordinator (a DNS name or an IP address).')
  os.makedirs(out_dir, exist_ok=True)
  files = _tls_files(out_dir)
  _refuse_existing(*dataclasses.astuple(files))
  ca_key, key = ec.generate_private_key(CURVE()), ec.generate_private_key(CURVE())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'tffaml federation CA')])
  ca = make_certificate(ca_name, ca_key.public_key(), ca_name, ca_key, days=days, ca=True)
  server = make_certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]), key.public_key(),
                        ca_name, ca_key, days=days, ca=False, hosts=hosts)
  pem = serialization.Encoding.PEM
  write_file(files.ca_key, pem_key(ca_key, serialization.PrivateFormat.PKCS8), private=True)
  write_file(files.key, pem_key(key, serialization.PrivateFormat.PKCS8), private=True)
  write_file(files.ca_certificate, ca.public_bytes(pem), private=False)
  write_file(files.certificate, server.public_bytes(pem), private=False)
  return files


def write_node_key(out_dir: str, name: str) -> tuple[str, str]:
  """An institution's node key pair in OpenSSH form: (private, public) paths."""
  os.makedirs(out_dir, exist_ok=True)
  private, public = os.path.join(out_dir, name), os.path.join(out_dir, f'{name}.pub')
  _refuse_existing(private, public)
  key = ec.generate_private_key(CURVE())
  write_file(private, pem_key(key, serialization.PrivateFormat.OpenSSH), private=True)
  write_file(public, key.public_key().public_bytes(
      serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b'\n', private=False)
  return private, public


def write_authorized_nodes(path: str, public_keys: Sequence[str]) -> str:
  """The SuperLink's list of admitted nodes (--auth-list-public-keys), one key a line."""
  return write_file(path, authorized_nodes(public_keys), private=False)


def authorized_nodes(public_keys: Sequence[str]) -> bytes:
  """The content of a SuperLink's list of the node keys in the files `public_keys` (each checked)."""
  lines = []
  for key_file in public_keys:
    with open(key_file, 'rb') as f:
      data = f.read().strip()
    try:
      key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, cryptography_exceptions.UnsupportedAlgorithm):
      raise errors.InputError(f'{key_file}: not an OpenSSH public key (a node\'s {{name}}.pub from'
                              ' write_node_key); give each node\'s public key, never a private one.') from None
    # Another key type stops the SuperLink at start without naming the file; a key on another
    # curve loads, but cannot derive a shared secret with the SuperLink's CURVE key.
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, CURVE)):
      raise errors.InputError(f'{key_file}: not a {CURVE.name} EC key, which Flower\'s node authentication'
                              ' needs; write each node\'s key with write_node_key (scripts/pki.py).')
    lines.append(data)
  return b'\n'.join(lines) + b'\n'


@dataclasses.dataclass(frozen=True)
class FederationFiles:
  """A local federation's credentials (`write_federation`): who keeps which file."""

  tls: TlsFiles
  superlink_key: str  # The SuperLink's own node-authentication key pair (coordinator's host).
  coordinator_key: str  # Signs plans, global models and exports (secret, coordinator's host).
  coordinator_public_key: str  # Every node and every bank that loads the models gets it.
  nodes: str  # <institution> (secret, that institution's host only) and <institution>.pub.
  authorized_nodes: str  # The SuperLink's --auth-list-public-keys.


def federation_files(out_dir: str) -> FederationFiles:
  """The files `write_federation` wrote under `out_dir` (checked to exist)."""
  files = FederationFiles(
      tls=_tls_files(out_dir),
      superlink_key=os.path.join(out_dir, 'superlink'),
      coordinator_key=os.path.join(out_dir, 'coordinator', signing.PRIVATE_KEY_FILE),
      coordinator_public_key=os.path.join(out_dir, 'coordinator', signing.PUBLIC_KEY_FILE),
      nodes=os.path.join(out_dir, 'nodes'), authorized_nodes=os.path.join(out_dir, 'authorized_nodes.csv'))
  missing = [p for p in (*dataclasses.astuple(files.tls), files.superlink_key, files.coordinator_key,
                         files.authorized_nodes) if not os.path.exists(p)]
  if missing:
    raise errors.InputError(f'{out_dir}: missing {", ".join(missing)}; write credentials into a new'
                            ' directory (scripts/pki.py).')
  return files


def write_federation(out_dir: str, *, hosts: Sequence[str], institutions: Sequence[str]) -> FederationFiles:
  """Every credential of a federation run from one place (a demo, or a coordinator's part).

  In a deployment each institution writes its own node key on its own host
  (`write_node_key`) and sends only the .pub; here all are made together.
  """
  nodes = os.path.join(out_dir, 'nodes')
  if os.path.isdir(out_dir) and os.listdir(out_dir):  # Never half a set of credentials.
    raise FileExistsError(f'{out_dir} is not empty; credentials are never overwritten: give a new directory.')
  tls = write_tls(out_dir, hosts=hosts)
  superlink_key, _ = write_node_key(out_dir, 'superlink')
  private, public = signing.generate_keys(os.path.join(out_dir, 'coordinator'))
  node_keys = [write_node_key(nodes, name)[1] for name in institutions]
  authorized = write_authorized_nodes(os.path.join(out_dir, 'authorized_nodes.csv'), node_keys)
  return FederationFiles(tls=tls, superlink_key=superlink_key, coordinator_key=private,
                         coordinator_public_key=public, nodes=nodes, authorized_nodes=authorized)


EXPIRY_WARNING_DAYS = 30  # A party is warned this long before its certificate stops every connection.


def check_expiry(path: str, *, now: Optional[datetime.datetime] = None) -> Optional[str]:
  """A warning line when the certificate at `path` expires within 30 days, else None; refuses an expired one.

  An expired CA or SuperLink certificate fails every TLS handshake with a
  message that does not say why: the parties' `start` checks first.
  """
  with open(path, 'rb') as f:
    certificate = x509.load_pem_x509_certificate(f.read())
  now = now or datetime.datetime.now(datetime.timezone.utc)
  expires = certificate.not_valid_after_utc
  if expires <= now:
    raise errors.InputError(f'{path}: the certificate expired on {expires:%Y-%m-%d}; every TLS connection would'
                            ' fail: provision new credentials (scripts/provision.py) before starting.')
  if expires - now <= datetime.timedelta(days=EXPIRY_WARNING_DAYS):
    return (f'warning: {path} expires on {expires:%Y-%m-%d} ({(expires - now).days} days): provision new'
            ' credentials (scripts/provision.py) before then.')
  return None

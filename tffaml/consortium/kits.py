"""Startup kits: one folder per party of a consortium, holding what that party needs and nothing else.

`provision` (scripts/provision.py) writes, under an empty out_dir:
  ca/                    the CA's key and certificate: keep offline; in no kit
  coordinator/           the SuperLink's TLS key and certificate, its node-authentication key pair,
                         the coordinator's signing key pair, the admitted node keys (nodes/*.pub,
                         authorized_nodes.csv)
  <institution>/         its node key pair, the coordinator's signing public key
and in every kit the CA certificate, the agreed config (config.py, its
preset and overrides in kit.json, the resolved values in config.json), the
schema, `kit.json` (the party, the coordinator's host and every file's
sha256) and an executable `start` (scripts/start.py) that runs the party.
Every path a kit names is relative to the kit, so a party may move its
folder anywhere.
"""

import dataclasses
import ipaddress
import json
import os
import re
import shutil
import stat
import sys
from typing import Callable, Optional, Sequence

from tffaml import errors
from tffaml import io
from tffaml.security import credentials
from tffaml.security import signing

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COORDINATOR, CA = 'coordinator', 'ca'
KIT_FILE, START, CONFIG_FILE, CONFIG_JSON, SCHEMA = 'kit.json', 'start', 'config.py', 'config.json', 'schema.json'
COORDINATOR_PUBLIC_KEY = 'coordinator.pub.pem'  # In a bank's kit: checks what the coordinator signs.
_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
# Where a party's own rows are: the kit sets the schema, each party its rows.
_LOCAL_OVERRIDES = ('--config.data.dir=', '--config.data.schema_file=', '--config.data.path=')


@dataclasses.dataclass(frozen=True)
class Agreement:
  """The agreed config: a config file, its preset, overrides, and the values they resolve to."""

  config_file: str
  preset: str
  overrides: tuple[str, ...]  # `--config.x.y=value`, as given to provision.
  values: dict  # The resolved config (config.to_json_best_effort), data.schema_file as in a kit.


@dataclasses.dataclass(frozen=True)
class Kit:
  """A party's kit as `load` read and checked it."""

  dir: str
  party: str  # 'coordinator' or the institution's name.
  host: str  # The coordinator's host: the SuperLink's certificate names it.
  fleet_port: int
  preset: str
  overrides: tuple[str, ...]

  def path(self, *parts: str) -> str:
    return os.path.join(self.dir, *parts)

  def config_args(self) -> list[str]:
    """The flags that give scripts/node.py and scripts/coordinator.py the agreed config."""
    config = self.path(CONFIG_FILE) + (f':{self.preset}' if self.preset else '')
    schema = [f'--config.data.schema_file={self.path(SCHEMA)}'] if os.path.exists(self.path(SCHEMA)) else []
    return [f'--config={config}', *self.overrides, *schema]


def _is_host(host: str) -> bool:
  """A DNS name or an IP address, without port or scheme."""
  try:
    ipaddress.ip_address(host)
    return True
  except ValueError:
    return bool(host) and not any(c in host for c in ':/[] ')


def is_institution_name(name: str) -> bool:
  return bool(_NAME.match(name)) and name not in (COORDINATOR, CA)


def check_names(host: str, institutions: Sequence[str]) -> None:
  if not _is_host(host):
    raise errors.InputError(f'--coordinator_host={host!r}: give the name (or address) the banks reach the'
                            ' coordinator by, without a port or scheme (e.g. coordinator.example).')
  bad = [n for n in institutions if not is_institution_name(n)]
  if bad or not institutions or len(set(institutions)) != len(institutions):
    raise errors.InputError(f'--institutions={",".join(institutions)}: give distinct names of letters, digits,'
                            f' _ . - (not {COORDINATOR!r} or {CA!r}); each names its kit and its data folder.')


def check_overrides(overrides: Sequence[str]) -> None:
  for arg in overrides:
    if '=' not in arg:
      raise errors.InputError(f'{arg}: give each config override as --config.x.y=value.')
    if arg.startswith(_LOCAL_OVERRIDES):
      raise errors.InputError(f'{arg}: says where one party\'s rows are; give the schema with --schema_file,'
                              ' and each bank its rows when it starts (start --data_dir=...).')


def own_public_keys(public_keys: Optional[str], institutions: Sequence[str]) -> dict[str, str]:
  """The institutions' own node public keys in `public_keys` (<institution>.pub, checked), by institution."""
  if not public_keys:
    return {}
  found = {n: os.path.join(public_keys, f'{n}.pub') for n in institutions
           if os.path.exists(os.path.join(public_keys, f'{n}.pub'))}
  if not found:
    raise errors.InputError(f'--public_keys={public_keys}: holds no <institution>.pub of {", ".join(institutions)};'
                            ' each institution writes its own with scripts/pki.py --node_key=<institution>.')
  credentials.authorized_nodes(list(found.values()))  # One message for a file that is not such a key.
  return found


def provision(out_dir: str, *, host: str, institutions: Sequence[str], agreement: Agreement,
              schema_file: Optional[str], fleet_port: int, public_keys: Optional[str] = None) -> dict[str, str]:
  """Writes the kits (module docstring); returns each party's kit folder, by party.

  `public_keys`: a folder of institutions' own node public keys
  (<institution>.pub): their kits then hold no private key, which never
  left the institution; the others' key pairs are made here.
  """
  check_names(host, institutions)
  check_overrides(agreement.overrides)
  own = own_public_keys(public_keys, institutions)
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise errors.InputError(f'--out_dir={out_dir} is not empty; kits hold fresh secrets: give a new folder.')
  staging = os.path.join(out_dir, '.credentials')  # Every file moves into one kit, or ca/.
  files = credentials.write_federation(staging, hosts=[host], institutions=institutions)
  _use_own_keys(files, own, institutions)
  kits = {COORDINATOR: _coordinator_kit(out_dir, files, institutions)}
  for name in institutions:
    key_pair = {f'{name}.pub': os.path.join(files.nodes, f'{name}.pub')}
    if name not in own:
      key_pair[name] = os.path.join(files.nodes, name)
    kits[name] = _move(out_dir, name, {**key_pair, COORDINATOR_PUBLIC_KEY: files.coordinator_public_key,
                                       'ca.crt': files.tls.ca_certificate}, keep=('ca.crt', COORDINATOR_PUBLIC_KEY))
  _move(out_dir, CA, {'ca.key': files.tls.ca_key, 'ca.crt': files.tls.ca_certificate})
  shutil.rmtree(staging)
  for party, kit in kits.items():
    _write_agreed(kit, party, agreement, schema_file, host=host, fleet_port=fleet_port)
  return kits


def _use_own_keys(files: credentials.FederationFiles, own: dict[str, str], institutions: Sequence[str]) -> None:
  """Replaces the staged key pairs of institutions that sent their own public key (the private ones go)."""
  if not own:
    return
  for name, public in own.items():
    os.remove(os.path.join(files.nodes, name))
    shutil.copyfile(public, os.path.join(files.nodes, f'{name}.pub'))
  os.remove(files.authorized_nodes)
  credentials.write_authorized_nodes(files.authorized_nodes,
                                     [os.path.join(files.nodes, f'{n}.pub') for n in institutions])


def _coordinator_kit(out_dir: str, files: credentials.FederationFiles, institutions: Sequence[str]) -> str:
  tls = files.tls
  moves = {'ca.crt': tls.ca_certificate, 'server.pem': tls.certificate, 'server.key': tls.key,
           'superlink': files.superlink_key, 'superlink.pub': files.superlink_key + '.pub',
           signing.PRIVATE_KEY_FILE: files.coordinator_key, signing.PUBLIC_KEY_FILE: files.coordinator_public_key,
           'authorized_nodes.csv': files.authorized_nodes}
  moves.update({f'nodes/{n}.pub': os.path.join(files.nodes, f'{n}.pub') for n in institutions})
  # The banks' copies of the public files are taken before these move.
  return _move(out_dir, COORDINATOR, moves, keep=('ca.crt', signing.PUBLIC_KEY_FILE) + tuple(
      f'nodes/{n}.pub' for n in institutions))


def _move(out_dir: str, party: str, moves: dict[str, str], keep: Sequence[str] = ()) -> str:
  """Moves (or, for `keep`, copies: other kits need them too) files into `out_dir/party`."""
  kit = os.path.join(out_dir, party)
  for name, source in moves.items():
    target = os.path.join(kit, name)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    (shutil.copy2 if name in keep else os.replace)(source, target)
  return kit


def _write_agreed(kit: str, party: str, agreement: Agreement, schema_file: Optional[str], *, host: str,
                  fleet_port: int) -> None:
  """The agreed config and schema, `start`, and kit.json with every file's sha256."""
  shutil.copyfile(agreement.config_file, os.path.join(kit, CONFIG_FILE))
  io.write_json(os.path.join(kit, CONFIG_JSON), agreement.values)
  if schema_file:
    shutil.copyfile(schema_file, os.path.join(kit, SCHEMA))
  _write_start(os.path.join(kit, START), party)
  listed = sorted(p for p in (os.path.relpath(os.path.join(d, f), kit) for d, _, fs in os.walk(kit) for f in fs)
                  if not _rotatable(p, party))
  io.write_json(os.path.join(kit, KIT_FILE), {
      'party': party, 'coordinator_host': host, 'fleet_port': fleet_port, 'preset': agreement.preset,
      'overrides': list(agreement.overrides),
      'files': {p: signing.file_digest(os.path.join(kit, p)) for p in listed}})


def _rotatable(path: str, party: str) -> bool:
  """Node keys, which change after provisioning (scripts/keys.py admit|rotate|revoke): not in kit.json's hashes.

  The hashes hold what every party must agree on (config, schema, start, the
  CA certificate, the coordinator's public key); a bank's own key pair and the
  coordinator's registry of node keys are rotated without new kits.
  """
  if party == COORDINATOR:
    return path == 'authorized_nodes.csv' or path.startswith('nodes' + os.sep)
  return path in (party, f'{party}.pub')


def _write_start(path: str, party: str) -> None:
  """The kit's launcher: scripts/start.py of the tffaml installed here (TFFAML_REPO, TFFAML_PYTHON)."""
  usage = ('./start [--workdir=W] [--driver_port=9091] [-- coordinator.py flags]' if party == COORDINATOR
           else './start --data_dir=<its folder, named ' + party + '> [--workdir=W] [-- node.py flags]')
  text = (f'#!/bin/sh\n# {party}\'s startup kit: {usage}\n'
          '# The tffaml installed here runs it; set TFFAML_REPO and TFFAML_PYTHON where it lives elsewhere.\n'
          f'exec "${{TFFAML_PYTHON:-{sys.executable}}}" "${{TFFAML_REPO:-{_REPO}}}/scripts/start.py" \\\n'
          '    --kit="$(cd "$(dirname "$0")" && pwd)" "$@"\n')
  with open(path, 'w') as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def load(kit_dir: str) -> Kit:
  """The kit at `kit_dir`, refused when a file it lists is missing or changed since provisioning."""
  kit_dir = os.path.abspath(kit_dir)
  try:
    with open(os.path.join(kit_dir, KIT_FILE)) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.InputError(f'{kit_dir}: not a startup kit ({KIT_FILE}: {e}); run this party\'s own kit'
                            ' (scripts/provision.py writes them).') from None
  for name, digest in manifest['files'].items():
    path = os.path.join(kit_dir, name)
    if not os.path.exists(path) or signing.file_digest(path) != digest:
      raise errors.InputError(f'{path}: {"missing" if not os.path.exists(path) else "changed"} since'
                              ' provisioning (kit.json holds its sha256); every party must run the agreed'
                              ' files: ask the coordinator for this kit again.')
  return Kit(dir=kit_dir, party=manifest['party'], host=manifest['coordinator_host'],
             fleet_port=int(manifest['fleet_port']), preset=manifest['preset'],
             overrides=tuple(manifest['overrides']))


def agreed_values(config) -> dict:
  """The values a config resolves to, but for where this party's schema file is."""
  values = json.loads(config.to_json_best_effort())
  values['data'].pop('schema_file', None)
  return values


def check_agreed_values(kit: Kit, values: dict) -> None:
  """Refuses when the installed tffaml resolves the kit's config to other values than were agreed."""
  with open(kit.path(CONFIG_JSON)) as f:
    agreed = json.load(f)
  differing = sorted(_differences(agreed, values))
  if differing:
    raise errors.InputError(f'{kit.path(CONFIG_FILE)}: the tffaml installed here resolves it to other values'
                            f' than {CONFIG_JSON} agreed ({", ".join(differing[:3])}): install the'
                            ' consortium\'s tffaml version.')


def _differences(a, b, prefix: str = '') -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in a.keys() | b.keys() for d in _differences(a.get(k), b.get(k), f'{prefix}{k}.')]
  return [f'config.{prefix[:-1]}'] if a != b else []


def check_certificates(kit: Kit, log: Callable[[str], None]) -> None:
  """Refuses an expired certificate of the kit; logs one warning for one expiring within 30 days."""
  names = ['ca.crt'] + (['server.pem'] if kit.party == COORDINATOR else [])
  for name in names:
    warning = credentials.check_expiry(kit.path(name))
    if warning:
      log(warning)


def node_argv(kit: Kit, *, workdir: str, data_dir: Optional[str] = None, transactions: Optional[str] = None,
              bank: Optional[str] = None, extra: Sequence[str] = ()) -> list[str]:
  """scripts/node.py for the kit's institution, refusing rows that would name another institution."""
  if bool(data_dir) == bool(transactions):
    raise errors.InputError(f'give {kit.party}\'s rows: start --data_dir=<its folder, named {kit.party}>,'
                            ' or --transactions=<its AMLworld file> with --bank=<its code>.')
  if data_dir:
    folder = os.path.basename(os.path.normpath(os.path.abspath(data_dir)))
    if os.path.commonpath([os.path.abspath(data_dir), kit.dir]) == kit.dir:  # Both are named after it.
      raise errors.InputError(f'--data_dir={data_dir}: that is this kit\'s folder; give the folder of'
                              f' {kit.party}\'s rows (train.csv, test.csv), named {kit.party}, outside the kit.')
    if folder != kit.party:  # scripts/node.py names the institution after its folder.
      raise errors.InputError(f'--data_dir={data_dir}: this kit is {kit.party}\'s, and the folder is named'
                              f' {folder!r}; a node is named after its folder: rename it (or link it) to'
                              f' {kit.party}.')
    rows = [f'--data_dir={os.path.abspath(data_dir)}']
  else:
    if f'bank_{bank}' != kit.party:
      raise errors.InputError(f'--bank={bank}: this kit is {kit.party}\'s, and bank {bank}\'s node would be'
                              f' bank_{bank}: give this kit\'s own bank code.')
    rows = [f'--transactions={os.path.abspath(transactions)}', f'--bank={bank}']
  if not os.path.exists(kit.path(kit.party)):
    raise errors.InputError(f'{kit.path(kit.party)}: missing: this kit holds {kit.party}\'s public key only; copy'
                            f' the private key {kit.party} made (scripts/pki.py --node_key={kit.party}) here.')
  return [sys.executable, os.path.join(_REPO, 'scripts', 'node.py'), *kit.config_args(), *rows,
          f'--workdir={os.path.abspath(workdir)}', f'--superlink={kit.host}:{kit.fleet_port}',
          f'--ca={kit.path("ca.crt")}', f'--key={kit.path(kit.party)}',
          f'--coordinator_key={kit.path(COORDINATOR_PUBLIC_KEY)}', *extra]


def superlink_files(kit: Kit) -> credentials.FederationFiles:
  """The coordinator's kit as `local.superlink_argv` takes it."""
  return credentials.FederationFiles(
      tls=credentials.TlsFiles(ca_certificate=kit.path('ca.crt'), ca_key='', certificate=kit.path('server.pem'),
                               key=kit.path('server.key')),
      superlink_key=kit.path('superlink'), coordinator_key=kit.path(signing.PRIVATE_KEY_FILE),
      coordinator_public_key=kit.path(signing.PUBLIC_KEY_FILE), nodes=kit.path('nodes'),
      authorized_nodes=kit.path('authorized_nodes.csv'))


def coordinator_argv(kit: Kit, *, workdir: str, driver: str, extra: Sequence[str] = ()) -> list[str]:
  """scripts/coordinator.py on the kit, over the Driver API at `driver` (TLS checked for the kit's host)."""
  return [sys.executable, os.path.join(_REPO, 'scripts', 'coordinator.py'), *kit.config_args(),
          f'--workdir={os.path.abspath(workdir)}', f'--driver_api={driver}', f'--driver_server_name={kit.host}',
          f'--ca={kit.path("ca.crt")}', f'--key={kit.path(signing.PRIVATE_KEY_FILE)}',
          f'--nodes={kit.path("nodes")}', *extra]

"""Startup kits (scripts/provision.py, a kit's `start`): what each party holds, what it refuses, a drill.

The drill (`DeploymentDrillTest`) follows docs/deployment.md as its parties
would: provisioning, each party in a folder of its own running its kit's
`start`, a bank's node restarted and another bank's key rotated mid-run,
and the signed model delivered to every bank.
"""

import csv
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests import helpers
from tffaml import errors
from tffaml.consortium import kits
from tffaml.consortium import local
from tffaml.security import credentials

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BANKS = ('bank_a', 'bank_b', 'bank_c')
_SECRETS = ('ca.key', 'server.key', 'superlink', 'signing_key.pem')  # Besides the banks' node keys.
# Generous: every party imports TensorFlow on a machine shared with the rest of the suite.
_RUN_SECONDS = 1200.0


def _provision(root: str, *args: str, fleet_port: int = 9092, host: str = 'localhost',
               rounds: int = 2) -> subprocess.CompletedProcess:
  """scripts/provision.py for the 3 banks on the smoke config, `rounds` rounds, into root/out."""
  _, schema_file = helpers.write_federation(root)
  argv = [sys.executable, os.path.join(_REPO, 'scripts', 'provision.py'), f'--coordinator_host={host}',
          f'--institutions={",".join(_BANKS)}', f'--config={os.path.join(_REPO, "configs", "csv.py")}:smoke',
          f'--config.federated.rounds={rounds}', f'--schema_file={schema_file}', f'--out_dir={root}/out',
          f'--fleet_port={fleet_port}', *args]
  return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def _files(kit: str) -> set[str]:
  return {os.path.relpath(os.path.join(d, f), kit) for d, _, fs in os.walk(kit) for f in fs}


class ProvisionTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.root = self.create_tempdir().full_path

  def test_each_kit_holds_its_own_secrets_and_the_public_files_it_needs(self):
    result = _provision(self.root)
    self.assertEqual(result.returncode, 0, result.stderr)
    out = os.path.join(self.root, 'out')
    self.assertEqual(set(os.listdir(out)), {'ca', 'coordinator', *_BANKS})  # No staging left behind.
    self.assertEqual(_files(os.path.join(out, 'ca')), {'ca.key', 'ca.crt'})
    agreed = {'ca.crt', 'config.py', 'config.json', 'schema.json', 'kit.json', 'start'}
    self.assertEqual(_files(os.path.join(out, 'coordinator')), agreed | {
        'server.pem', 'server.key', 'superlink', 'superlink.pub', 'signing_key.pem', 'signing_key.pub.pem',
        'authorized_nodes.csv', *(f'nodes/{b}.pub' for b in _BANKS)})
    for bank in _BANKS:  # Its own key pair and the coordinator's public key; no one else's key.
      self.assertEqual(_files(os.path.join(out, bank)), agreed | {bank, f'{bank}.pub', 'coordinator.pub.pem'})
    with open(os.path.join(out, 'coordinator', 'server.pem'), 'rb') as f:
      names = x509.load_pem_x509_certificate(f.read()).extensions.get_extension_for_class(
          x509.SubjectAlternativeName).value
    self.assertEqual([n.value for n in names], ['localhost'])  # The host the banks use, and nothing else.
    with open(os.path.join(out, 'bank_a', 'kit.json')) as f:
      manifest = json.load(f)
    # Its own key pair is rotatable (scripts/keys.py), so it is not hashed; every agreed file is.
    self.assertEqual(set(manifest['files']), _files(os.path.join(out, 'bank_a')) - {'kit.json', 'bank_a',
                                                                                    'bank_a.pub'})
    with open(os.path.join(out, 'coordinator', 'kit.json')) as f:
      hashed = set(json.load(f)['files'])
    self.assertNotIn('authorized_nodes.csv', hashed)  # The registry scripts/keys.py edits live.
    self.assertFalse([p for p in hashed if p.startswith('nodes/')])
    self.assertIn('ca.crt', hashed)
    self.assertEqual(manifest['overrides'], ['--config.federated.rounds=2'])
    self.assertNotIn(self.root, json.dumps(manifest))  # Relative paths: a kit can move.

  def test_refuses_values_the_installed_config_resolves_otherwise(self):
    self.assertEqual(_provision(self.root).returncode, 0)
    kit = kits.load(os.path.join(self.root, 'out', 'bank_b'))
    with open(kit.path('config.json')) as f:
      values = json.load(f)
    kits.check_agreed_values(kit, values)
    values['federated']['rounds'] = 3  # What configs/csv.py:smoke says without the agreed override.
    with self.assertRaisesRegex(errors.InputError, r'other values than config.json agreed \(config.federated.rounds\)'):
      kits.check_agreed_values(kit, values)

  def test_refuses_a_non_empty_out_dir_in_one_line(self):
    os.makedirs(os.path.join(self.root, 'out'))
    open(os.path.join(self.root, 'out', 'old'), 'w').close()
    result = _provision(self.root)
    self.assertEqual(result.returncode, 2)
    self.assertEqual(result.stderr.strip().count('\n'), 0, result.stderr)
    self.assertIn('--out_dir', result.stderr)
    self.assertEqual(os.listdir(os.path.join(self.root, 'out')), ['old'])

  def test_refuses_bad_names_and_a_local_override_before_writing(self):
    with self.assertRaisesRegex(errors.InputError, 'distinct names'):
      kits.check_names('coordinator.example', ['bank_a', 'bank_a'])
    with self.assertRaisesRegex(errors.InputError, 'distinct names'):
      kits.check_names('coordinator.example', ['coordinator'])
    with self.assertRaisesRegex(errors.InputError, 'without a port'):
      kits.check_names('coordinator.example:9092', ['bank_a'])
    kits.check_names('10.0.0.1', ['bank_a'])
    result = _provision(self.root, '--config.data.dir=/data')
    self.assertEqual(result.returncode, 2)
    self.assertIn('--config.data.dir=/data', result.stderr)
    self.assertFalse(os.path.exists(os.path.join(self.root, 'out')))


class StartRefusesTest(absltest.TestCase):
  """A kit's `start` refuses in one line, before anything runs."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    assert _provision(cls.root).returncode == 0

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root)
    super().tearDownClass()

  def _start(self, kit: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['./start', *args], cwd=kit, capture_output=True, text=True, check=False, timeout=120)

  def _assert_refused(self, result, text: str) -> None:
    self.assertEqual(result.returncode, 2, result.stderr)
    self.assertEqual(result.stderr.strip().count('\n'), 0, result.stderr)
    self.assertIn(text, result.stderr)

  def test_a_data_folder_named_after_another_institution(self):
    kit = os.path.join(self.root, 'out', 'bank_a')
    self._assert_refused(self._start(kit, '--data_dir=../../data/bank_b'), "this kit is bank_a's")

  def test_the_kit_itself_as_the_data_folder(self):  # Named after the institution too.
    kit = os.path.join(self.root, 'out', 'bank_a')
    self._assert_refused(self._start(kit, '--data_dir=.'), "that is this kit's folder")

  def test_a_bank_code_of_another_bank(self):
    kit = os.path.join(self.root, 'out', 'bank_a')
    self._assert_refused(self._start(kit, '--transactions=t.csv', '--bank=b'), 'bank_b')

  def test_a_changed_agreed_file(self):
    kit = os.path.join(self.root, 'changed')
    shutil.copytree(os.path.join(self.root, 'out', 'bank_c'), kit)
    with open(os.path.join(kit, 'schema.json'), 'a') as f:
      f.write(' ')
    self._assert_refused(self._start(kit, '--data_dir=../data/bank_c'), 'schema.json: changed since provisioning')


class OwnKeyTest(absltest.TestCase):
  """An institution makes its own node key; only its .pub reaches the coordinator and the kits."""

  def test_a_kit_for_an_own_key_holds_no_private_key_and_start_asks_for_it(self):
    root = self.create_tempdir().full_path
    keys = os.path.join(root, 'bank_b_keys')  # At bank_b, never sent.
    made = subprocess.run([sys.executable, os.path.join(_REPO, 'scripts', 'pki.py'), '--node_key=bank_b',
                           f'--out_dir={keys}', '--institutions=unused'], capture_output=True, text=True,
                          timeout=120)
    self.assertEqual(made.returncode, 0, made.stderr)
    sent = os.path.join(root, 'received')
    os.makedirs(sent)
    shutil.copy(os.path.join(keys, 'bank_b.pub'), sent)
    result = _provision(root, f'--public_keys={sent}')
    self.assertEqual(result.returncode, 0, result.stderr)
    out = os.path.join(root, 'out')
    self.assertNotIn('bank_b', _files(os.path.join(out, 'bank_b')))  # No private key was made for it.
    self.assertIn('bank_a', _files(os.path.join(out, 'bank_a')))  # The others' pairs are made here.
    with open(os.path.join(keys, 'bank_b.pub'), 'rb') as f:
      own = f.read().strip()
    for path in ('bank_b/bank_b.pub', 'coordinator/nodes/bank_b.pub', 'coordinator/authorized_nodes.csv'):
      with open(os.path.join(out, path), 'rb') as f:
        self.assertIn(own, f.read(), path)
    data = os.path.join(root, 'data', 'bank_b')
    refused = subprocess.run(['./start', f'--data_dir={data}'], cwd=os.path.join(out, 'bank_b'),
                             capture_output=True, text=True, timeout=120)
    self.assertEqual(refused.returncode, 2, refused.stderr)
    self.assertIn("bank_b: missing: this kit holds bank_b's public key only", refused.stderr)
    private = os.path.join(root, 'bank_b_private_copy')
    shutil.copy(os.path.join(keys, 'bank_b'), private)
    with open(private, 'w') as f:  # Not a key: refused in one line, before any kit is written.
      f.write('not a key')
    bad = os.path.join(root, 'bad')
    os.makedirs(bad)
    shutil.copy(private, os.path.join(bad, 'bank_c.pub'))
    again = _provision(self.create_tempdir().full_path, f'--public_keys={bad}')
    self.assertEqual(again.returncode, 2, again.stderr)
    self.assertIn('bank_c.pub: not an OpenSSH public key', again.stderr)


class CertificateExpiryTest(absltest.TestCase):

  def _certificate(self, days: int) -> str:
    key = ec.generate_private_key(credentials.CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'test CA')])
    path = os.path.join(self.create_tempdir().full_path, 'ca.crt')
    certificate = credentials.make_certificate(name, key.public_key(), name, key, days=days, ca=True)
    from cryptography.hazmat.primitives import serialization  # pylint: disable=g-import-not-at-top
    with open(path, 'wb') as f:
      f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return path

  def test_warns_within_30_days_and_refuses_an_expired_certificate(self):
    soon, later = self._certificate(days=10), self._certificate(days=90)
    self.assertRegex(credentials.check_expiry(soon), r'^warning: .*ca.crt expires on .* \((9|10) days\)')
    self.assertIsNone(credentials.check_expiry(later))
    after = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=11)
    with self.assertRaisesRegex(errors.InputError, 'ca.crt: the certificate expired on'):
      credentials.check_expiry(soon, now=after)


class DriverApiTlsTest(absltest.TestCase):
  """The SuperLink's certificate names the coordinator's host only; its Driver API is on 127.0.0.1."""

  def test_the_coordinator_checks_the_certificate_for_the_kits_host(self):
    from tffaml.consortium import flower  # pylint: disable=g-import-not-at-top
    root = self.create_tempdir().full_path
    self.assertEqual(_provision(root).returncode, 0)
    kit = kits.load(os.path.join(root, 'out', 'coordinator'))
    driver = f'127.0.0.1:{local.free_port()}'
    with local.Processes(os.path.join(root, 'logs')) as processes:
      argv = local.superlink_argv(kits.superlink_files(kit), fleet=f'localhost:{local.free_port()}', driver=driver)
      link = processes.start('superlink', argv)  # scripts/superlink.py: Flower's, without TensorFlow.
      self.assertIsNone(local.wait_for_text(link, 'Starting Driver API', timeout=240.0))
      with open(kit.path('ca.crt'), 'rb') as f:
        ca = f.read()
      with self.assertRaisesRegex(errors.RunFailed, 'Peer name 127.0.0.1 is not in peer certificate'):
        flower.FlowerTransport(driver, root_certificates=ca, node_keys={}).close()
      flower.FlowerTransport(driver, root_certificates=ca, node_keys={}, server_name=kit.host).close()


class _Parties:
  """Each party's `start` in its own session, cwd its kit; every one stopped on leaving."""

  def __init__(self, log_dir: str):
    self._log_dir, self.children, self.logs = log_dir, {}, {}

  def __enter__(self):
    return self

  def start(self, name: str, kit: str, *args: str) -> str:
    log = os.path.join(self._log_dir, f'{name}.log')
    with open(log, 'w') as f:
      self.children[name] = subprocess.Popen(['./start', *args], cwd=kit, stdout=f, stderr=subprocess.STDOUT,
                                             start_new_session=True)
    self.logs[name] = log
    return log

  def stop(self, name: str) -> int:
    """SIGTERM to the party's process group, as a supervisor stops it; its exit status (within 5 s)."""
    os.killpg(self.children[name].pid, signal.SIGTERM)
    return self.children[name].wait(timeout=local.STOP_SECONDS)

  def __exit__(self, *exc):
    for signum in (signal.SIGTERM, signal.SIGKILL):  # A node may ignore SIGTERM for a while.
      for child in self.children.values():
        try:
          os.killpg(child.pid, signum)
        except ProcessLookupError:
          pass
      for child in self.children.values():
        try:
          child.wait(timeout=local.STOP_SECONDS)
        except subprocess.TimeoutExpired:
          pass


class DeploymentDrillTest(absltest.TestCase):
  """docs/deployment.md's steps as its parties run them, with a restart and a key rotation mid-run.

  Provisioning, then each party in a folder of its own (its "host") holding
  its kit and, for a bank, its data; everything else provisioning wrote is
  deleted, and each party runs its kit's `start` from its kit with relative
  paths, so a party that needed another's files could not find them. The
  coordinator's host is 127.0.0.2, a loopback address no other party uses:
  its certificate names that address alone, the banks connect to it, and
  its coordinator dials the Driver API at 127.0.0.1. The banks listen on
  nothing. After round 1, bank_a rotates its key (a pair it makes itself;
  scripts/keys.py at the coordinator; its old node is refused and stops;
  it starts again with the new key, from the same kit and workdir: a
  restart). The coordinator process is paused (SIGSTOP) meanwhile, so that
  it happens mid-run however fast the rounds go; the SuperLink and the
  nodes run on. The run ends, bank_a trains its last round, every bank
  keeps the signed model, and bank_c's operator stops its node as a
  supervisor does (SIGTERM). A node stopped mid-run and started again with
  the same command rejoins the next round: superlink_test's nodes, and
  bank_a's restart here.
  """

  def test_provision_start_restart_rotate_and_deliver(self):
    root = self.create_tempdir().full_path
    self.assertEqual(_provision(root, fleet_port=local.free_port(), host='127.0.0.2', rounds=3).returncode, 0)
    hosts = os.path.join(root, 'hosts')
    for party in ('coordinator', *_BANKS):  # Each party's folder alone; the rest is deleted.
      os.makedirs(os.path.join(hosts, party))
      os.rename(os.path.join(root, 'out', party), os.path.join(hosts, party, 'kit'))
    for bank in _BANKS:
      os.rename(os.path.join(root, 'data', bank), os.path.join(hosts, bank, bank))
    shutil.rmtree(os.path.join(root, 'out'))
    coordinator, kit = os.path.join(hosts, 'coordinator', 'kit'), lambda bank: os.path.join(hosts, bank, 'kit')
    with _Parties(root) as parties:
      log = parties.start('coordinator', coordinator, f'--driver_port={local.free_port()}', '--',
                          '--wait=900', '--reply_timeout=600', '--min_nodes=1')
      for bank in _BANKS:
        parties.start(bank, kit(bank), f'--data_dir=../{bank}')
      self.assertIsNone(local.wait_for_text(log, 'round 1/3', timeout=_RUN_SECONDS))
      with _Paused(_process_running('scripts/coordinator.py', coordinator)):
        admissions = _Admissions(os.path.join(coordinator, 'workdir', 'logs', 'superlink.log'))
        # bank_a makes a new pair and sends its .pub; the coordinator's operator rotates it in.
        new = os.path.join(hosts, 'bank_a', 'new_key')
        for argv in ([os.path.join(_REPO, 'scripts', 'pki.py'), '--node_key=bank_a', f'--out_dir={new}',
                      '--institutions=bank_a'],
                     [os.path.join(_REPO, 'scripts', 'keys.py'), 'rotate', f'--nodes={coordinator}/nodes',
                      f'--key_list={coordinator}/authorized_nodes.csv', '--institution=bank_a',
                      f'--public_key={new}/bank_a.pub']):
          made = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120)
          self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(parties.children['bank_a'].wait(timeout=120), 2)  # Its old key refused: it stops.
        with open(parties.logs['bank_a']) as f:
          self.assertIn("refused this node's key", f.read())
        for name in ('bank_a', 'bank_a.pub'):
          shutil.copy(os.path.join(new, name), os.path.join(kit('bank_a'), name))
        parties.start('bank_a_again', kit('bank_a'), '--data_dir=../bank_a')
        admissions.wait_for(1)
      returncode = parties.children['coordinator'].wait(timeout=_RUN_SECONDS)
      with open(log) as f:
        text = f.read()
      self.assertEqual(returncode, 0, text[-3000:])
      # bank_c's operator stops its node, which waits for the next run, as a supervisor does.
      self.assertEqual(parties.stop('bank_c'), 128 + signal.SIGTERM)
    run = os.path.join(coordinator, 'workdir', 'run')
    with open(os.path.join(run, 'results', 'metrics.csv')) as f:
      rows = list(csv.DictReader(f))
    self.assertEqual(float(rows[0]['institutions_in_round']), 3.0)
    self.assertEqual(float(rows[-1]['institutions_in_round']), 3.0)  # bank_a back within a round.
    self.assertIn('Fleet API on 127.0.0.2:', text)
    # The coordinator's and each node's lines start with their UTC time (logs.stamped).
    stamp = r'(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ '
    self.assertRegex(text, stamp + r"connecting to the SuperLink's Driver API at 127\.0\.0\.1:")
    self.assertRegex(text, stamp + r'prepare: 3 of 3 nodes built their client work')
    from tffaml.security import signing  # pylint: disable=g-import-not-at-top
    for bank in _BANKS:  # Each node's state, and the signed model delivered to it, in its own kit's workdir.
      workdir = os.path.join(kit(bank), 'workdir')
      with open(parties.logs[bank]) as f:
        self.assertRegex(f.read(), stamp + f'node {bank}: ')
      self.assertTrue(os.path.exists(os.path.join(workdir, 'secret', 'noise_seed')))
      signing.verify(os.path.join(workdir, 'model', 'export'), os.path.join(kit(bank), 'coordinator.pub.pem'))
      with open(os.path.join(workdir, 'answers.jsonl')) as f:
        answered = [json.loads(line) for line in f]
      self.assertIn({'kind': 'train', 'round': 3}, [{k: a.get(k) for k in ('kind', 'round')} for a in answered])
    with open(os.path.join(coordinator, 'workdir', 'logs', 'superlink.log')) as f:
      self.assertIn('Node authentication enabled with 3 known public keys', f.read())


def _process_running(script: str, cwd: str) -> int:
  """The pid of the process running `script` whose working directory is under `cwd`."""
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        argv = f.read().decode(errors='replace').split('\0')
      if any(a.endswith(script) for a in argv) and os.readlink(f'/proc/{pid}/cwd').startswith(cwd):
        return int(pid)
    except OSError:
      continue
  raise AssertionError(f'no process runs {script} in {cwd}')


class _Paused:
  """A process stopped (SIGSTOP) inside the block, continued on leaving it."""

  def __init__(self, pid: int):
    self._pid = pid

  def __enter__(self):
    os.kill(self._pid, signal.SIGSTOP)
    return self

  def __exit__(self, *exc):
    os.kill(self._pid, signal.SIGCONT)


class _Admissions:
  """Counts the nodes the SuperLink admits (a node id created for an admitted key) after it is made."""

  _ADMITTED = 'AuthenticateServerInterceptor: Created node_id='

  def __init__(self, log: str):
    self._log = log
    self._before = self._count()

  def _count(self) -> int:
    with open(self._log, errors='replace') as f:
      return f.read().count(self._ADMITTED)

  def wait_for(self, more: int, timeout: float = _RUN_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while self._count() < self._before + more:
      if time.monotonic() > deadline:
        raise AssertionError(f'{more} more nodes were not admitted within {timeout:g} s')
      time.sleep(0.5)


if __name__ == '__main__':
  absltest.main()

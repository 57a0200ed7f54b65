"""A misconfigured node says in one line what is wrong and exits, instead of retrying forever.

Real processes: a SuperLink (TLS, node authentication, one registered key)
and scripts/node.py started with an unregistered key, another federation's
CA, and a host name its certificate does not name. Flower 1.12 alone logs
"Can't get server public key, SuperLink may be offline" for each and retries
forever.
"""

import os
import subprocess
import sys

import tensorflow as tf

from tests import helpers
from tests.consortium import transport_test
from tffaml.consortium import local
from tffaml.security import credentials

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_EXIT_REFUSED = 2  # cli.EXIT_REFUSED
_MISLEADING = "Can't get server public key"


class MisconfiguredNodeTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.create_tempdir().full_path
    self.processes = self.enter_context(local.Processes(os.path.join(self.dir, 'logs')))

  def test_a_wrong_key_ca_or_host_is_one_line_and_a_refusal(self):
    data_dir, schema_file = helpers.write_federation(self.dir, institutions=('bank_a',))
    files = credentials.write_federation(os.path.join(self.dir, 'pki'), hosts=['127.0.0.1'],
                                         institutions=['bank_a'])
    other_ca = credentials.write_tls(os.path.join(self.dir, 'other'), hosts=['127.0.0.1']).ca_certificate
    intruder, _ = credentials.write_node_key(self.dir, 'intruder')
    fleet, driver = f'127.0.0.1:{local.free_port()}', f'127.0.0.1:{local.free_port()}'
    link = self.processes.start('superlink', local.superlink_argv(files, fleet=fleet, driver=driver))
    self.assertIsNone(local.wait_for_text(link, 'Starting Fleet API', timeout=transport_test._START_SECONDS))  # pylint: disable=protected-access
    port = fleet.rsplit(':', 1)[1]
    cases = {  # name: (flags replacing the registered node's, what its one line must say)
        'wrong_key': ({'--key': intruder}, 'refused this node\'s key'),
        'wrong_ca': ({'--ca': other_ca}, 'not signed by the CA in --ca=' + other_ca),
        'wrong_host': ({'--superlink': f'localhost:{port}'}, "certificate is not for 'localhost'"),
    }
    nodes = {}
    for name, (flags, _) in cases.items():
      argv = local.node_argv(files, config_args=['--config=configs/csv.py', f'--config.data.schema_file={schema_file}'],
                             name='bank_a', rows=[f'--data_dir={os.path.join(data_dir, "bank_a")}'],
                             workdir=os.path.join(self.dir, name), fleet=fleet)
      argv = [next((f'{flag}={value}' for flag, value in flags.items() if a.startswith(flag + '=')), a) for a in argv]
      log = os.path.join(self.dir, f'{name}.log')
      with open(log, 'w') as f:
        nodes[name] = (subprocess.Popen([sys.executable, *argv[1:]], stdout=f, stderr=subprocess.STDOUT, cwd=_REPO,
                                        start_new_session=True), log)
    try:
      for name, (process, log) in nodes.items():
        status = process.wait(timeout=transport_test._START_SECONDS + 60.0)  # pylint: disable=protected-access
        with open(log) as f:
          output = f.read()
        self.assertEqual(status, _EXIT_REFUSED, output[-3000:])
        errors = [line for line in output.splitlines() if line.startswith('error: ')]
        self.assertLen(errors, 1, output[-3000:])
        self.assertIn(cases[name][1], errors[0])
        self.assertNotIn(_MISLEADING, output)
      with open(link) as f:  # The coordinator's side: scripts/superlink.py logs the refused key in one line.
        self.assertIn('refused a node at', f.read())
    finally:
      for process, _ in nodes.values():
        if process.poll() is None:
          process.kill()
          process.wait()


if __name__ == '__main__':
  tf.test.main()

"""Runs one party of a consortium from its startup kit (scripts/provision.py): what a kit's `start` runs.

  <coordinator kit>/start [--workdir=W] [--driver_port=9091] [-- scripts/coordinator.py flags]
  <institution kit>/start --data_dir=<its folder> [--workdir=W] [-- scripts/node.py flags]
  <bank kit>/start --transactions=<its AMLworld file> --bank=<its code> [--workdir=W]

First, in a second and before TensorFlow loads, it refuses a kit whose
files changed since provisioning, an expired certificate (and warns 30
days ahead), an installed tffaml that resolves the agreed config to other
values, and a data folder not named after the kit's institution (the node
is named after its folder). Then the coordinator's kit runs the SuperLink
(Fleet API on the kit's host, Driver API on 127.0.0.1 only; its log in
W/logs/) and scripts/coordinator.py on W/run, stopping both when either
ends or on SIGTERM; an institution's kit becomes its scripts/node.py. The
workdir (default <kit>/workdir) holds the party's state: rerunning with
the same one resumes (the coordinator's checkpoint, a node's noise seed and
privacy ledger).
"""

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tffaml import cli

_KIT = flags.DEFINE_string('kit', None, 'The kit folder (its `start` passes it).', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, "This party's state (default <kit>/workdir); the same one resumes.")
_DATA_DIR = flags.DEFINE_string('data_dir', None, "An institution's folder (train.csv, test.csv), named after it.")
_TRANSACTIONS = flags.DEFINE_string('transactions', None, "Instead: a bank's AMLworld transactions CSV.")
_BANK = flags.DEFINE_string('bank', None, "With --transactions: the bank's code in it.")
_DRIVER_PORT = flags.DEFINE_integer('driver_port', 9091, "Coordinator: the Driver API's port on 127.0.0.1.")
_START_SECONDS = 600.0  # The SuperLink imports TensorFlow: tens of seconds on a busy machine.
_STOP_SECONDS = 15.0  # After SIGTERM, before SIGKILL.


def _kit():
  """The kit, checked (files, certificates, agreed config) before anything runs."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import kits  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import logs  # pylint: disable=g-import-not-at-top
  kit = kits.load(_KIT.value)
  kits.check_certificates(kit, logs.log)
  agreed = flags.FlagValues()  # The config exactly as the party's script will resolve it.
  argv = ['start', *kit.config_args()]
  config_flags.DEFINE_config_file('config', flag_values=agreed, sys_argv=argv)
  agreed(argv)
  kits.check_agreed_values(kit, kits.agreed_values(agreed['config'].value))
  return kit


def main(argv):
  from tffaml.consortium import kits  # pylint: disable=g-import-not-at-top
  kit = _kit()
  workdir = os.path.abspath(_WORKDIR.value or kit.path('workdir'))
  if kit.party == kits.COORDINATOR:
    sys.exit(_coordinate(kit, workdir, argv[1:]))
  node = kits.node_argv(kit, workdir=workdir, data_dir=_DATA_DIR.value, transactions=_TRANSACTIONS.value,
                        bank=_BANK.value, extra=argv[1:])
  sys.stdout.flush()
  os.execv(node[0], node)  # The node itself: SIGTERM and its exit status are its own.


def _coordinate(kit, workdir: str, extra: list[str]) -> int:
  """The SuperLink and the coordinator until the coordinator ends; both stopped however it ends."""
  from tffaml.consortium import kits  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import local  # pylint: disable=g-import-not-at-top
  from tffaml.consortium import logs  # pylint: disable=g-import-not-at-top
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # Unwinds: the finally blocks stop both.
  fleet, driver = f'{kit.host}:{kit.fleet_port}', f'127.0.0.1:{_DRIVER_PORT.value}'
  with local.Processes(os.path.join(workdir, 'logs')) as processes:
    link = processes.start('superlink', local.superlink_argv(kits.superlink_files(kit), fleet=fleet, driver=driver))
    logs.log(f'SuperLink: Fleet API on {fleet}, Driver API on {driver}; its log: {link}')
    _wait_for_superlink(link, processes)
    coordinator = subprocess.Popen(kits.coordinator_argv(kit, workdir=os.path.join(workdir, 'run'), driver=driver,
                                                         extra=extra), start_new_session=True)
    try:
      return coordinator.wait()
    finally:
      _stop(coordinator)


def _wait_for_superlink(link: str, processes) -> None:
  from tffaml import errors  # pylint: disable=g-import-not-at-top
  deadline = time.monotonic() + _START_SECONDS
  while time.monotonic() < deadline:
    with open(link, errors='replace') as f:
      text = f.read()
    if 'Starting Driver API' in text:
      return
    if processes.exited():
      break
    time.sleep(0.5)
  last = text.strip().splitlines()[-1:] or ['(nothing logged)']
  raise errors.RunFailed(f'the SuperLink did not start (its log: {link}): {last[0]}')


def _stop(child: subprocess.Popen) -> None:
  """SIGTERM to the child's process group (the coordinator and its TFF worker), SIGKILL after 15 s."""
  for signum in (signal.SIGTERM, signal.SIGKILL):
    try:
      os.killpg(child.pid, signum)
      child.wait(timeout=_STOP_SECONDS)
      return
    except ProcessLookupError:
      return
    except subprocess.TimeoutExpired:
      continue


if __name__ == '__main__':
  cli.run(main)

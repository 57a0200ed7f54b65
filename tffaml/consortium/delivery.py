"""The final model's delivery to the banks: the signed export, each bank's own metrics, the statement.

At the end of a run the coordinator signs its export with its Ed25519 key
(`signing.sign`, as scripts/sign.py) and sends every node a signed `deliver`
message (`node.DELIVER`): the package's files as arrays, that node's own
test metrics (never another bank's) and the privacy statement. The node
writes them into a temporary directory beside `<workdir>/model/`, checks
the package against the coordinator's public key (`signing.verify`, the
check scripts/verify.py makes) and only then renames it into place:

    <workdir>/model/export/         the signed SavedModel, for scripts/score.py
    <workdir>/model/metrics.json    this bank's own final test metrics
    <workdir>/model/privacy.txt     the run's privacy statement
    <workdir>/model/delivery.json   the run, when, and the signing key's fingerprint

A kept model is never replaced: a second delivery of the same run (the
coordinator's command rerun, e.g. to reach a bank that was down) leaves the
first in place and says so (a rerun writes the export again, so its bytes
may differ, not its model); another run's is refused while `<workdir>/model/`
holds one (its operator moves that away to accept the new one).

A delivery is one Flower message: Flower 1.12 caps every gRPC message (Driver
API, Fleet API, SuperNode) at `flwr.common.GRPC_MAX_MESSAGE_LENGTH`, 512 MiB;
a package beyond `MAX_PACKAGE_BYTES` is refused before anything is sent.
"""

import datetime
import json
import os
from typing import Mapping, Optional

from flwr.common import GRPC_MAX_MESSAGE_LENGTH
import numpy as np

from tffaml import errors
from tffaml import io
from tffaml.consortium import messages
from tffaml.security import signing

MODEL_DIR, PACKAGE_DIR = 'model', 'export'
METRICS_FILE, PRIVACY_FILE, RECEIPT_FILE = 'metrics.json', 'privacy.txt', 'delivery.json'
# Half Flower's cap: the message also holds its header, the npz framing and the signature.
MAX_PACKAGE_BYTES = GRPC_MAX_MESSAGE_LENGTH // 2


def package(export_dir: str) -> tuple[dict, tuple[np.ndarray, ...]]:
  """A signed package as a message's header ({'files', 'directories'}) and arrays (each file's bytes)."""
  files, directories = signing.tree(export_dir)
  if signing.SIGNATURE_FILE not in files:
    raise errors.InputError(f'{export_dir}: not signed (no {signing.SIGNATURE_FILE}); the coordinator signs'
                            ' its export before delivering it (scripts/sign.py).')
  arrays = []
  for name in files:
    with open(os.path.join(export_dir, name), 'rb') as f:
      arrays.append(np.frombuffer(f.read(), np.uint8))
  size = sum(a.nbytes for a in arrays)
  if size > MAX_PACKAGE_BYTES:
    raise errors.InputError(
        f'{export_dir}: {size:,} bytes, beyond the {MAX_PACKAGE_BYTES:,} one Flower message carries'
        ' (flwr.common.GRPC_MAX_MESSAGE_LENGTH); hand the signed package to the banks another way'
        ' (scripts/verify.py checks it there).')
  return {'files': files, 'directories': directories}, tuple(arrays)


def own_metrics(metrics: Mapping, institution: str) -> dict:
  """`institution`'s own figures from a run's metrics.json: its test metrics and alerts, its sizes; no other's."""
  own = {'institution': institution, 'rounds': metrics.get('rounds')}
  for key in ('federated', 'alerts'):
    per_institution = metrics.get(key, {}).get('institutions', {})
    if institution in per_institution:
      own[key] = per_institution[institution]
    elif key in metrics:  # It did not answer the final evaluation: said, rather than another bank's figures.
      own[key] = None
  own['sizes'] = next((s for s in metrics.get('institutions', ()) if s.get('institution') == institution), None)
  return own


def _safe(name: str) -> bool:
  """A relative path that stays inside the package (no '..', not absolute, normalised)."""
  return (isinstance(name, str) and bool(name) and not os.path.isabs(name) and os.path.normpath(name) == name
          and '..' not in name.split('/') and '\\' not in name)


def _utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


class Inbox:
  """Where a bank's node keeps the delivered model: `<workdir>/model/`, verified against the coordinator's key."""

  def __init__(self, workdir: str, coordinator_key_file: str):
    self.path = os.path.join(os.path.abspath(workdir), MODEL_DIR)
    self._key_file = coordinator_key_file

  def keep(self, request: messages.Message, institution: str) -> str:
    """Writes the delivered package, metrics and statement; what it did ('kept' or 'already kept').

    Raises:
      messages.Refused: a malformed package, one that does not verify
        against the coordinator's key, or another model already kept here.
    """
    header, arrays = request.header, request.arrays
    files, directories = header.get('files'), header.get('directories')
    if (not isinstance(files, list) or not isinstance(directories, list) or len(files) != len(arrays)
        or not all(map(_safe, files + directories)) or signing.SIGNATURE_FILE not in files):
      raise messages.Refused(f'{institution}: the delivered package is malformed (its file list does not match'
                             ' its contents, or a path leaves the package); nothing was kept.')
    signature = arrays[files.index(signing.SIGNATURE_FILE)].tobytes()
    kept = self._already_kept(signature, institution, header.get('run'))
    if kept:
      return kept
    with io.atomic_path(self.path, directory=True) as tmp:
      root = os.path.join(tmp, PACKAGE_DIR)
      os.makedirs(root)
      for directory in sorted(directories):
        os.makedirs(os.path.join(root, directory))
      for name, data in zip(files, arrays):
        with open(os.path.join(root, name), 'xb') as f:
          f.write(np.asarray(data, np.uint8).tobytes())
      try:
        signing.verify(root, self._key_file)
      except (signing.VerificationError, OSError) as e:
        raise messages.Refused(f'{institution}: the delivered model does not verify against the coordinator\'s'
                               f' key {self._key_file} ({e}); nothing was kept.') from None
      io.write_json(os.path.join(tmp, METRICS_FILE), header.get('metrics'))
      io.write_text(os.path.join(tmp, PRIVACY_FILE), str(header.get('privacy', '')))
      io.write_json(os.path.join(tmp, RECEIPT_FILE), {
          'run': header.get('run'), 'delivered': _utc_now(), 'institution': institution,
          'signed_by': json.loads(signature)['public_key_fingerprint'], 'files': len(files) - 1})
    return f'kept in {self.path}'

  def _already_kept(self, signature: bytes, institution: str, run: Optional[str]) -> Optional[str]:
    """What is kept when `self.path` holds this package or this run's; None when empty; refuses another run's."""
    if not os.path.exists(self.path):
      return None
    try:
      with open(os.path.join(self.path, PACKAGE_DIR, signing.SIGNATURE_FILE), 'rb') as f:
        kept = f.read()
      with open(os.path.join(self.path, RECEIPT_FILE)) as f:
        receipt = json.load(f)
    except (OSError, ValueError):
      kept, receipt = b'', {}
    if kept == signature:
      return f'already kept in {self.path}'
    if run is not None and receipt.get('run') == run:
      return (f'already kept in {self.path} from an earlier delivery of this run ({receipt.get("delivered")});'
              ' this one is not written over it')
    raise messages.Refused(
        f'{institution}: {self.path} already holds another model (run {str(receipt.get("run"))[:12]}…,'
        f' delivered {receipt.get("delivered")}) than this delivery of run {str(run)[:12]}…; it is kept as'
        ' it is. To accept the new one, its operator moves that directory away; the coordinator delivers'
        ' again when its command is rerun.')

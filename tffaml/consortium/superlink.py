"""Flower 1.12's SuperLink as the federation runs it: rejoining nodes, and node keys reloaded live.

    python scripts/superlink.py <flower-superlink's own flags>

(`local.superlink_argv` writes the command.) Four gaps of Flower 1.12's
SuperLink with node authentication, closed here in its state and its
authentication interceptor rather than in a fork:

- A node that stops cleanly deletes its node id, but the SuperLink keeps its
  key's mapping to that id and hands the dead id back when the node
  restarts, so the node never counts as connected again (upstream flower
  issue #4844, still in 1.14). Deleting a node here drops its key's mapping,
  so a restart gets a fresh, live id.
- A node deleted (stopped, or its key revoked) while a request to it was
  unanswered failed every Driver API pull of those requests with a KeyError
  ("Exception calling application: <node id>"), which stopped the
  coordinator. Here the pull answers for it as for an offline node: an
  error reply, so that the round goes on without it.
- A restarted SuperLink (its state is in memory) refused every running node:
  their requests carry node ids it no longer knows. A request whose key is
  listed and whose HMAC (from that key) checks out re-admits the node under
  the id it holds, so no bank restarts.
- The list of admitted keys (`--auth-list-public-keys`) was read once, at
  start. Here it is read again whenever the file changes (scripts/keys.py
  admits, rotates and revokes keys by rewriting it), within a second, and
  before any key is refused, so a node started right after its key was
  admitted is never turned away: a removed key's next request is refused and
  its node id dropped. Every refused key is logged
  in one line (at most once a minute per key).

Flower imports TensorFlow only for a TensorBoard helper the SuperLink never
uses; it is kept out (about 1 CPU-s to start instead of 10).
"""

import base64
import csv
import hashlib
import os
import sys
import threading
import time
import uuid
from typing import Callable, Optional

RELOAD_SECONDS = 1.0  # Between looks at the key list's modification time.
_REFUSAL_LOG_SECONDS = 60.0  # A key refused again is logged again after this long.


def _flower():
  """Flower's SuperLink modules, imported with TensorFlow unimportable (see the module's doc)."""
  sys.modules.setdefault('tensorflow', None)
  from flwr.server import app  # pylint: disable=g-import-not-at-top
  from flwr.server.superlink.state import state_factory  # pylint: disable=g-import-not-at-top
  return app, state_factory


def read_key_list(path: str) -> set[bytes]:
  """The admitted node keys in `path` (Flower's CSV of OpenSSH keys), as Flower's state holds them."""
  from cryptography.hazmat.primitives import serialization  # pylint: disable=g-import-not-at-top
  from flwr.common.secure_aggregation.crypto import symmetric_encryption  # pylint: disable=g-import-not-at-top
  keys = set()
  with open(path, newline='', encoding='utf-8') as f:
    for row in csv.reader(f):
      for element in row:
        if element.strip():
          key = serialization.load_ssh_public_key(element.strip().encode())
          keys.add(symmetric_encryption.public_key_to_bytes(key))
  return keys


def fingerprint(key: bytes) -> str:
  """A short name for a node key in logs (SHA-256 of Flower's encoding of it, 16 hex digits)."""
  return hashlib.sha256(key).hexdigest()[:16]


def _state_class(base):
  """Flower's in-memory state, where deleting a node forgets its key's node id (issue #4844)."""

  from flwr.server.superlink.state import utils as state_utils  # pylint: disable=g-import-not-at-top

  class RejoiningState(base):

    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      self.lock = threading.RLock()  # `get_task_res` below holds it around Flower's own.

    def get_task_res(self, task_ids):
      """Flower's, answering for a node deleted (stopped, revoked) before it replied as for an offline one.

      Flower 1.12 looks up the node of each unanswered task and raised
      KeyError for a deleted node: every Driver API pull of that round failed
      ("Exception calling application: <node id>"), stopping the coordinator.
      """
      with self.lock:
        for task_id in task_ids:
          task_ins = self.task_ins_store.get(task_id)
          if task_ins is None or task_ins.task.consumer.node_id in self.node_ids:
            continue
          if not any(r.task.ancestry and r.task.ancestry[0] == str(task_id) for r in self.task_res_store.values()):
            unavailable = state_utils.make_node_unavailable_taskres(ref_taskins=task_ins)
            self.task_res_store[uuid.UUID(unavailable.task_id)] = unavailable
        return super().get_task_res(task_ids)

    def delete_node(self, node_id: int, public_key: Optional[bytes] = None) -> None:
      super().delete_node(node_id, public_key)
      with self.lock:
        for key in [k for k, i in self.public_key_to_node_id.items() if i == node_id]:
          del self.public_key_to_node_id[key]

    def readmit(self, public_key: bytes, node_id: int, ping_interval: float) -> bool:
      """Gives `public_key` back `node_id` (after a SuperLink restart) unless either is taken."""
      with self.lock:
        if public_key in self.public_key_to_node_id or node_id in self.node_ids or node_id == 0:
          return False
        self.public_key_to_node_id[public_key] = node_id
        self.node_ids[node_id] = (time.time() + ping_interval, ping_interval)
        return True

    def replace_node_public_keys(self, keys: set[bytes]) -> set[bytes]:
      """The admitted keys become `keys` (in place: the interceptor holds the set); returns those removed."""
      with self.lock:
        removed = self.node_public_keys - keys
        self.node_public_keys.clear()
        self.node_public_keys.update(keys)
        for key in removed:
          node_id = self.public_key_to_node_id.pop(key, None)
          self.node_ids.pop(node_id, None)
        return removed

  return RejoiningState


def _claimed_node_id(request) -> Optional[int]:
  """The node id a Fleet API request says it comes from (None for those that name none)."""
  from flwr.proto import fleet_pb2  # pylint: disable=g-import-not-at-top
  if isinstance(request, fleet_pb2.PushTaskResRequest):
    return request.task_res_list[0].task.producer.node_id if request.task_res_list else None
  node = getattr(request, 'node', None)
  return node.node_id if node is not None and node.node_id else None


def _interceptor_class(base, log: Callable[[str], None], refresh: Callable[[], None] = lambda: None):
  """Flower's node authentication, re-admitting the nodes of a restarted SuperLink and logging refusals.

  `refresh` rereads the key list before a key is refused: a key admitted a
  moment ago (scripts/keys.py has returned) is never refused for the watcher's
  second of delay, which would stop the node it was admitted for.
  """
  import grpc  # pylint: disable=g-import-not-at-top
  from flwr.common import constant  # pylint: disable=g-import-not-at-top
  from flwr.common.secure_aggregation.crypto import symmetric_encryption  # pylint: disable=g-import-not-at-top
  from flwr.proto import fleet_pb2  # pylint: disable=g-import-not-at-top

  class Interceptor(base):

    def __init__(self, state):
      super().__init__(state)
      self._refused: dict[bytes, float] = {}

    def _generic_auth_unary_method_handler(self, method_handler):
      checked = super()._generic_auth_unary_method_handler(method_handler)

      def handler(request, context):
        metadata = dict(context.invocation_metadata())
        key = base64.urlsafe_b64decode(metadata.get('public-key', ''))
        if key not in self.node_public_keys:
          refresh()
        if key not in self.node_public_keys:
          self._log_refusal(key, context.peer())
        elif not isinstance(request, fleet_pb2.CreateNodeRequest):
          self._readmit(key, request, base64.urlsafe_b64decode(metadata.get('auth-token', '')))
        return checked.unary_unary(request, context)

      return grpc.unary_unary_rpc_method_handler(
          handler, request_deserializer=checked.request_deserializer,
          response_serializer=checked.response_serializer)

    def _log_refusal(self, key: bytes, peer: str) -> None:
      now = time.monotonic()
      if now - self._refused.get(key, -_REFUSAL_LOG_SECONDS) >= _REFUSAL_LOG_SECONDS:
        self._refused[key] = now
        log(f'refused a node at {peer}: its key {fingerprint(key) if key else "(none sent)"} is not in'
            ' --auth-list-public-keys; admit it with scripts/keys.py admit if it is a member.')

    def _readmit(self, key: bytes, request, hmac: bytes) -> None:
      node_id = _claimed_node_id(request)
      if node_id is None or self.state.get_node_id(key) is not None:
        return
      # The node proves its key with the request's HMAC, as Flower checks it.
      if self._verify_hmac(symmetric_encryption.bytes_to_public_key(key), request, hmac) and \
          self.state.readmit(key, node_id, constant.PING_DEFAULT_INTERVAL):
        log(f'node {node_id} (key {fingerprint(key)}) re-admitted under its node id: it was connected'
            ' before this SuperLink started.')

  return Interceptor


def _version(path: str) -> tuple[int, int, int]:
  """What changes with the file: a new inode when replaced atomically, its time and size when edited."""
  stat = os.stat(path)
  return stat.st_ino, stat.st_mtime_ns, stat.st_size


class KeyList:
  """The admitted keys of a state, following the key list file whenever it changes."""

  def __init__(self, path: str, state, log: Callable[[str], None]):
    self.path, self._state, self._log = path, state, log
    self._seen = _version(path)
    self._lock = threading.Lock()

  def refresh(self) -> None:
    """Reloads the file if it changed since last read (replaced, or written in place)."""
    with self._lock:
      try:
        version = _version(self.path)
        if version == self._seen:
          return
        keys = read_key_list(self.path)
      except (OSError, ValueError) as e:  # A list being replaced, or a broken one: keep the current keys.
        self._log(f'{self.path}: not reloaded ({e}); the SuperLink keeps its current node keys.')
        return
      self._seen = version
      before = set(self._state.get_node_public_keys())
      removed = self._state.replace_node_public_keys(keys)
      self._log(f'{self.path} reloaded: {len(keys)} node keys; admitted {sorted(map(fingerprint, keys - before))},'
                f' revoked {sorted(map(fingerprint, removed))}')

  def watch(self, stop: threading.Event) -> None:
    """Until `stop`: `refresh` every RELOAD_SECONDS (a revoked key is refused within about that long)."""
    while not stop.wait(RELOAD_SECONDS):
      self.refresh()


def _log(text: str) -> None:
  from tffaml.consortium import logs  # pylint: disable=g-import-not-at-top
  logs.log(f'superlink: {text}')


def _key_list_flag(argv: list[str]) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg == '--auth-list-public-keys' and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith('--auth-list-public-keys='):
      return arg.split('=', 1)[1]
  return None


def main() -> None:
  """Flower's `flower-superlink` with the patches above, its flags from sys.argv."""
  app, state_factory = _flower()
  state_class = _state_class(state_factory.InMemoryState)
  state_factory.InMemoryState = state_class
  key_lists: list[KeyList] = []  # The one in-memory state's, once the SuperLink makes it.
  app.AuthenticateServerInterceptor = _interceptor_class(
      app.AuthenticateServerInterceptor, _log, refresh=lambda: [k.refresh() for k in key_lists])
  path = _key_list_flag(sys.argv[1:])
  if path:
    factory_init = state_factory.StateFactory.__init__

    def init(self, database):  # The watcher follows the one in-memory state the SuperLink makes.
      factory_init(self, database)
      state = self.state()
      if isinstance(state, state_class):
        key_lists.append(KeyList(path, state, _log))
        threading.Thread(target=key_lists[-1].watch, args=(threading.Event(),), daemon=True).start()

    state_factory.StateFactory.__init__ = init
    app.StateFactory = state_factory.StateFactory
  sys.argv[0] = 'flower-superlink'
  app.run_superlink()


if __name__ == '__main__':
  main()

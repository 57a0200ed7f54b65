"""Flower 1.12 as the transport between the coordinator and the institutions' nodes.

Flower carries bytes; what they mean and who signed them is `messages`'
business. The SuperLink (`flower-superlink`, run by the coordinator's
operator) terminates TLS for every connection and admits only the node keys
on its list (`--auth-list-public-keys`); each node is a Flower SuperNode
started in its own process by `run_node`, whose ClientApp hands every
message to `node.Node.handle`. The coordinator talks to the SuperLink's
Driver API (`FlowerTransport`): bind that API to the coordinator's own host
(`--driver-api-address 127.0.0.1:9091`), since Flower 1.12 does not
authenticate its callers.

Flower assigns node ids; names are learned by asking every connected node
to sign a fresh nonce with its key (`identify`), checked against the
registry of institutions' public keys.
"""

import dataclasses
import functools
import logging
import secrets
import time
from typing import Callable, Mapping, Optional

from flwr import common as flwr_common
from flwr.client import app as client_app_lib
from flwr.client import client_app
from flwr.client.mod import secaggplus_mod
from flwr.common import ConfigsRecord
from flwr.common import Message as FlowerMessage
from flwr.common import RecordSet
from flwr.common import recordset_compat
from flwr.common import grpc as flwr_grpc
from flwr.common import retry_invoker
from flwr.common.secure_aggregation import secaggplus_constants
from flwr.proto import driver_pb2_grpc
from flwr.proto import run_pb2
from flwr.server import strategy as strategy_lib
from flwr.server.compat import driver_client_proxy
from flwr.server.compat import legacy_context
from flwr.server.driver import grpc_driver
from flwr.server.workflow import constant as workflow_constant
from flwr.server.workflow import secure_aggregation
import grpc
import numpy as np

from tffaml import errors
from tffaml.consortium import logs
from tffaml.consortium import messages
from tffaml.consortium import node as node_lib

_RECORD, _BLOB = 'tffaml', 'blob'
_REQUEST, _IDENTIFY, _IDENTITY = 'request', 'identify', 'identity'


def _content(kind: str, blob: bytes) -> RecordSet:
  return RecordSet(configs_records={_RECORD: ConfigsRecord({'kind': kind, _BLOB: blob})})


def _payload(message: FlowerMessage) -> tuple[str, bytes]:
  record = message.content.configs_records[_RECORD]
  return str(record['kind']), bytes(record[_BLOB])


def build_client_app(node: node_lib.Node, key: messages.PrivateKey) -> client_app.ClientApp:
  """The ClientApp a node's SuperNode runs: signed requests to `node`, nonces signed for identity.

  Queries carry signed requests and replies. Training rounds under secure
  aggregation are Flower 'train' messages, which Flower's SecAgg+ mod
  handles: its key agreement and masking around our handler, whose signed
  reply travels beside the masked update (in the FitRes metrics).
  """
  app = client_app.ClientApp(mods=[secaggplus_mod])

  @app.train()
  def train(message: FlowerMessage, context) -> FlowerMessage:
    del context
    fit_ins = recordset_compat.recordset_to_fitins(message.content, keep_input=True)
    # The peers whose key shares reached this node: the nodes the secure sum will hold besides it.
    protocol = message.content.configs_records[secaggplus_constants.RECORD_KEY_CONFIGS]
    peers = len(protocol[secaggplus_constants.Key.SOURCE_LIST])
    answer = node.handle_secure(bytes(fit_ins.config[_BLOB]), summed_with=peers + 1)
    if not answer.update:  # Refused: no update joins the sum (Flower reports the error).
      raise messages.Refused(messages.peek(answer.reply).header['reason'])
    fit_res = flwr_common.FitRes(
        status=flwr_common.Status(flwr_common.Code.OK, ''),
        parameters=flwr_common.ndarrays_to_parameters(list(answer.update)), num_examples=answer.weight,
        metrics={_BLOB: answer.reply})
    return message.create_reply(recordset_compat.fitres_to_recordset(fit_res, keep_input=False))

  @app.query()
  def query(message: FlowerMessage, context) -> FlowerMessage:
    del context
    kind, blob = _payload(message)
    if kind == _IDENTIFY:
      identity = messages.Message(_IDENTITY, {'institution': node.name, 'nonce': blob.hex()})
      return message.create_reply(_content(_IDENTITY, messages.seal(identity, key)))
    return message.create_reply(_content(_REQUEST, node.handle(blob)))

  return app


class _PollingClock:
  """The `time` module as Flower 1.12's SuperNode loop sees it, its fixed 3 s wait for work shortened.

  A round under SecAgg+ is five exchanges; waiting up to 3 s before each
  was most of a round's time. Every other use of `time` is unchanged.
  """

  def __init__(self, seconds: float):
    self._seconds = seconds

  def __getattr__(self, name):
    return getattr(time, name)

  def sleep(self, seconds: float) -> None:
    time.sleep(self._seconds if seconds == _FLOWER_IDLE_SECONDS else seconds)


_FLOWER_IDLE_SECONDS = 3  # flwr 1.12 client/app.py: `time.sleep(3)  # Wait for 3s before asking again`.
_RETRY_SECONDS = 10  # Longest wait between a node's tries to reach its SuperLink (Flower's doubles unbounded).
OUTAGE_LOG_SECONDS = 30.0  # Between a node's lines about a SuperLink it cannot reach.


class _Outage:
  """A node's view of its SuperLink's outages: one clear line every `every` s, and one when it is back.

  Flower 1.12 retries forever, logging 'Connection attempt failed' at
  doubling intervals (hours apart after a long outage), and says nothing
  once it is through.
  """

  def __init__(self, superlink: str, log: Callable[[str], None], every: float):
    self._superlink, self._log, self._every = superlink, log, every
    self._since: Optional[float] = None
    self._logged = 0.0

  def backoff(self, state) -> None:
    now = time.time()
    if self._since is None:
      self._since, self._logged = now, -self._every
    if now - self._logged >= self._every:
      self._logged = now
      since = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self._since))
      self._log(f'SuperLink {_reason(state.exception, self._superlink)} since {since}; retrying')

  def success(self, state) -> None:
    del state
    if self._since is not None:
      self._log(f'SuperLink at {self._superlink} reached again after {time.time() - self._since:.0f} s')
      self._since = None


def _reason(error: Exception, superlink: str) -> str:
  code = error.code() if isinstance(error, grpc.RpcError) else None
  if code == grpc.StatusCode.UNAUTHENTICATED:
    return (f'at {superlink} refuses this node ({error.details()}: is its key in the coordinator\'s'
            ' --auth-list-public-keys? scripts/keys.py admit)')
  return f'unreachable at {superlink} ({error.details() if code else error})'


class NotAdmitted(errors.InputError):
  """The SuperLink refused this node for good: its key, or the TLS certificates, or the host name."""


def _not_admitted(error: grpc.RpcError, *, superlink: str, ca: str, key: str) -> Optional[str]:
  """What is wrong with this node's credentials and how to fix it, in one line; None if retrying may help.

  Flower 1.12 says "Can't get server public key, SuperLink may be offline"
  for all of these, and retries forever. `ca`, `key`: the flags that gave them.
  """
  details = error.details() or ''
  host = superlink.rsplit(':', 1)[0]
  if error.code() == grpc.StatusCode.UNAUTHENTICATED:
    return (f'the SuperLink at {superlink} refused this node\'s key ({key}): it is not registered there. Send'
            f' {key}.pub to the coordinator to register (its --auth-list-public-keys), or give --key the key'
            ' that was registered.')
  if 'is not in peer certificate' in details or 'No match found for server name' in details:
    return (f'the SuperLink\'s TLS certificate is not for {host!r} (--superlink={superlink}): connect by a host'
            ' name its certificate names (scripts/pki.py --hosts), not another name or address of that machine.')
  if 'handshake failed' in details.lower() or 'CERTIFICATE_VERIFY_FAILED' in details:
    return (f'TLS with the SuperLink at {superlink} failed ({details.rsplit(": ", 1)[-1]}): its certificate is'
            f' not signed by the CA in {ca}: give --ca the federation\'s CA certificate (the coordinator\'s'
            ' ca.crt).')
  return None


class _Refusal:
  """Gives up Flower's retries on what retrying cannot fix (`should_giveup`), keeping it for `run_node`.

  Flower's connection swallows (logs) any exception and then returns as if
  stopped: `run_node` raises the refusal kept here.
  """

  def __init__(self, *, superlink: str, ca: str, key: str):
    self._where = dict(superlink=superlink, ca=ca, key=key)
    self.refused: Optional[NotAdmitted] = None

  def permanent(self, error: Exception) -> bool:
    problem = _not_admitted(error, **self._where) if isinstance(error, grpc.RpcError) else None
    if problem is not None:
      self.refused = NotAdmitted(problem)
      raise self.refused from None
    return False


class _OnlyOurWords(logging.Filter):
  """Drops Flower's lines that `NotAdmitted` replaces: "SuperLink may be offline", and its log of our refusal."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not isinstance(record.msg, NotAdmitted) and "Can't get server public key" not in record.getMessage()


def _retrying(outage: _Outage, refusal: Optional[_Refusal] = None):
  """Flower's RetryInvoker as the SuperNode makes it, its waits capped and outages logged by `outage`.

  With `refusal`, what retrying cannot fix ends the retries at once.
  """

  def make(*args, wait_gen_factory=None, on_backoff=None, on_success=None, **kwargs):
    del wait_gen_factory

    def backoff(state):
      outage.backoff(state)
      if on_backoff:
        on_backoff(state)

    def success(state):
      outage.success(state)
      if on_success:
        on_success(state)

    if refusal is not None:
      kwargs['should_giveup'] = refusal.permanent
    return retry_invoker.RetryInvoker(functools.partial(retry_invoker.exponential, max_delay=_RETRY_SECONDS),
                                      *args, on_backoff=backoff, on_success=success, **kwargs)

  return make


def run_node(node: node_lib.Node, key: messages.PrivateKey, *, superlink: str, root_certificates: bytes,
             authentication_keys, poll_seconds: float = 0.2, ca: str = '--ca', key_file: str = '--key') -> None:
  """Serves `node` through the SuperLink at `superlink` until stopped (TLS and node authentication on).

  `poll_seconds`: between the node's requests for work when it has none
  (Flower 1.12 waits 3 s; each costs the SuperLink one small TLS request).
  A key the SuperLink does not admit, or TLS that fails (another CA, a host
  name the certificate does not name), is `NotAdmitted`: one line naming
  the flag (`ca`, `key_file`) to fix.
  """
  client_app_lib.time = _PollingClock(poll_seconds)  # This process is the node's alone.
  refusal = _Refusal(superlink=superlink, ca=ca, key=key_file)
  client_app_lib.RetryInvoker = _retrying(_Outage(superlink, logs.log, OUTAGE_LOG_SECONDS), refusal)
  logging.getLogger('flwr').addFilter(_OnlyOurWords())
  app = build_client_app(node, key)
  client_app_lib.start_client_internal(
      server_address=superlink, node_config={}, load_client_app_fn=lambda *_: app,
      root_certificates=root_certificates, insecure=False, transport='grpc-rere',
      authentication_keys=authentication_keys)
  if refusal.refused is not None:
    raise refusal.refused


_POLL_SECONDS = 0.2  # Between pulls of replies (Flower's send_and_receive waits 3 s).


class _NamedDriver(grpc_driver.GrpcDriver):
  """A GrpcDriver that checks the SuperLink's certificate for `server_name`, not the address dialled.

  Flower 1.12 serves the Driver API with the Fleet API's certificate (one
  `--ssl-certfile`), which names the coordinator's public host; the Driver
  API listens on 127.0.0.1 only, so without this a certificate would need
  127.0.0.1 among its names ('Peer name 127.0.0.1 is not in peer certificate').
  """

  def __init__(self, *, server_name: str, **kwargs):
    super().__init__(**kwargs)
    self._server_name = server_name

  def _connect(self) -> None:
    if self._is_connected:
      return
    options = [('grpc.max_send_message_length', flwr_grpc.GRPC_MAX_MESSAGE_LENGTH),
               ('grpc.max_receive_message_length', flwr_grpc.GRPC_MAX_MESSAGE_LENGTH),
               ('grpc.ssl_target_name_override', self._server_name)]
    self._channel = grpc.secure_channel(self._addr, grpc.ssl_channel_credentials(self._cert), options=options)
    self._grpc_stub = driver_pb2_grpc.DriverStub(self._channel)


class FlowerTransport:
  """`coordinator.Transport` over a SuperLink's Driver API."""

  concurrent = True  # Its nodes are other processes: an exchange may run beside this process's builds.

  def __init__(self, driver_api: str, *, root_certificates: bytes,
               node_keys: Mapping[str, messages.PublicKey], timeout: float = 600.0,
               log: Callable[[str], None] = print, server_name: Optional[str] = None):
    """`server_name`: the name the SuperLink's certificate must hold, when not the host of `driver_api`."""
    if server_name:
      self._driver = _NamedDriver(server_name=server_name, run_id=0, driver_service_address=driver_api,
                                  root_certificates=root_certificates)
    else:
      self._driver = grpc_driver.GrpcDriver(run_id=0, driver_service_address=driver_api,
                                            root_certificates=root_certificates)
    # As flwr's own `flower-server-app` does: a run without an app bundle
    # (nodes run the client code installed at their institution).
    try:
      response = self._driver._stub.CreateRun(  # pylint: disable=protected-access
          run_pb2.CreateRunRequest(fab_id='tffaml/consortium', fab_version='1'))
    except grpc.RpcError as e:
      raise errors.RunFailed(f'cannot reach the SuperLink\'s Driver API at {driver_api}: {e.details()}; start'
                             ' flower-superlink (README "Deployment") or check --driver_api and --ca.') from None
    self._driver._run_id = self._run_id = response.run_id  # pylint: disable=protected-access
    # Kept as given: a live registry (`registry.LiveKeys`) applies an admitted, rotated or revoked key.
    self._node_keys, self._timeout, self._log = node_keys, timeout, log
    self._ids: dict[str, int] = {}
    self._asked: set[int] = set()  # Node ids asked to identify themselves.
    logging.getLogger('flwr').setLevel(logging.WARNING)  # SecAgg+ logs each stage at INFO: not progress.

  def wait_for(self, names, *, timeout: float, check: Callable[[], Optional[str]] = lambda: None) -> None:
    """Waits until every node in `names` has connected and proved its name.

    `check`: what has gone wrong meanwhile (e.g. a node process that exited), or None.
    """
    deadline = time.monotonic() + timeout
    while set(names) - set(self._ids):
      self._identify()
      if not set(names) - set(self._ids):
        break
      problem = check()
      if problem:
        raise errors.RunFailed(problem)
      if time.monotonic() > deadline:
        raise errors.RunFailed(f'nodes {sorted(set(names) - set(self._ids))} did not connect within'
                               f' {timeout:g} s; start them (scripts/node.py) and rerun.')
      time.sleep(2.0)

  def _identify(self) -> None:
    """Learns which connected node id is which institution (a signed fresh nonce each)."""
    nonces = {i: secrets.token_bytes(16) for i in self._driver.get_node_ids()}
    self._asked |= set(nonces)
    requests = [self._driver.create_message(_content(_IDENTIFY, nonce), 'query', i, 'identify')
                for i, nonce in nonces.items()]
    self._ids = {}
    for reply in self._send_and_receive(requests, timeout=60.0):
      if reply.has_error():
        continue
      node_id = reply.metadata.src_node_id
      name = self._verified_name(_payload(reply)[1], nonces[node_id])
      if name:
        self._ids[name] = node_id

  def _verified_name(self, blob: bytes, nonce: bytes) -> Optional[str]:
    claimed = messages.peek(blob).header.get('institution')
    if claimed not in self._node_keys:
      self._log(f'a connected node claims to be {claimed!r}, which is not registered: ignored.')
      return None
    identity = messages.unseal(blob, self._node_keys[claimed], sender=claimed, kinds=(_IDENTITY,))
    return claimed if identity.header['nonce'] == nonce.hex() else None

  def _node_ids(self, names) -> dict[int, str]:
    """Flower's node id of each of `names` that is connected, re-identifying when one is unknown."""
    # A restarted node comes back with a new node id, its old one gone
    # (each new id is asked once: an unregistered node is not asked every round).
    connected = set(self._driver.get_node_ids())
    if set(names) - set(self._ids) or set(self._ids.values()) - connected or connected - self._asked:
      self._identify()
    return {self._ids[name]: name for name in names if name in self._ids}

  def exchange(self, requests: Mapping[str, bytes]) -> dict[str, bytes]:
    by_id = self._node_ids(requests)
    outgoing = [self._driver.create_message(_content(_REQUEST, requests[name]), 'query', i, 'tffaml')
                for i, name in by_id.items()]
    replies = {}
    for reply in self._send_and_receive(outgoing, timeout=self._timeout):
      name = by_id.get(reply.metadata.src_node_id)
      if name is None or reply.has_error():
        self._log(f'node {name}: {reply.error.reason if reply.has_error() else "unknown sender"}')
        continue
      replies[name] = _payload(reply)[1]
    return replies

  def _send_and_receive(self, outgoing: list[FlowerMessage], *, timeout: float) -> list[FlowerMessage]:
    """The replies that came within `timeout` s (Flower's `send_and_receive`, polling faster)."""
    if not outgoing:
      return []
    try:
      # A node stopped before replying is answered for by the SuperLink (scripts/superlink.py) as unavailable.
      pending = set(self._driver.push_messages(outgoing))
      deadline, replies = time.monotonic() + timeout, []
      while pending and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
        pulled = list(self._driver.pull_messages(pending))
        replies.extend(pulled)
        pending -= {m.metadata.reply_to_message for m in pulled}
    except grpc.RpcError as e:
      raise errors.RunFailed(f'the SuperLink failed a request: {e.details()}; the run stopped at its last'
                             ' checkpoint: rerun the same command to resume once it is back.') from None
    return replies

  def secure_exchange(self, requests: Mapping[str, bytes], *, settings: 'SecureAggregation',
                      round_num: int) -> 'SecureSum':
    """Training requests answered through SecAgg+: each node's signed reply, the mean of their updates.

    The mean is weighted by each node's weight; only nodes whose masked
    update entered it reply. No mean when the protocol halted.
    """
    sendable = self._node_ids(requests)
    fit_ins = {i: flwr_common.FitIns(flwr_common.ndarrays_to_parameters([]), {_BLOB: requests[name]})
               for i, name in sendable.items()}
    strategy = _OneRound(fit_ins, self._driver, self._run_id, names=sendable)
    context = legacy_context.LegacyContext(
        flwr_common.Context(node_id=0, node_config={}, state=RecordSet(), run_config={}), strategy=strategy)
    context.state.configs_records[workflow_constant.MAIN_CONFIGS_RECORD] = ConfigsRecord(
        {workflow_constant.Key.CURRENT_ROUND: round_num})
    context.state.parameters_records[workflow_constant.MAIN_PARAMS_RECORD] = (
        recordset_compat.parameters_to_parametersrecord(flwr_common.ndarrays_to_parameters([]), True))
    workflow = _SecAggPlus(
        num_shares=1.0, reconstruction_threshold=settings.reconstruction_threshold,
        max_weight=settings.max_weight, clipping_range=settings.clipping_range, timeout=self._timeout)
    driver = _FastDriver(self._driver, self._send_and_receive, self._log, names=sendable)
    workflow(driver, context)
    nodes = max(len(sendable), 1)
    return SecureSum(replies=strategy.replies, mean=strategy.mean, sent=driver.sent / nodes,
                     received=driver.received / nodes)

  def close(self) -> None:
    self._driver.close()


@dataclasses.dataclass(frozen=True)
class SecureAggregation:
  """SecAgg+ settings (Flower 1.12's `SecAggPlusWorkflow`, every node a peer of every other)."""

  reconstruction_threshold: float  # Share of a node's peers whose key shares rebuild its secrets.
  clipping_range: float  # Each coordinate is clipped to +-this, then quantized to 2^22 levels.
  max_weight: float  # The largest weight of an update (1 for an unweighted mean).


class _SecAggPlus(secure_aggregation.SecAggPlusWorkflow):
  """Flower 1.12's SecAgg+, where a node silent at setup does not halt the round.

  Such a node sent no keys, so no other node masks with it and it holds no
  shares; Flower 1.12 still waits for shares of it at unmasking and halts.
  """

  def setup_stage(self, driver, context, state) -> bool:
    ok = super().setup_stage(driver, context, state)
    state.sampled_node_ids = set(state.active_node_ids)
    return ok


@dataclasses.dataclass(frozen=True)
class SecureSum:
  """A round through secure aggregation, as the coordinator sees it."""

  replies: dict[str, bytes]  # Signed, by node: those whose update is in the mean.
  mean: Optional[list[np.ndarray]]  # None when the protocol halted.
  sent: float  # Payload bytes per node of the protocol's messages, both ways.
  received: float


def _payload_bytes(content: RecordSet) -> int:
  """A message's payload: its arrays, bytes and strings, 8 bytes a number (before framing and TLS)."""
  total = sum(len(a.data) for record in content.parameters_records.values() for a in record.values())
  for record in (*content.configs_records.values(), *content.metrics_records.values()):
    for value in record.values():
      for v in value if isinstance(value, list) else [value]:
        total += len(v) if isinstance(v, (bytes, str)) else 8
  return total


class _FastDriver:
  """The driver as SecAgg+ uses it: replies polled every 0.2 s, refusals logged by node name, bytes counted."""

  def __init__(self, driver, send_and_receive, log, *, names: Mapping[int, str]):
    self._driver, self._send_and_receive, self._log, self._names = driver, send_and_receive, log, names
    self.sent = self.received = 0

  def create_message(self, *args, **kwargs) -> FlowerMessage:
    return self._driver.create_message(*args, **kwargs)

  def send_and_receive(self, outgoing, *, timeout: Optional[float] = None) -> list[FlowerMessage]:
    outgoing = list(outgoing)
    replies = self._send_and_receive(outgoing, timeout=timeout)
    self.sent += sum(_payload_bytes(m.content) for m in outgoing)
    self.received += sum(_payload_bytes(m.content) for m in replies if not m.has_error())
    for reply in replies:
      if reply.has_error():
        self._log(f'secure aggregation: node {self._names.get(reply.metadata.src_node_id)}:'
                  f' {reply.error.reason}')
    return replies


class _OneRound(strategy_lib.Strategy):
  """What SecAgg+'s workflow asks of a strategy, for one round of our training plans."""

  def __init__(self, fit_ins: Mapping[int, flwr_common.FitIns], driver, run_id: int, *,
               names: Mapping[int, str]):
    self._fit_ins, self._driver, self._run_id, self._names = fit_ins, driver, run_id, names
    self.replies: dict[str, bytes] = {}
    self.mean: Optional[list[np.ndarray]] = None

  def configure_fit(self, server_round, parameters, client_manager):
    del server_round, parameters, client_manager
    return [(driver_client_proxy.DriverClientProxy(i, self._driver, False, self._run_id), ins)
            for i, ins in self._fit_ins.items()]

  def aggregate_fit(self, server_round, results, failures):
    del server_round, failures  # Failures were logged as they came (_FastDriver).
    self.replies = {self._names[int(proxy.node_id)]: bytes(res.metrics[_BLOB]) for proxy, res in results}
    if results:
      self.mean = flwr_common.parameters_to_ndarrays(results[0][1].parameters)
    return None, {}

  def initialize_parameters(self, client_manager):
    return None

  def configure_evaluate(self, server_round, parameters, client_manager):
    return []

  def aggregate_evaluate(self, server_round, results, failures):
    return None, {}

  def evaluate(self, server_round, parameters):
    return None

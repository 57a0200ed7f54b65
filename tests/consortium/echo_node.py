"""A node process for tests of the Flower layer, without TensorFlow: it answers each request with itself.

  python tests/consortium/echo_node.py NAME KEY CA SUPERLINK

It runs `flower.run_node` as scripts/node.py does (TLS, node
authentication, the node's outage lines), its Node replaced by one that
answers `echo:<name>:<request>`; about 1 CPU-s to start instead of 17.
"""

import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.modules['tensorflow'] = None  # Flower's and our layer need it only for types and a TensorBoard helper.
sys.modules['tffaml.consortium.node'] = types.SimpleNamespace(Node=object)  # Imports TensorFlow.

from tffaml.consortium import flower  # pylint: disable=g-import-not-at-top
from tffaml.consortium import logs  # pylint: disable=g-import-not-at-top
from tffaml.consortium import messages  # pylint: disable=g-import-not-at-top


class EchoNode:

  def __init__(self, name: str):
    self.name = name

  def handle(self, blob: bytes) -> bytes:
    return b'echo:' + self.name.encode() + b':' + blob


def main(name: str, key_file: str, ca: str, superlink: str) -> None:
  key = messages.load_private_key(key_file)
  with open(ca, 'rb') as f:
    root_certificates = f.read()
  logs.log(f'node {name}: connecting to {superlink}')
  flower.run_node(EchoNode(name), key, superlink=superlink, root_certificates=root_certificates,
                  authentication_keys=(key, key.public_key()))


if __name__ == '__main__':
  main(*sys.argv[1:])

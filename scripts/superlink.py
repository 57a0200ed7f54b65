"""The coordinator's SuperLink: Flower 1.12's `flower-superlink`, taking the same flags.

  python scripts/superlink.py --ssl-ca-certfile pki/ca.crt --ssl-certfile pki/server.pem \
      --ssl-keyfile pki/server.key --auth-list-public-keys pki/authorized_nodes.csv \
      --auth-superlink-private-key pki/superlink --auth-superlink-public-key pki/superlink.pub \
      --fleet-api-address 0.0.0.0:9092 --driver-api-address 127.0.0.1:9091 \
      --database :flwr-in-memory-state:

Besides Flower's own SuperLink it lets a restarted node rejoin, re-admits the
running nodes after its own restart, and reloads the admitted keys when
the list changes (scripts/keys.py): see tffaml/consortium/superlink.py.
Stop it with SIGTERM or Ctrl-C.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tffaml.consortium import superlink  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  superlink.main()

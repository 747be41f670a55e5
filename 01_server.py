"""01_server.py: the swergio server every component connects to.

The hub of the swarm: clients register, join rooms, and every message sent to a room is passed
on to the room's other members. swergio's Server does the work; this script only starts it
quietly and a little more robustly (see QuietServer).
"""
from collections import defaultdict
import logging
import socket

import swergio.server
from swergio import Server

import swarm_common as sc

COMPONENT_NAME = "server"
log = logging.getLogger(COMPONENT_NAME)


def log_server_line(*args, **kwargs) -> None:
    """swergio's Server prints a line per message (about 80,000 in a 5-round run): those go to
    the log at DEBUG level, connections and rooms at INFO."""
    line = " ".join(str(a) for a in args)
    log.log(logging.DEBUG if line.startswith(("[BROADCAST]", "[LOGGING]")) else logging.INFO, line)


class QuietServer(Server):
    """swergio's Server with TCP_NODELAY and rooms that exist before anyone joins them.

    0.0.2 raises KeyError (and drops the sender) for a message to a room nobody has joined yet;
    an empty room simply delivers to nobody.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rooms = defaultdict(set, self.rooms)

    def handle_client(self, client: socket.socket, addr) -> None:
        # Each message is two small writes; without TCP_NODELAY a hop can stall ~40 ms on Nagle.
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle_client(client, addr)


if __name__ == "__main__":
    config = sc.setup_component(COMPONENT_NAME)
    swergio.server.print = log_server_line  # route the module's print() calls into our log
    # Nobody in these tutorials reads swergio's `_logging` room, so the server does not feed it.
    server = QuietServer(config.host, config.port, sc.FORMAT, sc.HEADER_LENGTH, enable_logging=False)
    log.info("swergio server on %s:%s", config.host, config.port)
    server.start()

"""A swergio peer for the tests of swarms across hosts (tests/test_hosts.py), run inside a network
namespace: it connects to the server at SWERGIO_HOST:SWERGIO_PORT, joins rooms, listens for a
while and prints what it got as one JSON line.

    python -m tests.peer plain ROOM[,ROOM...] SECONDS   # a plain swergio 0.0.2 Client: no secret
    python -m tests.peer swarm ROOM[,ROOM...] SECONDS   # a SwarmClient: presents SWARM_TOKEN
"""
from __future__ import annotations

import json
import socket
import sys
import time

from swergio import Client

from swarm_rl.client import ConnectionClosed, SwarmClient
from swarm_rl.settings import RuntimeSettings
from swarm_rl.wire import FORMAT, HEADER_LENGTH


def read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What arrives on `sock` within `seconds`, and whether the server closed it."""
    received, deadline = b"", time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            break
        except OSError:  # reset: the server closed it with our messages unread
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


class PlainClient(Client):
    """swergio 0.0.2's Client as it is, except that a refusal may come at any of its first sends:
    its constructor sends REGISTER and then joins the reserved rooms, and a server with a secret
    may close the connection between the two (a broken pipe)."""

    def register(self) -> None:
        try:
            super().register()
        except OSError:
            pass  # already refused; what matters is what it receives


def plain(settings: RuntimeSettings, rooms: list[str], seconds: float) -> dict:
    """A plain swergio client, which knows nothing of secrets: the raw bytes it receives."""
    client = PlainClient("stranger", settings.host, settings.port, FORMAT, HEADER_LENGTH)
    try:
        for room in rooms:
            client.join_room(room)
    except OSError:
        pass  # already refused; what matters is what it receives
    received, closed = read_until_closed(client.client, seconds)
    return {"bytes": len(received), "closed": closed}


def swarm(settings: RuntimeSettings, rooms: list[str], seconds: float) -> dict:
    """A SwarmClient with the settings' secret: the messages it receives in `rooms`."""
    client = SwarmClient("friend", settings, connect_timeout=10)
    for room in rooms:
        client.join_room(room)
    messages, closed, deadline = 0, False, time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            message = client.receive(timeout=left)
            messages += message is not None and message.get("TO_ROOM") in rooms
    except ConnectionClosed:
        closed = True
    client.client.close()
    return {"messages": messages, "closed": closed}


if __name__ == "__main__":
    socket.setdefaulttimeout(10)  # a plain client's connect must not wait for ever either
    kind, room_list, duration = sys.argv[1:4]
    peer = {"plain": plain, "swarm": swarm}[kind]
    print(json.dumps(peer(RuntimeSettings.from_env(), room_list.split(","), float(duration))), flush=True)

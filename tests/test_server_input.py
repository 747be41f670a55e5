"""The server script (01_server.py) as a real process, fed bad input on raw sockets.

Each test breaks the wire protocol on one connection and then checks three things: what the
server did to that connection (closed it, or skipped the message and kept it), that the server
says why in <log_dir>/server.log, and that it keeps serving everyone else: two healthy
SwarmClients in a room still exchange a message afterwards.

The wire format is swergio's: a 10-byte ASCII length header (left-aligned, space padded), then
a UTF-8 JSON body. swergio 0.0.2's own server spins forever on a truncated frame, drops a sender
for a message to an empty room or a recipient that vanished, and dies on a non-JSON body; the
script's SwarmServer is meant to do none of that.
"""
import contextlib
import json
import socket
import struct
import time
import uuid
from types import SimpleNamespace

import psutil
import pytest

from swarm_rl.client import SwarmClient
from swarm_rl.launcher import ManagedSwarm
from swarm_rl.protocol import custom_message
from swarm_rl.wire import frame
from tests.helpers import ROOT, assert_all_gone

ROOM = "room"


@contextlib.contextmanager
def server_process(config):
    """01_server.py alone, started by a ManagedSwarm on the test's free port; stopped and gone
    at the end."""
    swarm = ManagedSwarm(ROOT / "swarm.yaml", config)
    swarm.start("server")
    pid = swarm.pids()["server"]
    try:
        SwarmClient("probe", config, connect_timeout=30).close()  # listening: raw peers need not retry
        yield SimpleNamespace(settings=config, swarm=swarm, pid=pid, log=config.log_dir / "server.log")
    finally:
        swarm.stop()
    assert_all_gone([pid])


@pytest.fixture
def server(swarm_env):
    with server_process(swarm_env) as hub:
        yield hub


# --------------------------------------------------------------------------- raw peers
def encode(message) -> bytes:
    return frame(json.dumps(message).encode("utf-8"))


class RawPeer:
    """A swergio client written by hand, so it can send anything."""

    def __init__(self, server, name: str) -> None:
        self.name = name
        self.sock = socket.create_connection((server.settings.host, server.settings.port), timeout=5)
        self.send_message({"TYPE": "COMMAND/REGISTER", "NAME": name, "ID": uuid.uuid4().hex})

    def send_message(self, message) -> None:
        self.sock.sendall(encode(message))

    def join(self, room: str) -> None:
        self.send_message({"TYPE": "COMMAND/JOINROOM", "ROOM": room, "ID": uuid.uuid4().hex})

    def custom(self, room: str, **payload) -> None:
        self.send_message(custom_message(room, payload))

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Whether the server closes this connection within `timeout` (end of stream or reset)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(1 << 16):
                pass  # whatever the server still had in flight for us
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self, reset: bool = False) -> None:
        if reset:  # vanish: the kernel answers with RST instead of an orderly FIN
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------- checks
def server_log(server) -> str:
    return server.log.read_text(errors="replace") if server.log.exists() else ""


def wait_for_log(server, text: str, count: int = 1, timeout: float = 5.0) -> str:
    """The server's log once `text` appears in it `count` times; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (log := server_log(server)).count(text) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{text!r} not {count}x in server.log within {timeout:g} s:\n{log[-3000:]}")
        time.sleep(0.05)
    return log


def wait_for_disconnect(server, name: str, timeout: float = 5.0) -> str:
    """The server's log once it says that the connection registered as `name` is closed."""
    deadline = time.monotonic() + timeout
    while True:
        log = server_log(server)
        if any(name in line and line.endswith("disconnected") for line in log.splitlines()):
            return log
        if time.monotonic() > deadline:
            pytest.fail(f"server.log does not say within {timeout:g} s that {name} disconnected:\n{log[-3000:]}")
        time.sleep(0.05)


def receive_in(client, room: str, timeout: float = 5.0):
    """The next message `client` gets in `room`, or None after `timeout` seconds. (Everyone
    also hears the others' join commands in `_command`; those are skipped.)"""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = client.receive(timeout=left)
        if message is not None and message.get("TO_ROOM") == room:
            return message
    return None


def joined_listener(server, room: str = ROOM):
    """A SwarmClient in `room`, returned once the server has processed its join (it logs it)."""
    name = unique("listener")
    listener = SwarmClient(name, server.settings)
    listener.join_room(room)
    wait_for_log(server, f"[CLIENT ADDED] {name} to {room}")
    return listener


def assert_still_serving(server) -> None:
    """The server process is alive and two fresh, healthy clients exchange a message both ways."""
    assert server.swarm.running() == ["server"], "the server process died"
    a, b = SwarmClient(unique("healthy-a"), server.settings), SwarmClient(unique("healthy-b"), server.settings)
    try:
        room = unique("healthy")
        a.join_room(room), b.join_room(room)
        wait_for_log(server, f"[CLIENT ADDED] {a.name} to {room}")
        wait_for_log(server, f"[CLIENT ADDED] {b.name} to {room}")
        a.send(custom_message(room, {"HELLO": "b"}))
        hello = receive_in(b, room)
        assert hello is not None and hello["HELLO"] == "b" and hello["SENT_BY"] == a.name
        b.send(custom_message(room, {"HELLO": "a"}))
        reply = receive_in(a, room)
        assert reply is not None and reply["HELLO"] == "a" and reply["SENT_BY"] == b.name
    finally:
        a.close(), b.close()


def assert_delivered(listener, sender_name: str, marker: str) -> None:
    message = receive_in(listener, ROOM)
    assert message is not None, f"nothing from {sender_name} reached the room"
    assert message.get("MARK") == marker and message["SENT_BY"] == sender_name


# --------------------------------------------------------------------------- connections closed
def test_a_truncated_frame_ends_only_that_connection(server):
    peer = RawPeer(server, unique("truncator"))
    peer.sock.sendall(b"100       " + b'{"TYPE": "')  # the header promises 100 bytes, 10 arrive
    peer.close()
    wait_for_disconnect(server, peer.name)
    assert_still_serving(server)


def test_a_truncated_frame_is_logged_as_such(server):
    peer = RawPeer(server, unique("truncator"))
    peer.sock.sendall(b"100       " + b'{"TYPE": "')
    peer.close()
    log = wait_for_disconnect(server, peer.name)
    lines = [line for line in log.splitlines() if peer.name in line and "REGISTER" not in line]
    assert any("truncated" in line or "10 of 100" in line for line in lines), lines


@pytest.mark.parametrize("header", [b"9999999999", b"abcdefghij", b"-5        ", b"\xff" * 10],
                         ids=["absurd-length", "not-a-number", "negative", "not-ascii"])
def test_a_broken_header_closes_that_connection(server, header):
    peer = RawPeer(server, unique("broken"))
    peer.sock.sendall(header)
    # A byte stream cannot be re-synchronised after a broken header: the server hangs up.
    assert peer.closed_by_server(timeout=5), "the server kept a connection with a broken header"
    log = wait_for_disconnect(server, peer.name)
    assert f"malformed header {header!r}; closing this connection" in log
    peer.close()
    assert_still_serving(server)


def test_a_server_with_broken_connections_behind_it_is_idle(server):
    """swergio 0.0.2 spins on recv() == b'' forever after a truncated frame: one core per bad
    connection. After four bad connections the server must be back to (almost) zero CPU."""
    process = psutil.Process(server.pid)
    wait_for_disconnect(server, "probe")  # the fixture's probe: no connection is open now
    idle_threads = process.num_threads()  # (the probe's thread may still be finishing: <= below)
    names = []
    for header, body in [(b"100       ", b"0123456789"), (b"100       ", b""),
                         (b"9999999999", b"0123456789"), (b"abcdefghij", b"")]:
        peer = RawPeer(server, unique("bad"))
        peer.sock.sendall(header + body)
        peer.close()
        names.append(peer.name)
    for name in names:
        wait_for_disconnect(server, name)
    before = process.cpu_times()
    time.sleep(3)
    after = process.cpu_times()
    busy = (after.user - before.user) + (after.system - before.system)
    print(f"idle server after four broken connections: {busy:.2f} s CPU in 3 s, {process.num_threads()} threads")
    assert busy < 0.3, f"the idle server used {busy:.2f} s of CPU in 3 s"
    assert process.num_threads() <= idle_threads, "threads of closed connections are still alive"
    assert_still_serving(server)


# --------------------------------------------------------------------------- messages skipped
@pytest.mark.parametrize("body, reason", [
    (b"not json", "not JSON"),
    (b"\xff\xfe{}", "not JSON"),  # not UTF-8
    (b"", "not JSON"),  # a valid empty frame
    (b"[" * 100_000, "not JSON"),  # too deep for the JSON parser (RecursionError)
], ids=["text", "bad-utf8", "empty", "deeply-nested"])
def test_a_body_that_is_not_json_is_skipped_and_the_connection_stays(server, body, reason):
    listener = joined_listener(server)
    peer = RawPeer(server, unique("garbler"))
    peer.sock.sendall(frame(body))
    peer.custom(ROOM, MARK="after")  # the same connection goes on with a valid message
    assert_delivered(listener, peer.name, "after")
    assert f"{peer.name} (127.0.0.1:" in wait_for_log(server, f"skipped a body that is {reason}")
    peer.close(), listener.close()
    assert_still_serving(server)


@pytest.mark.parametrize("message, reason", [
    ({"TYPE": "DATA/CUSTOM", "TO_ROOM": [ROOM], "MARK": "bad"}, "whose TO_ROOM is not a string"),
    ({"TYPE": "DATA/CUSTOM", "TO": {"name": "x"}, "MARK": "bad"}, "whose TO is not a string"),
    ([{"TYPE": "DATA/CUSTOM", "TO_ROOM": ROOM, "MARK": "bad"}], "without a TYPE"),  # a list, not an object
    ({"TO_ROOM": ROOM, "MARK": "bad"}, "without a TYPE"),
    ({"TYPE": 7, "TO_ROOM": ROOM, "MARK": "bad"}, "without a TYPE"),
    ({"TYPE": "COMMAND/JOINROOM"}, "malformed join command"),  # no ROOM
    ({"TYPE": "COMMAND/JOINROOM", "ROOM": ["a", "b"]}, "malformed join command"),
    ({"TYPE": "COMMAND/LEAVEROOM", "ROOM": "never-joined"}, "malformed leave command"),
], ids=["to-room-list", "to-dict", "body-is-list", "no-type", "type-number", "join-no-room", "join-room-list",
        "leave-unknown-room"])
def test_a_malformed_message_is_skipped_and_the_connection_stays(server, message, reason):
    listener = joined_listener(server)
    peer = RawPeer(server, unique("sloppy"))
    peer.send_message(message)
    peer.custom(ROOM, MARK="after")
    assert_delivered(listener, peer.name, "after")  # not the bad one: it was skipped, not passed on
    log = wait_for_log(server, reason)
    assert any(peer.name in line for line in log.splitlines() if reason in line)
    peer.close(), listener.close()
    assert_still_serving(server)


def test_a_message_to_an_empty_room_does_not_cost_the_sender_its_connection(server):
    """swergio 0.0.2 raises KeyError for a room nobody has joined and drops the sender."""
    listener = joined_listener(server)
    peer = RawPeer(server, unique("lonely"))
    peer.custom("nobody-is-here", MARK="lost")
    peer.custom(ROOM, MARK="after")
    assert_delivered(listener, peer.name, "after")
    peer.close(), listener.close()
    assert_still_serving(server)


def test_a_recipient_that_vanished_does_not_cost_the_sender_its_connection(server):
    """A member of the room disappears abruptly (RST, with data still unread) while a sender
    keeps sending to the room: the sender and the other members go on, the vanished one is
    dropped, and the log names it."""
    vanisher = RawPeer(server, unique("vanisher"))
    vanisher.join(ROOM)
    wait_for_log(server, f"[CLIENT ADDED] {vanisher.name} to {ROOM}")
    listener = joined_listener(server)
    sender = SwarmClient(unique("sender"), server.settings)
    sender.send(custom_message(ROOM, {"MARK": "before"}))
    assert_delivered(listener, sender.name, "before")  # the vanisher got it too, and never reads it
    vanisher.close(reset=True)
    for i in range(50):  # a burst while the server finds out: some deliveries hit the dead socket
        sender.send(custom_message(ROOM, {"MARK": i}))
    for i in range(50):
        assert_delivered(listener, sender.name, i)
    log = wait_for_disconnect(server, vanisher.name)
    assert (f"could not deliver to {vanisher.name}" in log or f"{vanisher.name}: connection error" in log), \
        "the log does not say why the vanished client was dropped"
    sender.send(custom_message(ROOM, {"MARK": "after"}))
    assert_delivered(listener, sender.name, "after")
    sender.close(), listener.close()
    assert_still_serving(server)


def test_debug_level_logs_every_message_the_server_passes_on(swarm_env):
    with server_process(swarm_env.replace(log_level="DEBUG")) as hub:
        listener = joined_listener(hub)
        sender = SwarmClient(unique("sender"), swarm_env)
        sender.send(custom_message(ROOM, {"MARK": "traced"}))
        assert_delivered(listener, sender.name, "traced")
        sender.close(), listener.close()
        time.sleep(0.5)  # let the log line land, if there is one
        lines = [line for line in server_log(hub).splitlines() if " DEBUG " in line]
        assert any(sender.name in line and ROOM in line for line in lines), \
            f"no DEBUG line for the delivered message; DEBUG lines: {lines[:10]}"

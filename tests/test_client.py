"""SwarmClient and the server script on real loopback sockets (server in a thread)."""
import json
import logging
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import swergio.server
from swergio import Client, Trigger

from swarm_rl.checks import BadMessage
from swarm_rl.client import ConnectionClosed, SwarmClient
from swarm_rl.launcher import free_port
from swarm_rl.protocol import CUSTOM, ROOT_ID, WEIGHTS, custom_message
from swarm_rl.server import SwarmServer, log_server_line
from swarm_rl.settings import SwarmSettings
from swarm_rl.wire import FORMAT, HEADER_LENGTH, frame


@pytest.fixture
def hub():
    # Route swergio's per-message prints into logging, as the server script does. Not undone:
    # server threads outlive the test and may still print.
    swergio.server.print = log_server_line
    port = free_port()
    server = SwarmServer("127.0.0.1", port, FORMAT, HEADER_LENGTH, enable_logging=False)
    server.server.listen()  # listening before the thread starts: plain clients do not retry
    threading.Thread(target=server.start, daemon=True).start()
    yield SimpleNamespace(settings=SwarmSettings(port=port), server=server)
    server.server.close()


def joined(hub, name, room):
    """Wait until the server has `name` in `room`: swergio does not acknowledge joins, so a
    message sent on another connection can otherwise overtake the join."""
    wait_for(lambda: name in {hub.server.names.get(c) for c in list(hub.server.rooms.get(room, ()))})


def serve(client):
    thread = threading.Thread(target=client.listen, daemon=True)
    thread.start()
    return thread


def receive_in(client, room, timeout=5.0):
    """The next message in `room` (everyone also hears the others' join commands)."""
    deadline = time.monotonic() + timeout
    while (message := client.receive(timeout=deadline - time.monotonic())) is not None:
        if message.get("TO_ROOM") == room:
            return message
    raise AssertionError(f"nothing in {room}")


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_handlers_run_in_the_order_they_were_added(hub):
    seen = []
    receiver = SwarmClient("receiver", hub.settings)
    for index in range(6):
        receiver.add_eventHandler(lambda msg, state, i=index: seen.append(i), CUSTOM,
                                  trigger=Trigger(CUSTOM, "room"))
    sender = SwarmClient("sender", hub.settings)
    sender.join_room("room")
    serve(receiver)
    joined(hub, "receiver", "room")
    sender.send(custom_message("room", {"X": 1}))
    wait_for(lambda: len(seen) == 6)
    assert seen == list(range(6))
    sender.close(), receiver.close()


def test_a_failing_handler_is_logged_and_the_client_keeps_serving(hub, caplog):
    handled = []

    def picky(msg, state):
        if msg["X"] < 0:
            raise BadMessage("X must not be negative")
        if msg["X"] == 0:
            raise ZeroDivisionError("boom")
        handled.append(msg["X"])
        return {"ECHO": msg["X"]}

    receiver = SwarmClient("receiver", hub.settings)
    receiver.add_eventHandler(picky, CUSTOM, responseRooms="out", trigger=Trigger(CUSTOM, "in"))
    sender = SwarmClient("sender", hub.settings)
    sender.join_room("in"), sender.join_room("out")
    serve(receiver)
    joined(hub, "receiver", "in"), joined(hub, "sender", "out")
    with caplog.at_level(logging.WARNING, logger="swarm"):
        for x in [-1, 0, 5]:
            sender.send(custom_message("in", {"X": x}, root_id="r"))
        reply = receive_in(sender, "out")
    assert reply["ECHO"] == 5 and reply[ROOT_ID] == "r" and reply["SENT_BY"] == "receiver"
    assert handled == [5]
    assert "X must not be negative" in caplog.text and "boom" in caplog.text
    sender.close(), receiver.close()


def test_a_plain_swergio_client_reads_our_messages(hub):
    plain = Client("plain", "127.0.0.1", hub.settings.port)
    plain.join_room("room")
    ours = SwarmClient("ours", hub.settings)
    joined(hub, "plain", "room")
    ours.send(custom_message("room", {WEIGHTS: list(range(2000))}))
    while (message := plain.receive()).get("TO_ROOM") != "room":
        pass
    assert message[WEIGHTS] == list(range(2000)) and message["SENT_BY"] == "ours"
    plain.close(), ours.close()


def test_receive_times_out_with_none(hub):
    client = SwarmClient("idle", hub.settings)
    began = time.monotonic()
    assert client.receive(timeout=0.3) is None
    assert 0.25 < time.monotonic() - began < 2


def test_connecting_to_nothing_fails_clearly_and_in_time():
    port = free_port()
    began = time.monotonic()
    with pytest.raises(ConnectionError, match=f"no swergio server at 127.0.0.1:{port}"):
        SwarmClient("lonely", SwarmSettings(port=port), connect_timeout=1.0)
    assert time.monotonic() - began < 5


@pytest.fixture
def raw_peer():
    """A fake server: accepts one SwarmClient and lets the test write raw bytes to it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = {}
    threading.Thread(target=lambda: accepted.setdefault("sock", listener.accept()[0]), daemon=True).start()
    client = SwarmClient("client", SwarmSettings(port=port))
    wait_for(lambda: "sock" in accepted)
    yield client, accepted["sock"]
    accepted["sock"].close(), listener.close()


def test_undecodable_bodies_are_skipped_and_split_frames_reassembled(raw_peer, caplog):
    client, peer = raw_peer
    good = frame(b'{"TYPE": "DATA/CUSTOM", "X": 1}')
    with caplog.at_level(logging.WARNING, logger="swarm"):
        peer.sendall(frame(b"not json") + frame(b"[1, 2]") + frame(b"\xff\xfe") + good[:7])
        time.sleep(0.1)
        peer.sendall(good[7:])
        assert client.receive(timeout=5) == {"TYPE": "DATA/CUSTOM", "X": 1}
    assert caplog.text.count("undecodable") == 3


@pytest.mark.parametrize("header", [b"abcdefghij", b"-5        ", b"9999999999"])
def test_a_broken_header_closes_the_connection_loudly(raw_peer, header):
    client, peer = raw_peer
    peer.sendall(header + b"{}")
    with pytest.raises(ConnectionClosed, match="malformed message header"):
        client.receive(timeout=5)


def test_listen_returns_when_the_server_goes_away(raw_peer):
    client, peer = raw_peer
    thread = serve(client)
    peer.close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_messages_without_type_or_room_are_skipped_and_serving_goes_on(raw_peer, caplog):
    client, peer = raw_peer
    handled = []
    client.add_eventHandler(lambda msg, state: handled.append(msg["X"]), CUSTOM, trigger=Trigger(CUSTOM, "room"))
    with caplog.at_level(logging.WARNING, logger="swarm"):
        serve(client)
        for body in [b'{"TO_ROOM": "room", "X": 1}', b'{"TYPE": "DATA/CUSTOM", "TO": "client", "X": 2}',
                     b'{"TYPE": 7, "TO_ROOM": "room", "X": 3}', b'{"TYPE": "DATA/CUSTOM", "TO_ROOM": "room", "X": 4}']:
            peer.sendall(frame(body))
        wait_for(lambda: handled == [4])
    assert caplog.text.count("without a valid TYPE/TO_ROOM") == 3


def test_replies_can_go_to_a_room_without_listening_to_it(hub):
    """Models send logits without joining `logits`: they must not receive each other's."""
    models = []
    for name in ("model-a", "model-b"):
        client = SwarmClient(name, hub.settings)
        client.add_eventHandler(lambda msg, state: {"FROM": msg["X"]}, CUSTOM, responseRooms="out",
                                trigger=Trigger(CUSTOM, "in"), listen_to_response_rooms=False)
        models.append(client)
    collector = SwarmClient("collector", hub.settings)
    collector.join_room("out")
    for client, name in zip(models, ("model-a", "model-b")):
        joined(hub, name, "in")
        assert name not in {hub.server.names.get(c) for c in hub.server.rooms.get("out", ())}
        serve(client)
    joined(hub, "collector", "out")
    sender = SwarmClient("sender", hub.settings)
    sender.send(custom_message("in", {"X": 7}))
    answers = [receive_in(collector, "out"), receive_in(collector, "out")]
    assert sorted(m["SENT_BY"] for m in answers) == ["model-a", "model-b"] and all(m["FROM"] == 7 for m in answers)
    sender.close(), collector.close(), [m.close() for m in models]


def test_large_messages_from_two_senders_never_interleave(hub):
    """The server writes each delivery in one go under the recipient's lock."""
    receiver = SwarmClient("receiver", hub.settings)
    receiver.join_room("room")
    joined(hub, "receiver", "room")
    # A small send buffer towards the receiver splits every delivery into many partial writes.
    (towards_receiver,) = [c for c, name in hub.server.names.items() if name == "receiver"]
    towards_receiver.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    senders = [SwarmClient(f"sender{i}", hub.settings) for i in range(2)]
    payload = list(range(40_000))  # about 250 KB of JSON per message

    def flood(client, tag):
        for n in range(15):
            client.send(custom_message("room", {"TAG": tag, "N": n, "DATA": payload}))

    threads = [threading.Thread(target=flood, args=(s, i)) for i, s in enumerate(senders)]
    [t.start() for t in threads]
    time.sleep(0.5)  # let both senders' deliveries pile up against the full buffer
    received = [receive_in(receiver, "room", timeout=20) for _ in range(30)]
    [t.join(10) for t in threads]
    for tag in (0, 1):
        assert [m["N"] for m in received if m["TAG"] == tag] == list(range(15))
    assert all(m["DATA"] == payload for m in received)
    receiver.close(), [s.close() for s in senders]


def test_timers_run_while_listening_and_their_replies_are_sent(hub):
    ticks, states = [], []

    def tick(state):
        states.append(state)
        ticks.append(time.monotonic())
        return {"TICK": len(ticks)} if len(ticks) == 3 else None

    client = SwarmClient("ticker", hub.settings, state="ticker state")
    client.add_timer(tick, 0.1, responseRooms="ticks")
    listener = SwarmClient("listener", hub.settings)
    listener.join_room("ticks")
    joined(hub, "listener", "ticks")
    serve(client)
    message = receive_in(listener, "ticks", timeout=5)
    assert message["TICK"] == 3 and message["SENT_BY"] == "ticker" and message["TYPE"] == CUSTOM.id
    wait_for(lambda: len(ticks) >= 5)
    assert min(np.diff(ticks)) >= 0.09  # not a busy loop
    assert set(states) == {"ticker state"}  # a timer receives the client's state object
    client.close(), listener.close()


def test_a_member_that_stops_reading_is_dropped_after_the_send_timeout(hub):
    """Without a bound, a frozen member with a full socket would block its room's senders forever."""
    hub.server.send_timeout = 1.0
    frozen = socket.create_connection(("127.0.0.1", hub.settings.port))  # joins, then never reads
    frozen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for command in ({"TYPE": "COMMAND/REGISTER", "NAME": "frozen"}, {"TYPE": "COMMAND/JOINROOM", "ROOM": "room"}):
        body = json.dumps(command).encode()
        frozen.sendall(frame(body))
    listener = SwarmClient("listener", hub.settings)
    listener.join_room("room")
    joined(hub, "frozen", "room"), joined(hub, "listener", "room")
    sender = SwarmClient("sender", hub.settings)
    began = time.monotonic()
    payload = "x" * 100_000
    for n in range(60):  # about 6 MB: far more than the frozen member's buffers hold
        sender.send(custom_message("room", {"N": n, "DATA": payload}))
    received = [receive_in(listener, "room", timeout=20)["N"] for _ in range(60)]
    assert received == list(range(60))
    assert time.monotonic() - began < 15
    wait_for(lambda: "frozen" not in hub.server.names.values(), timeout=10)
    frozen.close(), listener.close(), sender.close()

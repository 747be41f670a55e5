"""SwarmClient: swergio 0.0.2's Client, subclassed where it misbehaves; `Handlers`: a script
registers each handler where it defines it."""
from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from swergio import MESSAGE_TYPE, Client, Trigger
from swergio.messageType import MessageTypeSetting

from swarm_rl.checks import BadMessage
from swarm_rl.protocol import COMPONENT, COMPONENT_ID, CUSTOM, PING, PONG, ROOM_PING
from swarm_rl.settings import RuntimeSettings
from swarm_rl.wire import FORMAT, HEADER_LENGTH, TOKEN, body_length, frame

log = logging.getLogger("swarm")


class ConnectionClosed(ConnectionError):
    """The swergio server closed the connection."""


@dataclass
class _Timer:
    function: Callable
    interval: float
    rooms: list[str]
    due: float = field(default_factory=time.monotonic)


@dataclass
class Reply:
    """A handler's message for `room`, when it is not (only) for the handler's own reply room."""
    room: str
    message: dict[str, Any]


def _trigger_sets(trigger: Trigger | None) -> tuple[frozenset[str], frozenset[str]]:
    """The type ids and rooms a Trigger fires on; none for a Trigger without rooms (direct messages only)."""
    if trigger is None or trigger.rooms is None:
        return frozenset(), frozenset()
    return frozenset(t.id for t in trigger.types), frozenset(trigger.rooms)


class SwarmClient(Client):
    """swergio's Client with the failures of 0.0.2 fixed:

    - connect waits (bounded) for the server instead of failing on the first refusal;
    - send is one thread-safe write with TCP_NODELAY (two writes stall on Nagle's algorithm);
    - receive takes a timeout, keeps partial frames and skips undecodable bodies;
    - handlers run in the order added, each as `handler(msg, state)` with the client's one state
      object, and one that raises is logged and its message skipped;
    - triggers are matched against sets made once, not looked up per message;
    - it answers PING in `ping`, so launchers can tell when it is ready;
    - with SWARM_TOKEN its REGISTER carries the secret the server asks for.
    """

    def __init__(self, name: str, settings: RuntimeSettings | None = None, component_id: str | None = None,
                 connect_timeout: float = 30.0, member_ids: list[str] | None = None, state: Any = None) -> None:
        self.settings = settings or RuntimeSettings.from_env()
        self.state = state  # the component's state: every handler and timer receives it
        self.component_id = component_id or uuid.uuid4().hex
        self.member_ids = member_ids or [self.component_id]  # who answers a PING: this client or each hosted model
        self.connect_timeout = connect_timeout
        self.handlers: list = []
        self.timers: list[_Timer] = []
        self._buffer = bytearray()
        self._heard = False  # whether the server has sent anything yet
        self._send_lock = threading.Lock()
        super().__init__(name, self.settings.host, self.settings.port, FORMAT, HEADER_LENGTH,
                         component_id=self.component_id)
        self.add_eventHandler(self._pong, CUSTOM, responseRooms=ROOM_PING, trigger=Trigger(CUSTOM, ROOM_PING))

    def _pong(self, msg: dict[str, Any], state: Any = None) -> list[dict[str, Any]] | None:
        """Answer a PING for this client or each model it hosts; needs no state."""
        if PING in msg:
            return [{PONG: msg[PING], COMPONENT: self.name, COMPONENT_ID: member} for member in self.member_ids]
        return None

    def connect(self, server: str, port: int) -> socket.socket:
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                sock = socket.create_connection((server, port), timeout=2.0)
                break
            except OSError as error:
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"{self.name}: no swergio server at {server}:{port} after "
                        f"{self.connect_timeout:.0f} s ({error})") from None
                time.sleep(0.1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        return sock

    def send(self, message: dict[str, Any]) -> None:
        if self.settings.token and message.get("TYPE") == MESSAGE_TYPE.COMMAND.REGISTER.id:
            message = {**message, TOKEN: self.settings.token}
        data = frame(json.dumps(message).encode(FORMAT))
        with self._send_lock:
            try:
                self.client.sendall(data)
            except OSError as error:  # e.g. a server with a secret we lack has closed the connection
                raise ConnectionClosed(f"{self.name}: sending to the server failed: {error}{self._hint()}") from None

    def receive(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next message, or None when `timeout` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            body = self._take_frame()
            if body is not None:
                try:
                    message = json.loads(body.decode(FORMAT))
                    if not isinstance(message, dict):
                        raise ValueError("not a JSON object")
                    return message
                except (UnicodeDecodeError, ValueError, RecursionError) as error:
                    log.warning("%s: skipped an undecodable message (%s): %.80r", self.name, error, body)
                    continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                # select, not settimeout: the socket stays blocking for sendall in other threads
                if remaining is not None and not select.select([self.client], [], [], remaining)[0]:
                    return None
                chunk = self.client.recv(1 << 16)
            except (OSError, ValueError) as error:  # ValueError: the socket was closed meanwhile
                raise ConnectionClosed(f"{self.name}: connection to the server failed: {error}{self._hint()}") from None
            if not chunk:
                raise ConnectionClosed(f"{self.name}: the swergio server closed the connection{self._hint()}")
            self._heard = True
            self._buffer += chunk

    def _hint(self) -> str:
        """Why a silent close may have happened: a server with a secret drops clients without it."""
        if self._heard:
            return ""
        return " before sending anything (a server with SWARM_TOKEN refuses clients without its secret)"

    def _take_frame(self) -> bytes | None:
        if len(self._buffer) < HEADER_LENGTH:
            return None
        header = bytes(self._buffer[:HEADER_LENGTH])
        length = body_length(header)
        if length is None:
            # The stream cannot be re-synchronised after a broken header: give up loudly.
            raise ConnectionClosed(f"{self.name}: malformed message header {header!r}")
        if len(self._buffer) < HEADER_LENGTH + length:
            return None
        body = bytes(self._buffer[HEADER_LENGTH:HEADER_LENGTH + length])
        del self._buffer[:HEADER_LENGTH + length]
        return body

    def add_eventHandler(self, handleFunction: Callable, responseType, responseRooms=None,
                         responseComponent=None, trigger=None, listen_to_response_rooms: bool = True) -> None:
        """As swergio's, plus `listen_to_response_rooms=False`: reply into the response rooms
        without joining them (swergio joins them, so every model would receive every other's logits)."""
        before = set(self.eventHandlers)
        super().add_eventHandler(handleFunction, responseType,
                                 responseRooms if listen_to_response_rooms else None, responseComponent, trigger)
        (handler,) = self.eventHandlers - before
        if not listen_to_response_rooms:
            handler.responseRooms = responseRooms if isinstance(responseRooms, list) else [responseRooms]
        self.handlers.append((handler, *_trigger_sets(handler.trigger)))

    def responses(self, handler, message: dict[str, Any]) -> list[dict[str, Any]]:
        """What swergio's EventHandler.handle returns, without its deep copy of every response; a
        handler may return a list (one message each), and a `Reply` goes to its own room."""
        returned = handler.handleFunction(message, self.state)
        if returned is None:
            return []
        sent = []
        for response in returned if isinstance(returned, list) else [returned]:
            if response is None:
                continue
            rooms = handler.responseRooms or []
            if isinstance(response, Reply):
                response, rooms = dict(response.message), [response.room]
            response.setdefault("ID", uuid.uuid4().hex)
            if handler.responseType is not None:
                response["TYPE"] = handler.responseType.id
            if handler.responseComponent is not None:
                response["TO"] = handler.responseComponent
            response = self.add_propagated_fields(message, response)
            sent += [{**response, "TO_ROOM": room} for room in rooms]
        return sent

    def dispatch(self, message: dict[str, Any]) -> None:
        """Run every triggered handler on one message and send what they return."""
        if not isinstance(message.get("TYPE"), str) or not isinstance(message.get("TO_ROOM"), str):
            # Every handler here listens to a room (swergio's Trigger would raise on a direct message).
            log.warning("%s: skipped a message without a valid TYPE/TO_ROOM: %.200r", self.name, message)
            return
        kind, room = message["TYPE"], message["TO_ROOM"]
        for handler, type_ids, rooms in self.handlers:
            if kind not in type_ids or room not in rooms:
                continue
            try:
                for response in self.responses(handler, message):
                    self.send(response)
            except BadMessage as error:
                log.warning("%s: skipped message in %s from %s: %s", self.name, message.get("TO_ROOM"),
                            message.get("SENT_BY", "?"), error)
            except (ConnectionError, OSError):
                raise
            except Exception:
                log.exception("%s: handler %s failed on a message in %s; skipped", self.name,
                              handler.handleFunction.__name__, message.get("TO_ROOM"))

    def add_timer(self, function: Callable, interval: float, responseRooms: str | list[str]) -> None:
        """While listening, call `function(state)` every `interval` seconds; a dict it returns goes
        to `responseRooms` (so a component can notice that what it waits for did not come)."""
        rooms = responseRooms if isinstance(responseRooms, list) else [responseRooms]
        self.timers.append(_Timer(function, interval, rooms))

    def run_due_timers(self) -> None:
        now = time.monotonic()
        for timer in self.timers:
            if now < timer.due:
                continue
            timer.due = now + timer.interval
            try:
                response = timer.function(self.state)
            except Exception:
                log.exception("%s: timer %s failed", self.name, timer.function.__name__)
                continue
            for room in timer.rooms if response else []:
                self.send({"ID": uuid.uuid4().hex, "TYPE": CUSTOM.id, "SENT_BY": self.name, **response,
                           "TO_ROOM": room})

    def listen(self) -> None:
        """Serve until the server goes away."""
        log.info("%s connected to %s:%s, serving", self.name, self.server, self.port)
        try:
            while True:
                wait = min((t.due for t in self.timers), default=None)
                message = self.receive(None if wait is None else max(0.0, wait - time.monotonic()))
                if message is not None:
                    self.dispatch(message)
                self.run_due_timers()
        except ConnectionClosed as reason:
            log.info("%s; exiting", reason)
        finally:
            self.client.close()


@dataclass
class Handlers:
    """A component's handlers, each registered where it is defined (`@handlers.on("logits",
    reply_to="action")`); `wire` adds them to a client in that order, the order they see a message."""
    entries: list[Callable[[SwarmClient], None]] = field(default_factory=list)  # each adds one to a client

    def on(self, room: str, reply_to: str | None = None, join_reply_room: bool = True,
           message_type: MessageTypeSetting = CUSTOM, reply_type: MessageTypeSetting | None = None) -> Callable:
        """Call `handler(msg, state)` for every `message_type` message in `room`; what it returns goes to
        `reply_to` as `reply_type` (default: the same type), without joining it if `join_reply_room=False`."""
        def register(function: Callable) -> Callable:
            self.entries.append(lambda client: client.add_eventHandler(
                function, reply_type or message_type, responseRooms=reply_to, trigger=Trigger(message_type, room),
                listen_to_response_rooms=join_reply_room))
            return function
        return register

    def every(self, seconds: float, reply_to: str) -> Callable:
        """Call `function(state)` every `seconds` while listening; what it returns goes to `reply_to`."""
        def register(function: Callable) -> Callable:
            self.entries.append(lambda client: client.add_timer(function, seconds, responseRooms=reply_to))
            return function
        return register

    def wire(self, client: SwarmClient) -> SwarmClient:
        for add_to in self.entries:
            add_to(client)
        return client

"""The swarm's hub: swergio's Server (rooms, registration) with a per-connection loop that
survives bad input and sends each message in one write."""
from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import struct
import threading
from collections import defaultdict
from collections.abc import Iterator

import swergio.server
from swergio import MESSAGE_TYPE, Server

from swarm_rl.settings import RuntimeSettings
from swarm_rl.wire import FORMAT, HEADER_LENGTH, TOKEN, body_length, frame

log = logging.getLogger("server")

COMMANDS = {MESSAGE_TYPE.COMMAND.REGISTER.id: "register", MESSAGE_TYPE.COMMAND.JOINROOM.id: "join",
            MESSAGE_TYPE.COMMAND.LEAVEROOM.id: "leave", MESSAGE_TYPE.COMMAND.DISCONNECT.id: "disconnect"}


def log_server_line(*args, **kwargs) -> None:
    """swergio's Server prints connections and rooms; those go to the log at INFO level."""
    log.info(" ".join(str(a) for a in args))


class SwarmServer(Server):
    """swergio's Server with `handle_client` made sturdy; unlike 0.0.2's:

    - a message to an empty room is delivered to nobody, instead of dropping the sender;
    - a closed connection ends its loop, and a broken header closes that connection, instead of spinning;
    - a body that is not JSON is logged and skipped;
    - a failing recipient is dropped, not the sender, and so is one that blocks for `send_timeout`;
    - each delivery is one write with TCP_NODELAY; messages are logged only at DEBUG.

    With a `token` (SWARM_TOKEN) it admits only connections that present it (`_admit`), and never
    passes the secret on or logs it.
    """

    send_timeout = 30.0  # seconds a recipient may leave its socket full before it is dropped
    handshake_timeout = 10.0  # with a token: seconds a new connection has to present it

    def __init__(self, *args, token: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.token = token.encode(FORMAT)
        self.send_locks: defaultdict[socket.socket, threading.Lock] = defaultdict(threading.Lock)

    def handle_client(self, client: socket.socket, addr) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A kernel send timeout, not settimeout(): reads stay blocking without a limit.
        seconds, fraction = divmod(self.send_timeout, 1)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                          struct.pack("ll", int(seconds), int(fraction * 1e6)))
        log.info("connection from %s:%s", *addr)
        try:
            for body in self._bodies(client, addr):
                decoded = self._decode(body, client, addr)
                if decoded is not None and not self._handle(client, *decoded):
                    break
        except OSError as error:
            log.info("%s: connection error: %s", self._name(client), error)
        finally:
            name = self._name(client, default="unregistered client")
            self._forget(client)
            log.info("%s (%s:%s) disconnected", name, *addr)

    def _bodies(self, client: socket.socket, addr) -> Iterator[bytes]:
        """The connection's message bodies until it closes; with a token, none unless admitted."""
        if self.token:
            first = self._admit(client, addr)
            if first is None:
                return
            yield first
        while (body := self._read_frame(client, addr)) is not None:
            yield body

    def _admit(self, client: socket.socket, addr) -> bytes | None:
        """The connection's first message body if its TOKEN is the server's secret and it arrives
        within `handshake_timeout` seconds; else None (logged), and the connection is to be closed."""
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)  # the blocked read below returns

        timer = threading.Timer(self.handshake_timeout, expire)
        timer.start()
        try:
            body = self._read_frame(client, addr)
        finally:
            timer.cancel()
        message = None
        if body is not None and not expired.is_set():
            with contextlib.suppress(UnicodeDecodeError, ValueError, RecursionError):
                message = json.loads(body)
        presented = message.get(TOKEN) if isinstance(message, dict) else None
        if expired.is_set():
            reason = f"no first message within {self.handshake_timeout:g} s"
        elif presented is None:
            reason = "no TOKEN in its first message"
        elif not (isinstance(presented, str) and hmac.compare_digest(presented.encode(FORMAT), self.token)):
            reason = "a wrong TOKEN"
        else:
            return body  # `_decode` takes the secret out before anything is logged or passed on
        log.warning("refused the connection from %s:%s: %s", *addr, reason)
        return None

    def _handle(self, client: socket.socket, body: bytes, message: dict) -> bool:
        """Act on one message (a command, then delivery); False when the client disconnects."""
        command = COMMANDS.get(message["TYPE"])
        if command == "disconnect":
            return False
        try:
            if command == "register":
                self.register_client(client, message)
            elif command == "join":
                self.join_room(client, message)
            elif command == "leave":
                self.leave_room(client, message)
        except (KeyError, TypeError) as error:
            log.warning("%s: skipped a malformed %s command: %r", self._name(client), command, error)
            return True
        self.deliver(client, body, message)
        return True

    def _read_frame(self, client: socket.socket, addr) -> bytes | None:
        """The next message body; None when the peer closed or sent a broken header."""
        header, got = _recv_exactly(client, HEADER_LENGTH)
        if header is None:
            if got:
                log.warning("%s (%s:%s): closed after %d of %d header bytes", self._name(client), *addr, got,
                            HEADER_LENGTH)
            return None
        length = body_length(header)
        if length is None:
            log.warning("%s (%s:%s): malformed header %r; closing this connection", self._name(client), *addr,
                        header)
            return None
        body, got = _recv_exactly(client, length)
        if body is None:
            log.warning("%s (%s:%s): truncated message: closed after %d of %d bytes", self._name(client), *addr,
                        got, length)
        return body

    def _decode(self, body: bytes, client: socket.socket, addr) -> tuple[bytes, dict] | None:
        """The body (without a TOKEN) and its message, or None for one that is skipped."""
        try:
            message = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            log.warning("%s (%s:%s): skipped a body that is not JSON (%s): %.80r", self._name(client), *addr,
                        error, body)
            return None
        if isinstance(message, dict) and TOKEN in message:
            # A client's secret is for the server alone, whether or not this server has one.
            del message[TOKEN]
            body = json.dumps(message).encode(FORMAT)
        if not isinstance(message, dict) or not isinstance(message.get("TYPE"), str):
            log.warning("%s: skipped a message without a TYPE: %.200r", self._name(client), body)
            return None
        for key in ("TO_ROOM", "TO"):
            if key in message and not isinstance(message[key], str):
                log.warning("%s: skipped a message whose %s is not a string: %.200r", self._name(client), key, body)
                return None
        return body, message

    def deliver(self, sender: socket.socket, body: bytes, message: dict) -> None:
        """Pass the message on to the other members of its room and to its named recipient."""
        if "SENT_BY" not in message:  # swergio's convention: recipients learn who sent it
            message["SENT_BY"] = self._name(sender)
            body = json.dumps(message).encode(FORMAT)
        data = frame(body)
        if log.isEnabledFor(logging.DEBUG):  # SWARM_LOG_LEVEL=DEBUG: every message, as swergio printed
            log.debug("%s -> %s: %.200s", self._name(sender), message.get("TO_ROOM", message.get("TO")),
                      body.decode(FORMAT, "replace"))
        with self.clients_lock:
            recipients = [c for c in self.rooms.get(message.get("TO_ROOM"), ()) if c is not sender]
            if "TO" in message:
                recipients += [c for c in self.clients if self.names.get(c) == message["TO"]]
            locks = [self.send_locks[c] for c in recipients]
        for recipient, lock in zip(recipients, locks):
            try:
                with lock:  # one writer per socket, so frames from two senders never interleave
                    recipient.sendall(data)
            except OSError as error:
                # The recipient is gone: drop it (its own thread cleans up); the sender stays.
                log.warning("could not deliver to %s (%s); dropping it", self._name(recipient), error)
                with contextlib.suppress(OSError):
                    recipient.shutdown(socket.SHUT_RDWR)

    def _name(self, client: socket.socket, default: str = "?") -> str:
        return self.names.get(client, default)

    def _forget(self, client: socket.socket) -> None:
        with self.clients_lock:
            self.clients.discard(client)
            for members in self.rooms.values():
                members.discard(client)
            self.names.pop(client, None)
            lock = self.send_locks.pop(client, threading.Lock())
        with lock:  # not while another thread is writing to it
            client.close()


def _recv_exactly(client: socket.socket, size: int) -> tuple[bytes | None, int]:
    """`size` bytes, or None if the peer closes first; and how many bytes arrived."""
    chunks, left = [], size
    while left > 0:
        chunk = client.recv(min(left, 1 << 20))
        if not chunk:
            return None, size - left
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks), size


def serve(settings: RuntimeSettings) -> None:
    """Listen on the settings' host and port until the process is stopped."""
    swergio.server.print = log_server_line  # route the module's print() calls into our log
    # nobody reads swergio's `_logging` room
    server = SwarmServer(settings.host, settings.port, FORMAT, HEADER_LENGTH, enable_logging=False,
                         token=settings.token)
    log.info("swergio server on %s:%s%s", settings.host, settings.port,
             "; every connection must present SWARM_TOKEN" if settings.token else "")
    server.start()

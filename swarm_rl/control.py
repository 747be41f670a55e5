"""ControlClient: the control's side of the protocol, a request and a bounded wait for its reply."""
from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from swarm_rl.client import ConnectionClosed, SwarmClient
from swarm_rl.launcher import ManagedSwarm, SwarmError
from swarm_rl.protocol import (COMPONENT_ID, ERROR, MISSING, ROOM_CONTROL, ROOM_EVOLUTION, ROOT_ID, STATUS,
                               custom_message)


class ControlClient(SwarmClient):
    """The control's client. Any failure while waiting (timeout, a dead component, Ctrl-C) stops
    the whole swarm before the error reaches the caller, unless `stops_swarm_on_failure` is off
    (a healing control decides what a fault stops)."""

    def __init__(self, swarm: ManagedSwarm | None = None, name: str = "control", **kwargs: Any) -> None:
        self.swarm = swarm
        self.stops_swarm_on_failure = True
        with self._stop_swarm_on_failure():
            super().__init__(name, swarm.settings if swarm else None, **kwargs)
            self.join_room(ROOM_CONTROL)
            self.join_room(ROOM_EVOLUTION)  # the models' answers to STATE (checkpoints)

    def _stop_swarm_on_failure(self) -> contextlib.AbstractContextManager:
        if self.swarm is None or not self.stops_swarm_on_failure:
            return contextlib.nullcontext()
        return self.swarm.stop_on_failure()

    def _name_the_dead(self, within: float) -> None:
        """The connection dropped: say which process died, looking for up to `within` s (a killed
        process is collected a moment after its socket closes)."""
        if self.swarm is None:
            return
        deadline = time.monotonic() + within
        while True:
            self.swarm.raise_if_dead()
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def request(self, payload: dict[str, Any], until: str, timeout: float | None = None,
                progress: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Send `payload` to `control`; return the reply whose STATUS is `until`, or the first
        progress message for which `progress` returns True. `timeout` bounds each silence; a
        SwarmError carries the last message before it."""
        last = None
        with self._stop_swarm_on_failure():
            try:
                for message in self._answers(ROOM_CONTROL, payload, timeout, lambda: f"no {until}"):
                    if message.get(STATUS) == until or (progress is not None and progress(message)):
                        return message
                    last = message
            except SwarmError as error:
                error.progress = last
                raise
        raise AssertionError("unreachable: _answers ends only by raising")

    def gather(self, room: str, payload: dict[str, Any], count: int, key: str,
               timeout: float | None = None) -> list[dict[str, Any]]:
        """Send `payload` into `room`; return the `count` answers that carry `key`, one per COMPONENT_ID."""
        answers: dict[Any, dict[str, Any]] = {}
        with self._stop_swarm_on_failure():
            for message in self._answers(room, payload, timeout, lambda: f"{len(answers)} of {count} answers with {key}"):
                if key in message:
                    answers[message.get(COMPONENT_ID)] = message
                    if len(answers) == count:
                        return list(answers.values())
        raise AssertionError("unreachable: _answers ends only by raising")

    def _answers(self, room: str, payload: dict[str, Any], timeout: float | None,
                 waiting_for: Callable[[], str]) -> Iterator[dict[str, Any]]:
        """Send `payload` into `room` and yield every answer; a silence of `timeout` seconds, a dead
        component, a lost connection or an ERROR raises SwarmError saying `waiting_for()`."""
        timeout = self.settings.reply_timeout if timeout is None else timeout
        root_id = uuid.uuid4().hex
        self.send(custom_message(room, payload, root_id))
        deadline = time.monotonic() + timeout
        while True:
            if self.swarm is not None:
                self.swarm.raise_if_dead()
            left = deadline - time.monotonic()
            if left <= 0:
                raise SwarmError(f"{waiting_for()} within {timeout:g} s after {sorted(payload)}; "
                                 f"see the logs in {self.settings.log_dir}")
            try:
                message = self.receive(timeout=min(1.0, left))
            except ConnectionClosed as lost:
                self._name_the_dead(within=2.0)
                raise SwarmError(f"{lost} (server {self.settings.host}:{self.settings.port}); "
                                 f"see the logs in {self.settings.log_dir}") from None
            if message is None or message.get(ROOT_ID) != root_id:
                continue  # silence, or an answer to an earlier request
            if message.get(STATUS) == ERROR:
                missing = message.get(MISSING)
                raise SwarmError(f"{message.get('SENT_BY', 'a component')}: {message.get(ERROR)}",
                                 silent=[str(m) for m in missing] if isinstance(missing, list) else None)
            deadline = time.monotonic() + timeout
            yield message

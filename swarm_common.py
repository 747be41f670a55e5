"""What the swarm's scripts share: configuration, room and key names, message checks,
a sturdier swergio client, and a swarm launcher that never leaves processes behind.

swergio and swergio-toolbox 0.0.2 are used as they are; where they misbehave we subclass
(never copy) them, and each override says why.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import faulthandler
import importlib.util
import inspect
import itertools
import json
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from swergio import MESSAGE_TYPE, Client, Trigger
from swergio_toolbox.swarm_control import Component, Swarm

log = logging.getLogger("swarm")

# --------------------------------------------------------------------------- configuration
FORMAT = "utf-8"  # message encoding; server and clients must agree
HEADER_LENGTH = 10  # bytes of the length header in front of every message
ENV_ID = "CartPole-v1"


@dataclass(frozen=True)
class Config:
    """Settings read from the environment; `Swarm` children inherit them."""

    host: str = "127.0.0.1"
    port: int = 8080
    models: int = 20
    rounds: int = 0  # most rounds of training (0: until solved or out of budget)
    episodes: int = 20  # training episodes per round
    envs: int = 1  # CartPole copies stepped together (SWARM_ENVS); 1 is the tutorial
    eval_episodes: int = 10  # deterministic episodes per evaluation (rounded up to whole batches)
    max_steps: int = 100_000  # training budget in environment steps (0: none)
    max_seconds: float = 600.0  # training budget in wall-clock seconds, evaluations included (0: none)
    evolution: bool = True  # evolve after every round (SWARM_EVOLUTION=0: train only)
    fitness: str = "contribution"  # SWARM_FITNESS: the tutorial's contribution, or "return" (an option)
    learning_rate: float = 7e-4  # SWARM_LEARNING_RATE: the models' Adam rate (the tutorial's; an option)
    normalize_advantage: bool = False  # SWARM_NORMALIZE_ADVANTAGE=1: per A2C update (an option)
    seed: int | None = None  # SWARM_SEED: seeds every component (unset: different every run)
    log_dir: Path = Path("logs")
    start_timeout: float = 180.0  # launch until every component answers
    reply_timeout: float = 120.0  # longest silence while waiting for ENV_DONE / EVO_DONE
    model_timeout: float = 5.0  # the aggregation's wait for the last model's logits of a step

    @classmethod
    def from_env(cls) -> "Config":
        env = os.environ
        seed = env.get("SWARM_SEED", "")
        return cls(
            host=env.get("SWERGIO_HOST", cls.host),
            port=env_int("SWERGIO_PORT", cls.port),
            models=env_int("SWARM_MODELS", cls.models),
            rounds=env_int("SWARM_ROUNDS", cls.rounds, minimum=0),
            episodes=env_int("SWARM_EPISODES", cls.episodes, minimum=1),
            envs=env_int("SWARM_ENVS", cls.envs, minimum=1),
            eval_episodes=env_int("SWARM_EVAL_EPISODES", cls.eval_episodes, minimum=1),
            max_steps=env_int("SWARM_MAX_STEPS", cls.max_steps, minimum=0),
            max_seconds=float(env.get("SWARM_MAX_SECONDS", cls.max_seconds)),
            evolution=env_int("SWARM_EVOLUTION", int(cls.evolution), minimum=0) > 0,
            fitness=env_choice("SWARM_FITNESS", cls.fitness, ("contribution", "return")),
            learning_rate=float(env.get("SWARM_LEARNING_RATE", cls.learning_rate)),
            normalize_advantage=env_int("SWARM_NORMALIZE_ADVANTAGE", int(cls.normalize_advantage), minimum=0) > 0,
            seed=env_int("SWARM_SEED", 0, minimum=0) if seed != "" else None,
            log_dir=Path(env.get("SWARM_LOG_DIR", str(cls.log_dir))),
            start_timeout=float(env.get("SWARM_START_TIMEOUT", cls.start_timeout)),
            reply_timeout=float(env.get("SWARM_REPLY_TIMEOUT", cls.reply_timeout)),
            model_timeout=float(env.get("SWARM_MODEL_TIMEOUT", cls.model_timeout)),
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in a child process."""
        return {"SWERGIO_HOST": self.host, "SWERGIO_PORT": str(self.port), "SWARM_MODELS": str(self.models),
                "SWARM_ROUNDS": str(self.rounds), "SWARM_EPISODES": str(self.episodes),
                "SWARM_ENVS": str(self.envs), "SWARM_EVAL_EPISODES": str(self.eval_episodes),
                "SWARM_MAX_STEPS": str(self.max_steps), "SWARM_MAX_SECONDS": str(self.max_seconds),
                "SWARM_EVOLUTION": str(int(self.evolution)), "SWARM_FITNESS": self.fitness,
                "SWARM_LEARNING_RATE": str(self.learning_rate),
                "SWARM_NORMALIZE_ADVANTAGE": str(int(self.normalize_advantage)),
                "SWARM_SEED": "" if self.seed is None else str(self.seed), "SWARM_LOG_DIR": str(self.log_dir),
                "SWARM_START_TIMEOUT": str(self.start_timeout),
                "SWARM_REPLY_TIMEOUT": str(self.reply_timeout), "SWARM_MODEL_TIMEOUT": str(self.model_timeout)}

    def component_seed(self, name: str) -> int | None:
        """A seed of its own for each component (model3, environment, ...), all from SWARM_SEED;
        None (fresh randomness) when SWARM_SEED is unset. `name` is the launcher's name for the
        process when it has one."""
        if self.seed is None:
            return None
        name = os.environ.get("SWARM_COMPONENT_NAME", name)
        return (self.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**32


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """A setting from the environment that must be one of `choices`."""
    value = os.environ.get(name) or default
    if value not in choices:
        raise ValueError(f"environment variable {name}={value!r} must be one of {', '.join(choices)}")
    return value


def env_int(name: str, default: int, minimum: int | None = None) -> int:
    """An integer setting from the environment, with a clear error for a typo."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"environment variable {name}={raw!r} must be at least {minimum}")
    return value


# --------------------------------------------------------------------------- rooms and keys
ROOM_CONTROL = "control"
ROOM_OBSERVATION = "observation"
ROOM_LOGITS = "logits"
ROOM_ACTION = "action"
ROOM_EVOLUTION = "evolution"
ROOM_PING = "ping"  # ours: readiness checks, so the control never sleeps and hopes

NR_OF_EPISODE = "NR_OF_EPISODE"
DETERMINISTIC = "DETERMINISTIC"
STATUS = "STATUS"
AVG_SCORE = "AVG_SCORE"
EVOLUTION = "EVOLUTION"
OBSERVATION = "OBSERVATION"
REWARD = "REWARD"
DONE = "DONE"
ACTION = "ACTION"
LOGITS = "LOGITS"
COMPONENT_ID = "COMPONENT_ID"
CMD = "CMD"
WEIGHTS = "WEIGHTS"
CONTRIBUTION = "CONTRIBUTION"
ROOT_ID = "ROOT_ID"  # swergio propagates it from a message to its replies: it names a run
# Additions to the tutorial's protocol; plain clients ignore them.
STEPS = "STEPS"  # in ENV_DONE/ENV_PROGRESS: environment steps of the run so far
EPISODE = "EPISODE"  # in ENV_PROGRESS: episodes finished so far
SCORE = "SCORE"  # in ENV_PROGRESS: the score of the episode that just finished
SCORES = "SCORES"  # in ENV_DONE: the scores of all the run's episodes
TRUNCATED = "TRUNCATED"  # ours, with OBSERVATION, when a copy hit the time limit (500 steps)
FITNESS_SPREAD = "FITNESS_SPREAD"  # in EVO_DONE: (best - worst) / mean |fitness|; near 0: a lottery
FINAL_OBSERVATION = "FINAL_OBSERVATION"  # with TRUNCATED: where each copy was before its reset
PING = "PING"
PONG = "PONG"
COMPONENT = "COMPONENT"
ERROR = "ERROR"  # STATUS ERROR: a component tells the control why a run cannot go on
MISSING = "MISSING"  # in an ERROR: the model ids that did not answer

ENV_DONE = "ENV_DONE"
ENV_PROGRESS = "ENV_PROGRESS"
EVO_DONE = "EVO_DONE"
GET = "GET"
SET = "SET"

CUSTOM = MESSAGE_TYPE.DATA.CUSTOM


def custom_message(room: str, payload: dict[str, Any], root_id: str | None = None) -> dict[str, Any]:
    """A DATA.CUSTOM message for `room`, as a plain swergio client would build it."""
    return {
        ROOT_ID: root_id or uuid.uuid4().hex,
        "ID": uuid.uuid4().hex,
        "TYPE": CUSTOM.id,
        "TO_ROOM": room,
        **payload,
    }


# --------------------------------------------------------------------------- message checks
class BadMessage(ValueError):
    """A message that breaks the protocol: it is logged and skipped, nothing changes."""


def require(msg: dict[str, Any], key: str) -> Any:
    if key not in msg:
        raise BadMessage(f"missing key {key}")
    return msg[key]


def get_bool(msg: dict[str, Any], key: str) -> bool:
    value = require(msg, key)
    if not isinstance(value, bool):
        raise BadMessage(f"{key} must be true or false, got {value!r}")
    return value


def get_int(msg: dict[str, Any], key: str, minimum: int | None = None) -> int:
    value = require(msg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadMessage(f"{key} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise BadMessage(f"{key} must be at least {minimum}, got {value}")
    return value


def get_float(msg: dict[str, Any], key: str) -> float:
    value = require(msg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadMessage(f"{key} must be a finite number, got {value!r}")
    return float(value)


def get_str(msg: dict[str, Any], key: str) -> str:
    value = require(msg, key)
    if not isinstance(value, str) or not value:
        raise BadMessage(f"{key} must be a non-empty string, got {value!r}")
    return value


def as_array(value: Any, what: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A finite float array of `shape` (None: any length) from JSON lists; a BadMessage otherwise.

    The conversion is one NumPy call and the checks are vectorised: at SWARM_ENVS=32 checking
    row by row cost the aggregation most of its time.
    """
    try:
        array = np.array(value)  # numbers give int/float arrays; strings, None or ragged rows don't
    except (ValueError, TypeError):
        raise BadMessage(f"{what} must be a list of numbers with shape {shape}") from None
    if array.dtype.kind not in "if" or array.ndim != len(shape) or any(
            want is not None and have != want for have, want in zip(array.shape, shape)):
        raise BadMessage(f"{what} must be a list of numbers with shape {shape}, got {_describe(array)}")
    if _contains_bool(value):  # NumPy silently turns [true, 0.5] into [1.0, 0.5]
        raise BadMessage(f"{what} must hold numbers, not true/false")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise BadMessage(f"{what} contains NaN or infinite numbers")
    return array


def _describe(array: np.ndarray) -> str:
    return f"shape {array.shape} of {array.dtype}" if array.dtype.kind in "ifb" else f"{array.dtype} values"


def _contains_bool(value: Any) -> bool:
    """Whether a list (or a list of lists) from JSON holds true/false; the loop runs in C."""
    if not isinstance(value, list):
        return type(value) is bool
    if value and isinstance(value[0], list):
        value = itertools.chain.from_iterable(row for row in value if isinstance(row, list))
    return bool in map(type, value)


def as_vector(value: Any, what: str, length: int | None = None) -> np.ndarray:
    """A finite float vector, of `length` if given; a BadMessage otherwise."""
    return as_array(value, what, (length,))


def as_batch(value: Any, what: str, envs: int, width: int | None = None) -> np.ndarray:
    """One row per environment: with one environment the message holds the row itself (the
    tutorial's format), with more a list of rows. A BadMessage for anything else."""
    if envs == 1:
        return as_vector(value, what, width)[np.newaxis]
    return as_array(value, what, (envs, width))


def get_actions(msg: dict[str, Any], envs: int, n_actions: int) -> np.ndarray:
    """ACTION: a list of one action per environment (with one environment: [action])."""
    action = require(msg, ACTION)
    if not (isinstance(action, list) and len(action) == envs
            and all(type(a) is int and 0 <= a < n_actions for a in action)):
        raise BadMessage(f"ACTION must be a list of {envs} action(s) in 0..{n_actions - 1}, got {action!r:.200}")
    return np.array(action)


def get_per_env(msg: dict[str, Any], key: str, envs: int, kind: type) -> np.ndarray:
    """REWARD (kind float) or DONE (kind bool): the value itself for one environment, a list of
    values for more."""
    values = [require(msg, key)] if envs == 1 else require(msg, key)
    if not isinstance(values, list) or len(values) != envs:
        raise BadMessage(f"{key} must be a list of {envs} values, one per environment")
    if kind is bool:
        if not all(type(v) is bool for v in values):
            raise BadMessage(f"{key} must be true or false, got {msg[key]!r:.200}")
        return np.array(values)
    return as_vector(values, key, envs)


def unbatch(array: np.ndarray) -> list:
    """The inverse of as_batch: the row itself for one environment, else the list of rows."""
    return array[0].tolist() if len(array) == 1 else array.tolist()


# --------------------------------------------------------------------------- who the models are
@dataclass
class ModelRegistry:
    """The model ids a component accepts answers from.

    A model is known once it has answered a readiness PING (every client sees every PONG in the
    `ping` room, and the control pings before the first run). A control that never pings still
    works: until `expected` models are known, a new id is learned from its first message. After
    that an unknown COMPONENT_ID is refused, so a stray or forged message cannot vote or breed.
    """
    expected: int
    known: set[str] = field(default_factory=set)

    def register_pong(self, msg: dict[str, Any]) -> None:
        if PONG in msg and msg.get(COMPONENT) == "model" and isinstance(msg.get(COMPONENT_ID), str):
            self.known.add(msg[COMPONENT_ID])

    def admit(self, model_id: str) -> None:
        """Accept `model_id`, or raise BadMessage for a model that is not one of ours."""
        if model_id in self.known:
            return
        if len(self.known) >= self.expected:
            raise BadMessage(f"unknown model {model_id!r}: not among the {len(self.known)} models that answered")
        self.known.add(model_id)


# --------------------------------------------------------------------------- component set-up
PROJECT_DIR = Path(__file__).resolve().parent
_loaded_scripts: dict[str, Any] = {}


def load_script(filename: str) -> Any:
    """Import a numbered script (e.g. "02_model.py", relative to the project) as a module,
    without running its __main__ part: tests and benchmarks call its handlers directly."""
    if filename not in _loaded_scripts:
        path = PROJECT_DIR / filename
        spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded_scripts[filename] = module
    return _loaded_scripts[filename]



def setup_component(name: str) -> Config:
    """Logging to `<SWARM_LOG_DIR>/<name>.log` and, under a launcher, exit when it dies."""
    config = Config.from_env()
    name = os.environ.get("SWARM_COMPONENT_NAME", name)
    config.log_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(config.log_dir / f"{name}.log")]
    if sys.stderr.isatty():  # started by hand: show the log in the terminal too
        handlers.append(logging.StreamHandler())
    logging.basicConfig(
        level=os.environ.get("SWARM_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )
    # `kill -USR1 <pid>` writes every thread's stack to the log: the first look at a hang.
    faulthandler.register(signal.SIGUSR1, file=handlers[0].stream, all_threads=True)
    watch_parent()
    return config


def yield_to_the_critical_path(niceness: int = 5) -> None:
    """For the model processes: lower priority and SCHED_BATCH (Linux; both allowed without
    privileges). Each step passes through the server, the aggregation and the environment one
    message at a time while the models compute side by side, so the few should get a core first;
    and a batch process is not preempted by every wake-up, so twenty of them switch less often
    (measured on 2 cores with 20 models: 10-25% more steps per second)."""
    with contextlib.suppress(AttributeError, OSError):
        os.nice(niceness)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def watch_parent() -> None:
    """Exit when the launching process dies, so a killed control or kernel leaves no orphans."""
    parent = os.environ.get("SWARM_PARENT_PID")
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(0.5)
        log.warning("launcher (pid %s) is gone; exiting", parent)
        logging.shutdown()
        os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


# --------------------------------------------------------------------------- client
class ConnectionClosed(ConnectionError):
    """The swergio server closed the connection."""


MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def frame(body: bytes) -> bytes:
    """swergio's wire format: the body's length, left-aligned in HEADER_LENGTH bytes, then the body."""
    return f"{len(body):<{HEADER_LENGTH}}".encode(FORMAT) + body


def body_length(header: bytes) -> int | None:
    """The body length a frame header announces; None for a header that is not a sane length."""
    try:
        length = int(header.decode(FORMAT).strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return length if 0 <= length <= MAX_MESSAGE_BYTES else None


@dataclass
class _Timer:
    function: Callable
    interval: float
    rooms: list[str]
    argument_names: list[str]
    due: float = field(default_factory=time.monotonic)


class SwarmClient(Client):
    """swergio's Client with the failures of 0.0.2 fixed.

    - connect: waits (bounded) for the server instead of failing on the first refusal.
    - send: one write per message with TCP_NODELAY (header and body in separate writes stall
      on Nagle's algorithm); thread-safe.
    - receive: takes a timeout, keeps partial frames, and skips undecodable bodies instead of
      returning False (0.0.2's listen() then disconnects the whole component).
    - listen: handlers run in the order they were added (0.0.2 keeps them in a set), and a
      handler that raises is logged, its message skipped, and the component keeps serving.
    - every client answers PING in the `ping` room, so launchers can tell when it is ready.
    """

    def __init__(self, name: str, config: Config | None = None, component_id: str | None = None,
                 connect_timeout: float = 30.0, **kwargs: Any) -> None:
        self.config = config or Config.from_env()
        self.component_id = component_id or uuid.uuid4().hex
        self.connect_timeout = connect_timeout
        self.handlers: list = []
        self.timers: list[_Timer] = []
        self._buffer = bytearray()
        self._send_lock = threading.Lock()
        super().__init__(name, self.config.host, self.config.port, FORMAT, HEADER_LENGTH, **kwargs)
        self.add_eventHandler(self._pong, CUSTOM, responseRooms=ROOM_PING, trigger=Trigger(CUSTOM, ROOM_PING))

    def _pong(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        if PING in msg:
            return {PONG: msg[PING], COMPONENT: self.name, COMPONENT_ID: self.component_id}
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
        data = frame(json.dumps(message).encode(FORMAT))
        with self._send_lock:
            self.client.sendall(data)

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
                # (without a timeout there is nothing to select: one system call less per message)
                if remaining is not None and not select.select([self.client], [], [], remaining)[0]:
                    return None
                chunk = self.client.recv(1 << 16)
            except (OSError, ValueError) as error:  # ValueError: the socket was closed meanwhile
                raise ConnectionClosed(f"{self.name}: connection to the server failed: {error}") from None
            if not chunk:
                raise ConnectionClosed(f"{self.name}: the swergio server closed the connection")
            self._buffer += chunk

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
        """As swergio's, plus `listen_to_response_rooms=False`: send replies into the response
        rooms without joining them. swergio joins them, so e.g. every model would receive every
        other model's logits (380 of 421 deliveries per step thrown away with 20 models)."""
        before = set(self.eventHandlers)
        super().add_eventHandler(handleFunction, responseType,
                                 responseRooms if listen_to_response_rooms else None, responseComponent, trigger)
        (handler,) = self.eventHandlers - before
        if not listen_to_response_rooms:
            handler.responseRooms = responseRooms if isinstance(responseRooms, list) else [responseRooms]
        wanted = inspect.getfullargspec(handleFunction).args
        self.handlers.append((handler, [k for k in self.kwargs if k in wanted]))

    def responses(self, handler, message: dict[str, Any], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """What swergio's EventHandler.handle returns, without its deep copy of every response
        (a 322 KB SET took longer to copy than to send)."""
        response = handler.handleFunction(message, **kwargs)
        if response is None:
            return []
        response.setdefault("ID", uuid.uuid4().hex)
        if handler.responseType is not None:
            response["TYPE"] = handler.responseType.id
        if handler.responseComponent is not None:
            response["TO"] = handler.responseComponent
        response = self.add_propagated_fields(message, response)
        return [{**response, "TO_ROOM": room} for room in handler.responseRooms or []]

    def dispatch(self, message: dict[str, Any]) -> None:
        """Run every triggered handler on one message and send what they return."""
        if not isinstance(message.get("TYPE"), str) or not isinstance(message.get("TO_ROOM"), str):
            # Every handler here listens to a room; swergio's Trigger would raise on a message
            # without TO_ROOM (a direct message), so it is not for us.
            log.warning("%s: skipped a message without a valid TYPE/TO_ROOM: %.200r", self.name, message)
            return
        for handler, argument_names in self.handlers:
            try:
                if not handler.is_triggered(message):
                    continue
                for response in self.responses(handler, message, {k: self.kwargs[k] for k in argument_names}):
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
        """While listening, call `function` every `interval` seconds, with the client's keyword
        arguments it names; a dict it returns is sent to `responseRooms` (ours, not swergio's:
        a component that waits for something can notice that it did not come)."""
        wanted = inspect.getfullargspec(function).args
        rooms = responseRooms if isinstance(responseRooms, list) else [responseRooms]
        self.timers.append(_Timer(function, interval, rooms, [k for k in self.kwargs if k in wanted]))

    def run_due_timers(self) -> None:
        now = time.monotonic()
        for timer in self.timers:
            if now < timer.due:
                continue
            timer.due = now + timer.interval
            try:
                response = timer.function(**{k: self.kwargs[k] for k in timer.argument_names})
            except Exception:
                log.exception("%s: timer %s failed", self.name, timer.function.__name__)
                continue
            for room in timer.rooms if response else []:
                self.send({"ID": uuid.uuid4().hex, "TYPE": CUSTOM.id, "SENT_BY": self.name, **response,
                           "TO_ROOM": room})

    def listen(self) -> None:
        """Serve until the server goes away."""
        log.info("%s listening on %s:%s", self.name, self.server, self.port)
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


# --------------------------------------------------------------------------- control side
class SwarmError(RuntimeError):
    """The swarm failed; the message says which component and what to look at."""


def ensure_port_free(host: str, port: int) -> None:
    """A clear error, before anything starts, when the port is taken."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
    try:
        probe.bind((host, port))
    except OSError as error:
        hint = "is a previous swarm still running? stop it, or set SWERGIO_PORT to a free port"
        if error.errno == errno.EADDRINUSE:
            raise SwarmError(f"port {port} on {host} is already in use ({hint})") from None
        raise SwarmError(f"cannot use {host}:{port}: {error}") from None
    finally:
        probe.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ManagedComponent(Component):
    """A toolbox Component started without `python -i` and stopped for sure.

    0.0.2 runs `python -i script`: a finished or crashed component then waits at an interactive
    prompt on the inherited stdin instead of exiting, and stop() only sends SIGTERM. Here stdin
    is closed, output goes to the component's log file, the child gets its own process group
    (Ctrl-C reaches the control, which stops everyone in order) and knows its launcher's pid.
    """

    def __init__(self, name: str, base: Component, cwd: Path, settings: Config) -> None:
        super().__init__(base.filepath, base.envpath, base.delay, base.terminal_cmd, base.python_cmd)
        self.name, self.cwd, self.settings = name, cwd, settings
        self.log_dir = settings.log_dir.resolve()

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self):
        if self.process is not None and self.process.poll() is None:
            return None  # already running
        python = (self.envpath or "") + self.python_cmd
        # The launcher's settings win over whatever the environment says: one swarm, one config.
        env = {**os.environ, **self.settings.to_env(), "SWARM_LOG_DIR": str(self.log_dir),
               "SWARM_PARENT_PID": str(os.getpid()), "SWARM_COMPONENT_NAME": self.name, "PYTHONUNBUFFERED": "1"}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as output:
            self.process = subprocess.Popen([python, self.filepath], cwd=self.cwd, env=env,
                                            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self.delay

    def stop(self, timeout: float = 5.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        _signal_group(process, signal.SIGTERM)
        _signal_group(process, signal.SIGCONT)  # a stopped (Ctrl-Z, SIGSTOP) process must wake to exit
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout)

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


class ManagedSwarm(Swarm):
    """swergio-toolbox's Swarm that checks the port first, waits for readiness, and always stops.

    Components run with this interpreter (so the project's .venv is used even when it is not
    activated) unless swarm.yaml names a python_cmd. Everything it started is stopped on stop(),
    on interpreter exit and on SIGTERM.
    """

    def __init__(self, config_file: str | os.PathLike = "swarm.yaml", settings: Config | None = None) -> None:
        # The toolbox keeps the parsed swarm.yaml in `.config`; our environment settings are `.settings`.
        self.settings = settings or Config.from_env()
        self.config_path = Path(config_file).resolve()
        super().__init__(str(self.config_path))
        yaml_settings = self.config.get("settings") or {}
        if "python_cmd" not in yaml_settings:
            self.python_cmd = sys.executable
        self.components = {name: self._managed(name, c) for name, c in self.components.items()}
        self.stopped: set[str] = set()  # stopped on purpose: not a failure
        atexit.register(self.stop)
        _stop_on_sigterm()
        # `kill -USR1 <pid>` makes the control write every thread's stack to stderr, as the
        # components do to their logs: the first look at a control that hangs.
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def _managed(self, name: str, component: Component) -> ManagedComponent:
        managed = ManagedComponent(name, component, self.config_path.parent, self.settings)
        if component.python_cmd == "python":  # the toolbox default: use our interpreter instead
            managed.python_cmd = self.python_cmd
        return managed

    def add(self, name: str, filepath: str, envpath: str | None = None, delay: float | None = None,
            terminal_cmd: str | None = None, python_cmd: str = "") -> None:
        super().add(name, filepath, envpath, delay, terminal_cmd, python_cmd)
        self.components[name] = self._managed(name, self.components[name])

    def start(self, components: str | Iterable[str] | None = None) -> None:
        if not self.running():  # nothing of ours holds the port yet: it must be free
            ensure_port_free(self.settings.host, self.settings.port)
        names = self._names(components)
        self.stopped.difference_update(names)
        with self.stop_on_failure():
            super().start(names)

    @contextlib.contextmanager
    def stop_on_failure(self) -> Iterator[None]:
        """Any exception inside (an error, a timeout, Ctrl-C, a notebook interrupt) stops the
        whole swarm before it propagates: a failed run leaves nothing behind."""
        try:
            yield
        except BaseException:
            self.stop()
            raise

    def stop(self, components: str | Iterable[str] | None = None) -> None:
        """Stop components (all by default) and wait until they are gone."""
        names = self._names(components)
        for name in names:  # signal everyone first, then wait: stopping takes one timeout, not N
            process = self.components[name].process
            if process is not None and process.poll() is None:
                _signal_group(process, signal.SIGTERM)
        for name in names:
            self.components[name].stop()
            self.stopped.add(name)

    def _names(self, components: str | Iterable[str] | None) -> list[str]:
        """The toolbox's convention: None means all, a string means one."""
        if components is None:
            return list(self.components)
        return [components] if isinstance(components, str) else list(components)

    def running(self) -> list[str]:
        return [name for name, c in self.components.items() if c.process is not None and c.exit_code() is None]

    def pids(self) -> dict[str, int]:
        return {name: c.process.pid for name, c in self.components.items() if c.process is not None}

    def raise_if_dead(self, components: str | Iterable[str] | None = None) -> None:
        """A SwarmError naming every component (all by default) that has exited."""
        dead = [(name, self.components[name]) for name in self._names(components)
                if self.components[name].exit_code() is not None]
        if dead and all(name in self.stopped for name, _ in dead):
            raise SwarmError("the swarm has been stopped; start a new one")
        if dead:
            listing = ", ".join(f"{name} (exit code {c.exit_code()}, log {c.log_file})" for name, c in dead)
            raise SwarmError(f"component(s) stopped unexpectedly: {listing}")

    def wait_ready(self, client: SwarmClient, components: Iterable[str], models: int,
                   timeout: float | None = None) -> float:
        """Ping until `components` and `models` model processes answer; the seconds it took.

        A component that dies meanwhile is reported at once; on any failure the swarm is stopped.
        """
        with self.stop_on_failure():
            return wait_for_answers(client, components, models,
                                    self.settings.start_timeout if timeout is None else timeout,
                                    check=self.raise_if_dead)


def wait_for_answers(client: SwarmClient, components: Iterable[str], models: int = 0, timeout: float = 180.0,
                     check: Callable[[], None] | None = None) -> float:
    """Ping (in the `ping` room) until every named component and `models` model processes
    answer; the seconds it took. Other messages received meanwhile are dropped, so call it before
    work starts. `check` runs once a round (a launcher passes its dead-process check).
    """
    wanted = set(components)
    started = time.monotonic()
    answered: set[str] = set()
    model_ids: set[str] = set()
    while True:
        if check is not None:
            check()
        nonce = uuid.uuid4().hex
        client.send(custom_message(ROOM_PING, {PING: nonce}))
        round_ends = time.monotonic() + 0.5  # a process that connects meanwhile answers the next ping
        while (left := round_ends - time.monotonic()) > 0:
            message = client.receive(timeout=left)
            if message is None or message.get(PONG) != nonce:
                continue
            if message.get(COMPONENT) == "model":
                model_ids.add(str(message.get(COMPONENT_ID)))
            else:
                answered.add(str(message.get(COMPONENT)))
            if answered >= wanted and len(model_ids) >= models:
                return time.monotonic() - started
        missing = sorted(wanted - answered)
        if time.monotonic() - started > timeout:
            parts = missing + ([f"models ({len(model_ids)} of {models} answered)"] if len(model_ids) < models else [])
            raise SwarmError(f"{client.name}: not ready after {timeout:g} s; no answer from: {', '.join(parts)} "
                             f"(logs in {client.config.log_dir})")


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so atexit stops the swarm (only where nobody else handles it)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class ControlClient(SwarmClient):
    """The control's client: sends a request into `control` and waits, bounded, for its reply.

    Any failure while waiting (timeout, a dead component, Ctrl-C, a notebook interrupt) stops
    the whole swarm before the error reaches the caller: nothing is left running.
    """

    def __init__(self, swarm: ManagedSwarm | None = None, name: str = "control", **kwargs: Any) -> None:
        self.swarm = swarm
        with self._stop_swarm_on_failure():
            super().__init__(name, swarm.settings if swarm else None, **kwargs)
            self.join_room(ROOM_CONTROL)

    def _stop_swarm_on_failure(self) -> contextlib.AbstractContextManager:
        return self.swarm.stop_on_failure() if self.swarm is not None else contextlib.nullcontext()

    def _name_the_dead(self, within: float) -> None:
        """The connection dropped: if the server (or anything) died, say which. A killed process
        is collected a moment after its socket closes, so look again for up to `within` s."""
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
        """Send `payload` to `control`; return the reply whose STATUS is `until`.

        `timeout` bounds the silence: each progress message of this request restarts it.
        `progress`, if given, sees each progress message; when it returns True, that message is
        returned at once (the run goes on until a new request replaces it).
        """
        timeout = self.config.reply_timeout if timeout is None else timeout
        root_id = uuid.uuid4().hex
        with self._stop_swarm_on_failure():
            self.send(custom_message(ROOM_CONTROL, payload, root_id))
            deadline = time.monotonic() + timeout
            while True:
                if self.swarm is not None:
                    self.swarm.raise_if_dead()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SwarmError(f"no {until} within {timeout:g} s after {sorted(payload)}; "
                                     f"see the logs in {self.config.log_dir}")
                try:
                    message = self.receive(timeout=min(1.0, left))
                except ConnectionClosed as lost:
                    self._name_the_dead(within=2.0)
                    raise SwarmError(f"{lost} (server {self.config.host}:{self.config.port}); "
                                     f"see the logs in {self.config.log_dir}") from None
                if message is None or message.get(ROOT_ID) != root_id:
                    continue  # silence, or a reply to an earlier request
                if message.get(STATUS) == ERROR:
                    raise SwarmError(f"{message.get('SENT_BY', 'a component')}: {message.get(ERROR)}")
                if message.get(STATUS) == until or (progress is not None and progress(message)):
                    return message
                deadline = time.monotonic() + timeout

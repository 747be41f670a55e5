"""Starting and stopping a swarm: swergio-toolbox 0.0.2's Swarm, subclassed to check first, wait
for readiness, and never leave a process behind."""
from __future__ import annotations

import atexit
import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from swergio_toolbox.swarm_control import Component, Swarm

from swarm_rl import settings as settings_module
from swarm_rl.client import SwarmClient
from swarm_rl.component import NAME_VARIABLE, PARENT_VARIABLE, dump_stacks_on_sigusr1, hosted_names
from swarm_rl.protocol import COMPONENT, COMPONENT_ID, PING, PONG, ROOM_PING, custom_message
from swarm_rl.scripts import PROJECT_DIR
from swarm_rl.settings import RuntimeSettings, SwarmSettings


class SwarmError(RuntimeError):
    """The swarm failed; the message says which component and what to look at. `silent` names the
    model ids a component reported missing, `progress` is the last progress message of the
    request it interrupted."""

    def __init__(self, message: str, silent: list[str] | None = None) -> None:
        super().__init__(message)
        self.silent = silent or []
        self.progress: dict | None = None


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


FORK_PROCESS = "models"  # SWARM_LAUNCHER=fork: the one process that forks every model process


def model_processes(models: int, per_process: int) -> dict[str, list[str]]:
    """Each model process's name and the models it hosts: k each, model0 hosting model0 to
    model<k-1>, model<k> the next k (the last may host fewer)."""
    return {f"model{first}": hosted_names(f"model{first}", min(per_process, models - first))
            for first in range(0, models, per_process)}


class ManagedComponent(Component):
    """A toolbox Component started without `python -i` (0.0.2's, which leaves a finished one at a
    prompt) and stopped for sure: stdin closed, output to its log file, its own process group."""

    def __init__(self, name: str, base: Component, cwd: Path, settings: RuntimeSettings) -> None:
        super().__init__(base.filepath, base.envpath, base.delay, base.terminal_cmd, base.python_cmd)
        self.name, self.cwd, self.settings = name, cwd, settings
        self.log_dir = settings.log_dir.resolve()
        self.environment: dict[str, str] = {}  # this component's own variables, over the swarm's
        self.hosts = ""  # the models it hosts, for the error that says it died

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self):
        if self.process is not None and self.process.poll() is None:
            return None  # already running
        python = (self.envpath or "") + self.python_cmd
        # The launcher's settings win over whatever the environment says: one swarm, one config.
        env = {**os.environ, **self.settings.to_env(), "SWARM_LOG_DIR": str(self.log_dir),
               PARENT_VARIABLE: str(os.getpid()), NAME_VARIABLE: self.name, "PYTHONUNBUFFERED": "1",
               **self.environment}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as output:
            self.process = subprocess.Popen([python, *self.target()], cwd=self.cwd, env=env,
                                            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self.delay

    def target(self) -> list[str]:
        """A script (`02_model.py`) runs as a file; a module name (`swarm_rl.fork`) runs with -m."""
        return [self.filepath] if self.filepath.endswith(".py") else ["-m", self.filepath]

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
    """swergio-toolbox's Swarm that checks the port first, waits for readiness, and stops everything
    it started on stop(), exit or SIGTERM. Components run with this interpreter unless swarm.yaml
    names a python_cmd."""

    def __init__(self, config_file: str | os.PathLike = PROJECT_DIR / "swarm.yaml",
                 settings: RuntimeSettings | None = None) -> None:
        # The toolbox keeps the parsed swarm.yaml in `.config`; our environment settings are `.settings`.
        self.settings = settings or settings_module.load_settings(SwarmSettings)
        self.config_path = Path(config_file).resolve()
        super().__init__(str(self.config_path))
        yaml_settings = self.config.get("settings") or {}
        if "python_cmd" not in yaml_settings:
            self.python_cmd = sys.executable
        self.components = {name: self._managed(name, c) for name, c in self.components.items()}
        self.stopped: set[str] = set()  # stopped on purpose: not a failure
        atexit.register(self.stop)
        _stop_on_sigterm()
        dump_stacks_on_sigusr1()  # as the components do to their logs: the first look at a hang

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

    def start_models(self) -> list[str]:
        """Start SWARM_MODELS models, SWARM_MODELS_PER_PROCESS per process, each process here or
        (SWARM_LAUNCHER=fork) forked by swarm_rl/fork.py; the names of the components started."""
        settings = self.settings
        if not isinstance(settings, SwarmSettings):
            raise TypeError("start_models needs the RL swarm's settings (SwarmSettings)")
        if settings.launcher == "fork":
            self.add(FORK_PROCESS, "swarm_rl.fork")
            self.start(FORK_PROCESS)
            return [FORK_PROCESS]
        names = []
        for name, hosted in model_processes(settings.models, settings.models_per_process).items():
            self.add(name, "02_model.py")
            component = self.components[name]
            component.environment = {"SWARM_MODELS_PER_PROCESS": str(len(hosted))}
            if len(hosted) > 1:
                component.hosts = f"hosting {hosted[0]}-{hosted[-1]}"
            self.start(name)
            names.append(name)
        return names

    @contextlib.contextmanager
    def stop_on_failure(self) -> Iterator[None]:
        """Any exception inside (even Ctrl-C) stops the whole swarm before it propagates."""
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
            listing = ", ".join(f"{name} ({c.hosts + ', ' if c.hosts else ''}exit code {c.exit_code()}, log {c.log_file})"
                                for name, c in dead)
            raise SwarmError(f"component(s) stopped unexpectedly: {listing}")

    def wait_ready(self, client: SwarmClient, components: Iterable[str], models: int,
                   timeout: float | None = None) -> float:
        """Ping until `components` and `models` model processes answer; the seconds it took. On any
        failure, such as a component that dies meanwhile, the swarm is stopped."""
        with self.stop_on_failure():
            return wait_for_answers(client, components, models,
                                    self.settings.start_timeout if timeout is None else timeout,
                                    check=self.raise_if_dead)


def wait_for_answers(client: SwarmClient, components: Iterable[str], models: int = 0, timeout: float = 180.0,
                     check: Callable[[], None] | None = None) -> float:
    """Ping until every named component and `models` model processes answer; the seconds it took.
    Drops other messages meanwhile, so call it before work starts; `check` runs once a round."""
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
                             f"(logs in {client.settings.log_dir})")


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so atexit stops the swarm (only where nobody else handles it)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

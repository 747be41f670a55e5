"""What every component process does before it serves: who it is, its settings, its log, and
exiting with its launcher."""
from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from typing import IO, TypeVar

from swarm_rl import settings as settings_module
from swarm_rl.settings import RuntimeSettings, SwarmSettings

log = logging.getLogger("swarm")
S = TypeVar("S", bound=RuntimeSettings)

NAME_VARIABLE = "SWARM_COMPONENT_NAME"  # set by the launcher: this process's name in the swarm
PARENT_VARIABLE = "SWARM_PARENT_PID"  # set by the launcher: exit when this process goes
IDS_VARIABLE = "SWARM_COMPONENT_IDS"  # set by the control for a restarted process: the ids it had


def component_name(default: str) -> str:
    """The launcher's name for this process, or `default` when started by hand."""
    return os.environ.get(NAME_VARIABLE) or default


def hosted_names(name: str, count: int) -> list[str]:
    """The names of the `count` models a process called `name` hosts: itself alone, or from its
    number on (model10 hosting 3: model10, model11, model12; plain `model`: model0, ...)."""
    if count == 1:
        return [name]
    base, number = re.fullmatch(r"(.*?)(\d*)", name).groups()
    first = int(number) if number else 0
    return [f"{base}{first + j}" for j in range(count)]


def new_component_id(name: str, seed: int | None = None) -> str:
    """A unique, readable id: the name and a random part, drawn from `seed` if given so that a
    seeded swarm's ids (and the evolution's order of them) repeat. A restarted process takes the
    id it had (IDS_VARIABLE), which the other components know it by."""
    for given in os.environ.get(IDS_VARIABLE, "").split(","):
        if given.startswith(f"{name}-"):
            return given
    suffix = uuid.uuid4().hex[:12] if seed is None else f"{seed:08x}"
    return f"{name}-{suffix}"


def setup_component(name: str, settings_class: type[S] = SwarmSettings,  # type: ignore[assignment]
                    problems: list[str] | None = None, description: str | None = None) -> S:
    """Checked settings from the environment and the command line (`--help` lists them; a bad one,
    or any of the caller's `problems`, exits with status 2), logging to `<SWARM_LOG_DIR>/<name>.log`
    and, under a launcher, exit when it dies."""
    settings = settings_module.load_settings(settings_class, argv=sys.argv[1:], description=description,
                                             problems=problems)
    handlers: list[logging.Handler] = [logging.FileHandler(settings.log_dir / f"{name}.log")]
    if sys.stderr.isatty():  # started by hand: show the log in the terminal too
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=settings.log_level, format=f"%(asctime)s {name} %(levelname)s %(message)s",
                        handlers=handlers, force=True)
    dump_stacks_on_sigusr1(handlers[0].stream)
    watch_parent()
    return settings


def dump_stacks_on_sigusr1(file: IO[str] | None = None) -> None:
    """`kill -USR1 <pid>` writes every thread's stack to `file` (default: stderr), to look at a hang."""
    faulthandler.register(signal.SIGUSR1, file=file or sys.__stderr__, all_threads=True)


def yield_to_the_critical_path(niceness: int = 5) -> None:
    """For the model processes: lower priority and SCHED_BATCH, so the server, aggregation and
    environment every step passes through get a core first (see docs/performance.md)."""
    with contextlib.suppress(AttributeError, OSError):
        os.nice(niceness)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def watch_parent() -> None:
    """Exit when the launching process dies, so a killed control or kernel leaves no orphans."""
    parent = os.environ.get(PARENT_VARIABLE)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(0.5)
        log.warning("launcher (pid %s) is gone; exiting", parent)
        logging.shutdown()
        os._exit(0)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()

"""SWARM_LAUNCHER=fork: the model processes as forks of one interpreter that imported the
libraries once, so they start without imports and share that memory. Each child runs 02_model.py's
main() under its own name; if one dies, the others are stopped and this exits with an error."""
from __future__ import annotations

import logging
import os
import signal
import sys

from swarm_rl.component import PARENT_VARIABLE, setup_component
from swarm_rl.launcher import FORK_PROCESS, model_processes
from swarm_rl.scripts import load_script

log = logging.getLogger(FORK_PROCESS)


def run_model(model, name: str, count: int) -> None:
    """In the child: serve as `name`, hosting `count` models, until the swarm stops."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ[PARENT_VARIABLE] = str(os.getppid())  # exit when this launcher goes
    os.environ["SWARM_MODELS_PER_PROCESS"] = str(count)
    try:
        model.main(name)
    finally:
        os._exit(0)


def main() -> None:
    settings = setup_component(FORK_PROCESS)
    model = load_script("02_model.py")  # the imports every model needs, done once
    children = {}
    for name, hosted in model_processes(settings.models, settings.models_per_process).items():
        pid = os.fork()
        if pid == 0:
            run_model(model, name, len(hosted))
        children[pid] = name
    log.info("forked %d model processes: %s", len(children), ", ".join(f"{n} (pid {p})" for p, n in children.items()))
    pid, status = os.wait()
    log.error("%s (pid %d) exited (status %d); stopping the other models", children.pop(pid), pid, status)
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    sys.exit(1)


if __name__ == "__main__":
    main()

"""Start SWARM_MODELS models from one interpreter that imported torch once.

An option, not the tutorial's way (which stays the default: one interpreter per model, started
by swergio-toolbox's Swarm). Here torch, stable-baselines3 and gymnasium are imported once and
every model is a fork of this process: its start costs no imports, and the libraries' memory is
shared between all models. Each child runs exactly 02_model.py's main(), with its own name
(model0, model1, ...), COMPONENT_ID, random seed and log file.

    swarm.add("models", "swarm.fork"); swarm.start("models")   # instead of the model loop

If a model dies, this launcher stops the others and exits with an error, so the control's
dead-component check reports it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from swarm.component import PARENT_VARIABLE, setup_component
from swarm.scripts import load_script

log = logging.getLogger("models")


def run_model(model, index: int) -> None:
    """In the child: serve as model<index> until the swarm stops."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ[PARENT_VARIABLE] = str(os.getppid())  # exit when this launcher goes
    try:
        model.main(f"model{index}")
    finally:
        os._exit(0)


def main() -> None:
    settings = setup_component("models")
    model = load_script("02_model.py")  # the imports every model needs, done once
    children = {}
    for index in range(settings.models):
        pid = os.fork()
        if pid == 0:
            run_model(model, index)
        children[pid] = f"model{index}"
    log.info("forked %d models: %s", len(children), ", ".join(f"{n} (pid {p})" for p, n in children.items()))
    pid, status = os.wait()
    log.error("%s (pid %d) exited (status %d); stopping the other models", children.pop(pid), pid, status)
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    sys.exit(1)


if __name__ == "__main__":
    main()

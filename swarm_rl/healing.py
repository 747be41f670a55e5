"""Healing: a process of the swarm that dies or falls silent during a run is started again under
its name, seed and ids, every member goes back to the last checkpoint, and the round in progress
is played again (swarm_rl.rounds). The server cannot be healed: every client's connection goes with it."""
from __future__ import annotations

import contextlib
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from swarm_rl import checkpoint
from swarm_rl.component import IDS_VARIABLE, NAME_VARIABLE
from swarm_rl.control import ControlClient
from swarm_rl.launcher import FORK_PROCESS, ManagedSwarm, SwarmError, model_processes, wait_for_answers
from swarm_rl.protocol import CMD, COMPONENT_ID, ROOM_EVOLUTION, STATE, WEIGHTS, custom_message
from swarm_rl.settings import SwarmSettings

SERVER = "server"


class Healer:
    """Restarts what a fault took, within SWARM_RESTARTS per run and once per process per round."""

    def __init__(self, swarm: ManagedSwarm, control: ControlClient, settings: SwarmSettings,
                 report: Callable[[str], None] = print) -> None:
        self.swarm, self.control, self.settings, self.report = swarm, control, settings, report
        self.saved: dict[str, Any] | None = None  # the members' state the swarm goes back to
        self.restarts: list[tuple[int, str]] = []  # (round, process) of every restart so far

    @contextlib.contextmanager
    def in_charge(self) -> Iterator[None]:
        """Within: a fault is left to the healer instead of stopping the swarm at once; whatever
        escapes (a fault it cannot heal, Ctrl-C) stops every process."""
        self.control.stops_swarm_on_failure = False
        try:
            with self.swarm.stop_on_failure():
                yield
        finally:
            self.control.stops_swarm_on_failure = True

    def remember(self, answers: list[dict[str, Any]]) -> None:
        """The members' answers to STATE at the end of a round (or before the first)."""
        self.saved = {"members": sorted((checkpoint.member(answer) for answer in answers),
                                        key=lambda m: m["model_id"])}

    def heal(self, fault: Exception, round_nr: int) -> tuple[list[str], float]:
        """Restart the processes `fault` lost, wait until the swarm answers, give every member the
        remembered state; the processes restarted and the seconds it took. Raises SwarmError
        (naming them) for what cannot be healed."""
        began = time.monotonic()
        if not self.settings.launch:
            return self.by_hand(fault, round_nr), time.monotonic() - began
        restarted: list[str] = []
        lost = self.lost(fault)
        while lost:
            self.check_allowed(lost, round_nr, fault)
            for name in lost:
                self.restart(name)
                self.restarts.append((round_nr, name))
            restarted += lost
            try:
                wait_for_answers(self.control, [n for n in restarted if not n.startswith("model")],
                                 self.settings.models, self.settings.start_timeout, check=self.swarm.raise_if_dead)
                lost = []
            except SwarmError as again:  # one of them (or another) died while starting
                lost, fault = self.lost(again), again
        self.restore()
        return restarted, time.monotonic() - began

    def lost(self, fault: Exception) -> list[str]:
        """The processes a fault took: those that exited, and those hosting models that stopped
        answering (they are alive but silent). Raises the fault itself if it names neither."""
        if not isinstance(fault, SwarmError):
            raise fault
        dead = [name for name, c in self.swarm.components.items()
                if c.exit_code() is not None and name not in self.swarm.stopped]
        silent = [self.process_of(model_id) for model_id in fault.silent]
        lost = sorted(set(dead) | {name for name in silent if name is not None})
        if not lost:
            raise fault
        return lost

    def by_hand(self, fault: Exception, round_nr: int) -> list[str]:
        """Models started by hand (SWARM_LAUNCH=0) that stopped answering: say how to start them
        again, wait for them (bounded), and restore every member."""
        if not isinstance(fault, SwarmError) or not fault.silent or self.saved is None:
            raise fault
        lost = sorted({model_id.rsplit("-", 1)[0] for model_id in fault.silent})
        self.check_allowed(lost, round_nr, fault)
        ids = ",".join(m["model_id"] for m in self.saved["members"])
        self.report(f"  {', '.join(lost)} stopped answering ({fault}). The control did not start them "
                    f"(SWARM_LAUNCH=0): stop what is left of each and start it again on its host, with the swarm's "
                    f"settings, within {self.settings.start_timeout:g} s:")
        for name in lost:
            self.report(f"    {NAME_VARIABLE}={name} {IDS_VARIABLE}={ids} python 02_model.py")
        self.restarts += [(round_nr, name) for name in lost]
        wait_for_answers(self.control, [], self.settings.models, self.settings.start_timeout)
        self.restore()
        return lost

    def process_of(self, model_id: str) -> str | None:
        """The process the control started that hosts the model `model_id` (model7-1a2b...: model7's),
        as `ManagedSwarm.start_models` started them."""
        model = model_id.rsplit("-", 1)[0]
        hosts = {hosted: process for process, models in
                 model_processes(self.settings.models, self.settings.models_per_process).items() for hosted in models}
        if model not in hosts:
            return None
        return FORK_PROCESS if self.settings.launcher == "fork" else hosts[model]

    def log_file(self, name: str) -> Path:
        """Where a process logs: its launcher's file, or (started by hand) the same name on its host."""
        component = self.swarm.components.get(name)
        return component.log_file if component is not None else self.settings.log_dir / f"{name}.log"

    def check_allowed(self, lost: list[str], round_nr: int, fault: Exception) -> None:
        logs = ", ".join(f"{name}: {self.log_file(name)}" for name in lost)
        if SERVER in lost:
            raise SwarmError(f"the server stopped ({fault}); a swarm cannot go on without it (logs: {logs})")
        again = [name for name in lost if (round_nr, name) in self.restarts]
        if again:
            raise SwarmError(f"{', '.join(again)} stopped again before round {round_nr} could be played again "
                             f"({fault}); not restarted (logs: {logs})")
        if len(self.restarts) + len(lost) > self.settings.restarts:
            raise SwarmError(f"{fault}; {len(self.restarts)} of SWARM_RESTARTS={self.settings.restarts} restarts "
                             f"used, {', '.join(lost)} not restarted (logs: {logs})")

    def restart(self, name: str) -> None:
        """Stop whatever is left of the process (a stopped one is woken to die) and start it again,
        a model process with the ids the other components know its models by."""
        component = self.swarm.components[name]
        component.stop()
        if name.startswith("model") and self.saved is not None:
            ids = [m["model_id"] for m in self.saved["members"]]
            component.environment = {**component.environment, IDS_VARIABLE: ",".join(ids)}
        component.start()

    def restore(self) -> None:
        """Every member to the remembered state, checked: a restart must not leave a member with
        weights of its own."""
        if self.saved is None:
            raise SwarmError("no state of the members to restore")
        ids = [m["model_id"] for m in self.saved["members"]]
        self.control.send(custom_message(ROOM_EVOLUTION, checkpoint.restore_message(self.saved, ids)))
        answers = self.control.gather(ROOM_EVOLUTION, {CMD: STATE}, self.settings.models, key=WEIGHTS)
        saved = {m["model_id"]: m["weights"] for m in self.saved["members"]}
        wrong = [a[COMPONENT_ID] for a in answers if a[COMPONENT_ID] not in saved
                 or not torch.equal(torch.as_tensor(a[WEIGHTS], dtype=torch.float32), saved[a[COMPONENT_ID]])]
        if wrong:
            raise SwarmError(f"the restored weights did not take in {', '.join(sorted(wrong))}")


def resume_command(settings: SwarmSettings, path: Path) -> str:
    """The shell command that goes on from the checkpoint `path`: a resumed run takes its settings
    from the checkpoint, so only where it runs is said (what differs from the defaults)."""
    defaults = SwarmSettings.from_env({}).to_env()
    variables = "".join(f"{name}={shlex.quote(value)} " for name, value in settings.to_env(secrets=False).items()
                        if name in checkpoint.DEPLOYMENT and name != "SWARM_RESUME" and value != defaults.get(name))
    return f"{variables}SWARM_RESUME={shlex.quote(str(path))} python 06_control.py"


def stopped_run(fault: Exception, settings: SwarmSettings, path: Path, since: float = 0.0) -> str:
    """What a shell user reads when a run stops on a fault: what happened, where the logs are,
    and how to go on (from `path`, if this run, begun at `since`, wrote it or resumed from it)."""
    lines = [f"the run stopped: {fault}", f"logs: {settings.log_dir}"]
    if path.exists() and (path.stat().st_mtime >= since or settings.resume == path):
        saved = checkpoint.load(path)
        history = saved["history"]
        done = f"round {len(history)}, {history[-1]['steps']:,} training steps" if history else "before round 1"
        lines.append(f"to go on from the last checkpoint ({done}):\n  {resume_command(settings, path)}")
    else:
        lines.append("no round was finished: there is no checkpoint to go on from")
    return "\n".join(lines)


def explain_stops(settings: SwarmSettings, path: Path) -> None:
    """From a shell, a SwarmError that ends the script prints `stopped_run` instead of a
    traceback (exit status 1); a notebook raises it as it is."""
    def explain(kind: type[BaseException], error: BaseException, traceback: Any) -> None:
        if not issubclass(kind, SwarmError):
            return default(kind, error, traceback)
        print(stopped_run(error, settings, path, began), file=sys.stderr, flush=True)

    began, default = time.time(), sys.excepthook
    sys.excepthook = explain

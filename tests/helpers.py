"""Test helpers: find and kill every process a test's swarm started, run notebooks and the
control, start small swarms, and talk to models like the evolution does."""
from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import psutil
import pytest
from nbclient import NotebookClient

from swarm_rl.control import ControlClient
from swarm_rl.launcher import ManagedSwarm
from swarm_rl.protocol import CMD, COMPONENT_ID, GET, ROOM_EVOLUTION, ROOT_ID, SET, WEIGHTS, custom_message
from swarm_rl.scripts import PROJECT_DIR as ROOT
from swarm_rl.scripts import load_script

__all__ = ["ROOT", "load_script"]

def processes_with_log_dir(log_dir: Path) -> list[psutil.Process]:
    """Live processes started with SWARM_LOG_DIR=log_dir: the test's own swarm, nothing else."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("SWARM_LOG_DIR") == str(log_dir):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def assert_all_gone(pids, within: float = 0.0) -> None:
    """None of `pids` is still running after at most `within` seconds (a reaped or zombie
    process counts as gone)."""
    deadline = time.monotonic() + within
    while (still := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not still, f"still running: {still}"


def assert_paired(script: Path, min_code_cells: int) -> None:
    """The notebook next to `script` holds exactly the script's cells (jupytext's pairing)."""
    from_script = jupytext.read(script)
    from_notebook = jupytext.read(script.with_suffix(".ipynb"))
    def cells(notebook):
        return [(cell.cell_type, cell.source) for cell in notebook.cells]
    assert cells(from_notebook) == cells(from_script), f"run: jupytext --sync {script.relative_to(ROOT)}"
    assert sum(kind == "code" for kind, _ in cells(from_script)) >= min_code_cells


def execute_notebook(notebook_path: Path, working_dir: Path, timeout: float) -> tuple[str, int]:
    """Run a notebook top to bottom; its printed text and how many images it showed."""
    notebook = nbformat.read(notebook_path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(working_dir)}}).execute()
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    return "".join(o.get("text", "") for o in outputs), sum("image/png" in o.get("data", {}) for o in outputs)


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


# --------------------------------------------------------------------------- whole swarms
COMPONENTS = ["aggregation", "environment", "evolution"]  # what wait_ready waits for, besides models


def start_swarm(config, models):
    """swarm.yaml's components and `models` models, launched like 06_control.py does."""
    swarm = ManagedSwarm(ROOT / "swarm.yaml", config.replace(models=models))
    swarm.start()
    swarm.start_models()
    return swarm


@contextlib.contextmanager
def ready_swarm(config, models):
    """A started swarm whose components and models all answer, and the control's client:
    (swarm, control, pids). Whatever happens inside, everything is stopped and gone afterwards."""
    swarm = start_swarm(config, models)
    pids = swarm.pids()
    try:
        control = ControlClient(swarm)
        swarm.wait_ready(control, COMPONENTS, models)
        yield swarm, control, pids
    finally:
        swarm.stop()
    assert_all_gone(pids.values())


def drain(client, seconds, room=None):
    """Every message `client` receives in `seconds` (in `room`, if given)."""
    messages, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        message = client.receive(timeout=left)
        if message is not None and (room is None or message.get("TO_ROOM") == room):
            messages.append(message)
    return messages


def run_control(env_overrides, **popen):
    """`python /path/to/06_control.py` with a small swarm (2 models, 2 rounds of 2 episodes by
    default), run from another folder as a user might: it finds swarm.yaml and its scripts.

    Seeded unless said: a fresh swarm can happen to balance CartPole from its first rounds, and
    a run that ends solved plays fewer rounds than a test counts on."""
    env = {**os.environ, "SWARM_MODELS": "2", "SWARM_ROUNDS": "2", "SWARM_EPISODES": "2", "SWARM_SEED": "0",
           **env_overrides}
    # Ctrl-C must reach the control as in a terminal, even when the tests themselves run as a
    # background job (a non-interactive shell starts those with SIGINT ignored, and the
    # children would inherit that).
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, **popen}
    cwd = popen.pop("cwd", tempfile.gettempdir())
    return subprocess.Popen([sys.executable, str(ROOT / "06_control.py")], cwd=cwd, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def wait_for_line(process, prefix, timeout=120.0):
    """Read the control's output until a line starts with `prefix`; fail if it never does, or
    not within `timeout` seconds (a reader thread, so a silent, hung control cannot block us)."""
    lines, found = [], queue.Queue()

    def read():
        for line in process.stdout:
            lines.append(line)
            if line.startswith(prefix):
                found.put(True)
                return
        found.put(False)

    threading.Thread(target=read, daemon=True).start()
    try:
        if found.get(timeout=timeout):
            return
    except queue.Empty:
        pytest.fail(f"no line starting with {prefix!r} within {timeout:g} s in:\n{''.join(lines)}")
    pytest.fail(f"no line starting with {prefix!r} in:\n{''.join(lines)}")


class Output:
    """A process's output, read by a thread into lines, so no wait on it can block."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.new: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line)
            self.new.put(line)
        self.new.put(None)

    def wait_for(self, prefix: str, timeout: float = 180.0, anywhere: bool = False) -> str:
        """The first new line that starts with `prefix` (with `anywhere`: that holds it)."""
        deadline, where = time.monotonic() + timeout, "holding" if anywhere else "starting with"
        while True:
            try:
                line = self.new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line {where} {prefix!r} within {timeout:g} s in:\n{self.text()}")
            if line is None:
                pytest.fail(f"the process ended without a line {where} {prefix!r}:\n{self.text()}")
            if prefix in line if anywhere else line.startswith(prefix):
                return line

    def text(self) -> str:
        return "".join(self.lines)


def seconds_until_gone(pids, timeout):
    """How long until none of `pids` runs any more (a zombie counts as gone), polled every 50 ms;
    None if some are still running after `timeout` seconds."""
    began = time.monotonic()
    while True:
        if not any(_running(pid) for pid in pids):
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            return None
        time.sleep(0.05)


def _running(pid) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def get_weights(probe, models):
    """Ask the models for their weights like the evolution does; {model id: vector}."""
    root_id = "probe-" + str(time.monotonic())
    probe.send(custom_message(ROOM_EVOLUTION, {CMD: GET}, root_id))
    weights, deadline = {}, time.monotonic() + 30
    while len(weights) < models and time.monotonic() < deadline:
        message = probe.receive(timeout=1)
        if message and message.get(ROOT_ID) == root_id and WEIGHTS in message:
            weights[message[COMPONENT_ID]] = np.array(message[WEIGHTS])
    assert len(weights) == models, f"{len(weights)} of {models} models answered GET"
    return weights


def set_weights(probe, weights):
    probe.send(custom_message(ROOM_EVOLUTION, {CMD: SET, WEIGHTS: {k: v.tolist() for k, v in weights.items()}}))


# --------------------------------------------------------------------------- network namespaces
def why_no_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    if listed.returncode != 0:
        return f"`ip netns` is unavailable: {listed.stderr.strip()}"
    return None


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

"""Shared test helpers: load the numbered scripts as modules, isolate ports and log folders,
and find every process a test's swarm started (so none can outlive the test)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import numpy as np
import psutil
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import swarm_common as sc  # noqa: E402

load_script = sc.load_script  # tests import it from here


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
    def alive() -> list[int]:
        found = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    found.append(pid)
            except psutil.NoSuchProcess:
                pass
        return found

    deadline = time.monotonic() + within
    while (still := alive()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not still, f"still running: {still}"


def assert_notebook_matches_script(script: Path, min_code_cells: int) -> None:
    """The notebook next to `script` holds exactly the script's `# %%` cells."""
    py_to_ipynb = load_script("tools/py_to_ipynb.py")
    notebook = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    script_cells = py_to_ipynb.split_cells(script.read_text())
    assert [(cell.cell_type, cell.source) for cell in notebook.cells] == script_cells, \
        f"run: python tools/py_to_ipynb.py {script.relative_to(ROOT)}"
    assert sum(kind == "code" for kind, _ in script_cells) >= min_code_cells


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


@pytest.fixture
def swarm_env(tmp_path, monkeypatch) -> sc.Config:
    """A free loopback port and a private log folder, inherited by every process the test starts.

    Whatever is still running with that log folder when the test ends is killed, and the test
    fails: a leak is a bug, but it must not outlive the test."""
    log_dir = tmp_path / "logs"
    monkeypatch.setenv("SWERGIO_HOST", "127.0.0.1")
    monkeypatch.setenv("SWERGIO_PORT", str(sc.free_port()))
    monkeypatch.setenv("SWARM_LOG_DIR", str(log_dir))
    monkeypatch.setenv("SWARM_START_TIMEOUT", "120")
    monkeypatch.setenv("SWARM_REPLY_TIMEOUT", "60")
    yield sc.Config.from_env()
    deadline = time.monotonic() + 10  # processes being stopped get a moment to go
    while (left := processes_with_log_dir(log_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    kill_all(left)
    assert not left, f"processes left behind: {[p.pid for p in left]}"


# --------------------------------------------------------------------------- whole swarms
COMPONENTS = ["aggregation", "environment", "evolution"]  # what wait_ready waits for, besides models


def start_swarm(config, models):
    """swarm.yaml's components and `models` models, launched like 06_control.py does."""
    swarm = sc.ManagedSwarm(ROOT / "swarm.yaml", dataclasses.replace(config, models=models))
    swarm.start()
    for i in range(models):
        swarm.add(f"model{i}", "02_model.py")
        swarm.start(f"model{i}")
    return swarm


@contextlib.contextmanager
def ready_swarm(config, models):
    """A started swarm whose components and models all answer, and the control's client:
    (swarm, control, pids). Whatever happens inside, everything is stopped and gone afterwards."""
    swarm = start_swarm(config, models)
    pids = swarm.pids()
    try:
        control = sc.ControlClient(swarm)
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
    """`python 06_control.py` with a small swarm (2 models, 2 rounds of 2 episodes by default)."""
    env = {**os.environ, "SWARM_MODELS": "2", "SWARM_ROUNDS": "2", "SWARM_EPISODES": "2", **env_overrides}
    # Ctrl-C must reach the control as in a terminal, even when the tests themselves run as a
    # background job (a non-interactive shell starts those with SIGINT ignored, and the
    # children would inherit that).
    return subprocess.Popen([sys.executable, "06_control.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
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
    probe.send(sc.custom_message(sc.ROOM_EVOLUTION, {sc.CMD: sc.GET}, root_id))
    weights, deadline = {}, time.monotonic() + 30
    while len(weights) < models and time.monotonic() < deadline:
        message = probe.receive(timeout=1)
        if message and message.get(sc.ROOT_ID) == root_id and sc.WEIGHTS in message:
            weights[message[sc.COMPONENT_ID]] = np.array(message[sc.WEIGHTS])
    assert len(weights) == models, f"{len(weights)} of {models} models answered GET"
    return weights


def set_weights(probe, weights):
    probe.send(sc.custom_message(sc.ROOM_EVOLUTION, {sc.CMD: sc.SET, sc.WEIGHTS: {k: v.tolist() for k, v in weights.items()}}))

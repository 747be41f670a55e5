"""Shared test helpers: load the numbered scripts as modules, isolate ports and log folders,
and find every process a test's swarm started (so none can outlive the test)."""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import swarm_common as sc  # noqa: E402

_loaded: dict[str, object] = {}


def load_script(filename: str):
    """Import a numbered script (e.g. 02_model.py) without running its __main__ part."""
    if filename not in _loaded:
        path = ROOT / filename
        spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[filename] = module
    return _loaded[filename]


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

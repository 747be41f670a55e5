"""Fixtures: every test that starts processes gets a free loopback port and a log folder of its
own, and whatever is still running with that folder when the test ends is killed (and fails it)."""
from __future__ import annotations

import time

import pytest

from swarm_rl.launcher import free_port
from swarm_rl.settings import SwarmSettings
from tests.helpers import kill_all, processes_with_log_dir


@pytest.fixture
def swarm_env(tmp_path, monkeypatch) -> SwarmSettings:
    """A free loopback port and a private log folder, inherited by every process the test starts.

    Whatever is still running with that log folder when the test ends is killed, and the test
    fails: a leak is a bug, but it must not outlive the test."""
    log_dir = tmp_path / "logs"
    monkeypatch.setenv("SWERGIO_HOST", "127.0.0.1")
    monkeypatch.setenv("SWERGIO_PORT", str(free_port()))
    monkeypatch.setenv("SWARM_LOG_DIR", str(log_dir))
    # The tutorial's algorithm and message format (one CartPole), which the tests' hand-made
    # messages speak; tests of the defaults say SWARM_PRESET=swarm.
    monkeypatch.setenv("SWARM_PRESET", "tutorial")
    monkeypatch.setenv("SWARM_START_TIMEOUT", "120")
    monkeypatch.setenv("SWARM_REPLY_TIMEOUT", "60")
    yield SwarmSettings.from_env()
    deadline = time.monotonic() + 10  # processes being stopped get a moment to go
    while (left := processes_with_log_dir(log_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    kill_all(left)
    assert not left, f"processes left behind: {[p.pid for p in left]}"



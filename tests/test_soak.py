"""Soak tests: many runs on one swarm, and many swarms one after the other.

They look for what a single run cannot show: a duplicate or lost reply once in a hundred runs,
and file descriptors, threads or memory that grow with every run or every swarm (in the swarm's
processes, and in the control's: a notebook kernel starts many swarms in its lifetime).
Marked slow, they still run in CI; together under two minutes on 2 cores.
"""
import contextlib
import threading
import time
from collections import Counter

import psutil
import pytest

from swarm_rl.client import SwarmClient
from swarm_rl.control import ControlClient
from swarm_rl.launcher import wait_for_answers
from swarm_rl.protocol import (DETERMINISTIC, ENV_DONE, EPISODE, EVO_DONE, EVOLUTION, NR_OF_EPISODE, ROOM_CONTROL, ROOT_ID,
                               SCORES, STATUS)
from swarm_rl.settings import SwarmSettings
from tests.helpers import COMPONENTS, assert_all_gone, start_swarm

MB = 1024 * 1024


class Listener:
    """A plain client in the `control` room, in its own thread: it counts every ENV_DONE and
    EVO_DONE by (STATUS, ROOT_ID), including any that the control itself would skip as stale."""

    def __init__(self, config: SwarmSettings) -> None:
        self.client = SwarmClient("listener", config)
        self.client.join_room(ROOM_CONTROL)
        self.replies: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self.client.receive(timeout=0.2)
            if message is not None and message.get("TO_ROOM") == ROOM_CONTROL \
                    and message.get(STATUS) in (ENV_DONE, EVO_DONE):
                self.replies[message[STATUS], message.get(ROOT_ID)] += 1

    def stop(self) -> Counter:
        self._stop.set()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "the listener thread did not stop"
        close_quietly(self.client)
        return self.replies


def close_quietly(client: SwarmClient) -> None:
    """swergio's close() says goodbye to the server first, which fails if it is already gone."""
    with contextlib.suppress(OSError):
        client.close()


def usage(processes: dict[str, psutil.Process]) -> dict[str, dict[str, int]]:
    return {name: {"fds": p.num_fds(), "threads": p.num_threads(), "rss": p.memory_info().rss}
            for name, p in processes.items()}


@pytest.mark.slow
def test_a_hundred_short_runs_and_evolutions_on_one_swarm(swarm_env):
    models = 2
    swarm = start_swarm(swarm_env, models)
    pids = swarm.pids()
    try:
        control = ControlClient(swarm)
        listener = Listener(swarm_env)
        swarm.wait_ready(control, COMPONENTS, models)
        # The listener's pings are answered only after its join went through: it hears everything.
        wait_for_answers(listener.client, COMPONENTS, models, timeout=60)
        listener.start()
        processes = {name: psutil.Process(pid) for name, pid in pids.items()} | {"test": psutil.Process()}

        requested: dict[str, list[str]] = {ENV_DONE: [], EVO_DONE: []}
        snapshots = {}
        began = time.monotonic()
        for run in range(1, 101):
            reply = control.request({NR_OF_EPISODE: 2, DETERMINISTIC: False}, until=ENV_DONE, timeout=30)
            assert reply[EPISODE] == 2 and len(reply[SCORES]) == 2
            requested[ENV_DONE].append(reply[ROOT_ID])
            reply = control.request({EVOLUTION: True}, until=EVO_DONE, timeout=30)
            requested[EVO_DONE].append(reply[ROOT_ID])
            if run in (10, 100):
                snapshots[run] = usage(processes)
        print(f"100 runs and evolutions in {time.monotonic() - began:.1f} s")
        time.sleep(2)  # a late duplicate would arrive now
        seen = listener.stop()
        close_quietly(control)
    finally:
        swarm.stop()
    assert_all_gone(pids.values())

    # Exactly one reply per request, and no reply to anything we did not ask.
    expected = Counter({(status, root): 1 for status, roots in requested.items() for root in roots})
    assert len(expected) == 200, "two requests got the same ROOT_ID"
    assert seen == expected, (f"missing: {sorted(expected - seen)[:5]}, "
                              f"extra or duplicate: {sorted((seen - expected).items())[:5]}")

    # Nothing grows with the runs. The connections are fixed (every component, the control and the
    # listener connect once), so descriptors and threads must be exactly equal.
    early, late = snapshots[10], snapshots[100]
    for name in processes:
        print(f"{name:12} fds {early[name]['fds']:3} -> {late[name]['fds']:3}   threads {early[name]['threads']:3} -> "
              f"{late[name]['threads']:3}   rss {early[name]['rss'] / MB:6.1f} -> {late[name]['rss'] / MB:6.1f} MB")
    for name in processes:
        assert late[name]["fds"] == early[name]["fds"], f"{name}: file descriptors {early[name]} -> {late[name]}"
        assert late[name]["threads"] == early[name]["threads"], f"{name}: threads {early[name]} -> {late[name]}"
        growth = (late[name]["rss"] - early[name]["rss"]) / MB
        assert growth < 20, f"{name}: memory grew by {growth:.1f} MB between run 10 and run 100"


@pytest.mark.slow
def test_fifty_swarms_started_and_stopped_one_after_the_other(swarm_env):
    """Like a notebook whose start cell is run again and again: every cycle a new swarm (on the
    same port) with one model, one short run, stop. Each cycle's processes must be gone after its
    stop, and the control's process must not collect descriptors or threads."""
    me = psutil.Process()
    baseline = final = None
    began = time.monotonic()
    for cycle in range(1, 51):
        swarm = start_swarm(swarm_env, 1)
        pids = list(swarm.pids().values())
        assert len(pids) == 5
        try:
            control = ControlClient(swarm)
            try:
                swarm.wait_ready(control, COMPONENTS, 1)
                reply = control.request({NR_OF_EPISODE: 1, DETERMINISTIC: False}, until=ENV_DONE,
                                        timeout=30)
                assert reply[EPISODE] == 1
            finally:
                close_quietly(control)
        finally:
            swarm.stop()
        assert_all_gone(pids)
        if cycle == 5:
            baseline = {"fds": me.num_fds(), "threads": me.num_threads()}
        if cycle == 50:
            final = {"fds": me.num_fds(), "threads": me.num_threads()}
    print(f"50 cycles in {time.monotonic() - began:.1f} s; test process after cycle 5: {baseline}, "
          f"after cycle 50: {final}")
    assert final == baseline

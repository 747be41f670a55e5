"""Faults injected into a real swarm: components SIGKILLed mid-run, the server killed, the
notebook kernel interrupted, restarted and killed, Ctrl-C on the control script, and a second
swarm started on the port of a running one.

Each test asserts the outcome (which error, naming which component; which processes are left)
and how long the fault took to show: a failure the control notices only after its reply
timeout (60 s here, 120 s by default) would leave a user staring at a silent console.
"""
import dataclasses
import os
import queue
import signal
import subprocess
import threading
import time

import jupytext
import psutil
import pytest

from swarm_rl.launcher import ManagedSwarm, SwarmError
from swarm_rl.protocol import DETERMINISTIC, ENV_DONE, EPISODE, EVO_DONE, EVOLUTION, NR_OF_EPISODE, STEPS
from tests.helpers import (ROOT, assert_all_gone, processes_with_log_dir, ready_swarm, run_control, seconds_until_gone,
                           wait_for_line)

MODELS = 2
LONG_RUN = {NR_OF_EPISODE: 100_000, DETERMINISTIC: False}  # hours: only a fault ends it
SHORT_RUN = {NR_OF_EPISODE: 1, DETERMINISTIC: False}


@pytest.fixture
def two_model_swarm(swarm_env):
    """Server, aggregation, environment, evolution and two models, all answering; and the
    control's client. Whatever happens in the test, everything is stopped and gone at the end."""
    with ready_swarm(swarm_env, MODELS) as started:
        yield started


def request_and_kill(control, payload, until, victim_pid, after=1.5):
    """control.request(payload), and SIGKILL `victim_pid` `after` seconds into it. The request
    must fail with a SwarmError: returns it, the seconds from the kill to the error, and how many
    progress messages the run had sent before the kill (so: whether it was under way)."""
    killed_at, progress_at = [], []

    def kill():
        killed_at.append(time.monotonic())  # before the kill: the measured delay errs long
        os.kill(victim_pid, signal.SIGKILL)

    def progress(message):
        progress_at.append(time.monotonic())
        return False  # keep waiting for `until`

    timer = threading.Timer(after, kill)
    timer.start()
    try:
        with pytest.raises(SwarmError) as error:
            control.request(payload, until=until, progress=progress)
        failed_at = time.monotonic()
    finally:
        timer.cancel()
        timer.join()
    assert killed_at, f"the request failed before the kill: {error.value}"
    return error.value, failed_at - killed_at[0], sum(t < killed_at[0] for t in progress_at)


def gone_with_the_swarm(pids, log_dir):
    """Every process of the swarm has exited (the control stopped it), and nothing else with
    the swarm's log folder runs."""
    assert_all_gone(pids.values())
    assert processes_with_log_dir(log_dir) == []


# --------------------------------------------------------------------------- components killed
@pytest.mark.parametrize("victim", ["environment", "model1", "aggregation"])
def test_a_component_killed_during_a_long_run_fails_the_request_at_once(two_model_swarm, swarm_env, victim):
    _swarm, control, pids = two_model_swarm
    error, took, episodes_before = request_and_kill(control, LONG_RUN, ENV_DONE, pids[victim])
    print(f"{victim} killed after {episodes_before} episodes: SwarmError {took:.2f} s later: {error}")
    assert episodes_before >= 1, "the run was not under way when the component was killed"
    assert f"{victim} (exit code -9, log " in str(error), str(error)
    assert took < 5, f"the kill of {victim} took {took:.1f} s to be reported"
    gone_with_the_swarm(pids, swarm_env.log_dir)  # ControlClient stopped the swarm on failure


def test_an_evolution_request_after_the_evolution_was_killed_fails_at_once(two_model_swarm, swarm_env):
    _swarm, control, pids = two_model_swarm
    control.request(SHORT_RUN, until=ENV_DONE)  # contributions to evolve on
    os.kill(pids["evolution"], signal.SIGKILL)
    killed_at = time.monotonic()
    with pytest.raises(SwarmError, match=r"evolution \(exit code -9, log "):
        control.request({EVOLUTION: True}, until=EVO_DONE)
    took = time.monotonic() - killed_at
    print(f"evolution killed: SwarmError after {took:.2f} s")
    assert took < 5
    gone_with_the_swarm(pids, swarm_env.log_dir)


# --------------------------------------------------------------------------- the server killed
def watch_exits(processes: dict[str, psutil.Process], timeout: float) -> dict[str, tuple[float, float]]:
    """{name: (seconds until it exited, CPU seconds it used meanwhile)} for every process that
    exits within `timeout`. The processes are our children and nobody reaps them while we
    watch, so a zombie still shows its final CPU times."""
    began = time.monotonic()
    start_cpu = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
    exits = {}
    while len(exits) < len(processes) and time.monotonic() - began < timeout:
        for name, process in processes.items():
            if name in exits:
                continue
            try:
                status, cpu = process.status(), sum(process.cpu_times()[:2])
            except psutil.NoSuchProcess:  # reaped after all: count the last sample
                status, cpu = psutil.STATUS_ZOMBIE, start_cpu[name]
            if status == psutil.STATUS_ZOMBIE:
                exits[name] = (time.monotonic() - began, cpu - start_cpu[name])
        time.sleep(0.05)
    return exits


def test_when_the_server_is_killed_everything_else_exits_by_itself(two_model_swarm, swarm_env):
    _swarm, control, pids = two_model_swarm
    control.request(SHORT_RUN, until=ENV_DONE)
    others = {name: psutil.Process(pid) for name, pid in pids.items() if name != "server"}
    os.kill(pids["server"], signal.SIGKILL)
    exits = watch_exits(others, timeout=10)  # no swarm.stop(): each component must notice alone
    print("after the server's kill:", {name: f"exit {t:.2f} s, CPU {cpu:.2f} s" for name, (t, cpu) in exits.items()})
    assert sorted(exits) == sorted(others), f"still running 10 s after the server died: {sorted(set(others) - set(exits))}"
    busy = {name: cpu for name, (_, cpu) in exits.items() if cpu > 1.0}
    assert not busy, f"CPU seconds used while dying (a busy loop?): {busy}"
    began = time.monotonic()
    with pytest.raises(SwarmError, match=r"server \(exit code -9, log "):
        control.request(SHORT_RUN, until=ENV_DONE)
    print(f"the next request failed after {time.monotonic() - began:.2f} s")
    assert time.monotonic() - began < 5
    gone_with_the_swarm(pids, swarm_env.log_dir)


def test_a_server_killed_during_a_request_is_reported_as_a_dead_server(two_model_swarm, swarm_env):
    _swarm, control, pids = two_model_swarm
    error, took, _ = request_and_kill(control, LONG_RUN, ENV_DONE, pids["server"])
    assert "server (exit code -9, log " in str(error) and took < 5
    gone_with_the_swarm(pids, swarm_env.log_dir)


# --------------------------------------------------------------------------- the notebook kernel
# The notebook's own code cells up to the one that defines start() and start_evo() (imports, the
# swarm started, the control ready, ...) in one cell; READY then lists the swarm's pids.
NOTEBOOK_CELLS = [cell.source for cell in jupytext.read(ROOT / "06_control.py").cells if cell.cell_type == "code"]
UP_TO_START = next(i for i, source in enumerate(NOTEBOOK_CELLS) if "def start(" in source) + 1
START_CELL = "\n".join(NOTEBOOK_CELLS[:UP_TO_START]) + '\nprint("READY", *swarm.pids().values(), flush=True)\n'
LONG_CELL = START_CELL + "start(100_000)\n"
SHORT_CELL = START_CELL + """
start(1)
swarm.stop()
print("STOPPED", flush=True)
"""


class Kernel:
    """A python3 Jupyter kernel in the project folder, driven cell by cell."""

    def __init__(self) -> None:
        from jupyter_client.manager import KernelManager

        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(ROOT))  # inherits the test's environment (swarm_env)
        self.client = None
        self.connect()

    def connect(self) -> None:
        if self.client is not None:
            self.client.stop_channels()
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def pid(self) -> int:
        return self.manager.provisioner.process.pid

    def start(self, code: str) -> str:
        """Send a cell; returns its message id without waiting for it."""
        return self.client.execute(code)

    def wait_for_output(self, msg_id: str, prefix: str, timeout: float) -> str:
        """The first stdout line of the cell that starts with `prefix`."""
        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            try:
                message = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                continue
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "stream":
                seen.append(message["content"]["text"])
                for line in message["content"]["text"].splitlines():
                    if line.startswith(prefix):
                        return line
            elif message["msg_type"] == "error":
                pytest.fail(f"cell failed before {prefix!r}: {message['content']['ename']}: "
                            f"{message['content']['evalue']}\n{''.join(seen)}")
        pytest.fail(f"no {prefix!r} within {timeout:g} s; the cell printed:\n{''.join(seen)}")

    def wait_for_reply(self, msg_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                reply = self.client.get_shell_msg(timeout=left)
            except queue.Empty:
                break
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]
        pytest.fail(f"the cell did not finish within {timeout:g} s")

    def shutdown(self) -> None:
        if self.client is not None:
            self.client.stop_channels()
        if self.manager.has_kernel:
            self.manager.shutdown_kernel(now=True)


def swarm_pids(ready_line: str) -> list[int]:
    return [int(pid) for pid in ready_line.split()[1:]]


def test_the_notebook_kernel_interrupted_restarted_or_killed_leaves_no_swarm(swarm_env, monkeypatch):
    monkeypatch.setenv("SWARM_MODELS", str(MODELS))
    kernel = Kernel()
    try:
        # 1. Interrupt (the notebook's stop button) while a long request runs.
        cell = kernel.start(LONG_CELL)
        first = swarm_pids(kernel.wait_for_output(cell, "READY", timeout=120))
        assert len(first) == 4 + MODELS
        time.sleep(1.0)  # well into the request
        kernel.manager.interrupt_kernel()
        took = seconds_until_gone(first, timeout=10)
        reply = kernel.wait_for_reply(cell, timeout=30)
        print(f"interrupt: swarm gone after {took} s")
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", reply
        left = [p.pid for p in processes_with_log_dir(swarm_env.log_dir)]
        assert took is not None, f"still running 10 s after the interrupt: {left}"
        assert [p.pid for p in processes_with_log_dir(swarm_env.log_dir)] == [kernel.pid()]  # the kernel only

        # 2. The same kernel starts a new swarm on the same port and completes a short run.
        cell = kernel.start(SHORT_CELL)
        second = swarm_pids(kernel.wait_for_output(cell, "READY", timeout=120))
        assert kernel.wait_for_output(cell, "STOPPED", timeout=120)
        assert kernel.wait_for_reply(cell, timeout=30)["status"] == "ok"
        assert_all_gone(second)

        # 3. Restart the kernel (the notebook's restart button) while a third swarm runs.
        cell = kernel.start(START_CELL)
        third = swarm_pids(kernel.wait_for_output(cell, "READY", timeout=120))
        assert kernel.wait_for_reply(cell, timeout=30)["status"] == "ok"
        began = time.monotonic()
        kernel.manager.restart_kernel()  # a shutdown request first, a kill after 5 s
        took = seconds_until_gone(third, timeout=10)
        elapsed = time.monotonic() - began
        print(f"restart: swarm gone {elapsed:.2f} s after the restart began")
        assert took is not None and elapsed < 10, f"the swarm outlived the kernel restart by {elapsed:.1f} s"
        kernel.connect()

        # 4. Kill the kernel outright while a fourth swarm runs: only the components' own watch
        #    on their launcher can end them.
        cell = kernel.start(START_CELL)
        fourth = swarm_pids(kernel.wait_for_output(cell, "READY", timeout=120))
        assert kernel.wait_for_reply(cell, timeout=30)["status"] == "ok"
        os.kill(kernel.pid(), signal.SIGKILL)
        took = seconds_until_gone(fourth, timeout=10)
        print(f"kernel killed: swarm gone after {took} s")
        assert took is not None, "components outlived their killed kernel by 10 s"
    finally:
        kernel.shutdown()
    assert processes_with_log_dir(swarm_env.log_dir) == []


# --------------------------------------------------------------------------- the control script
def test_ctrl_c_on_the_control_script_ends_every_process_within_10_s(swarm_env):
    process = run_control({"SWARM_EPISODES": "1000"})  # a round long enough to interrupt
    try:
        wait_for_line(process, "ROUND 1")
        launched = [p.pid for p in psutil.Process(process.pid).children()]
        assert len(launched) == 4 + MODELS
        time.sleep(0.5)  # into the training episodes
        process.send_signal(signal.SIGINT)
        took = seconds_until_gone([*launched, process.pid], timeout=10)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # say where it hangs: the control dumps its stacks
            process.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            process.kill()
            output, _ = process.communicate(timeout=30)
            pytest.fail(f"the control still ran 40 s after Ctrl-C (swarm gone: {took is not None}); "
                        f"its output, then every thread's stack:\n{output}")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
    print(f"Ctrl-C: control and swarm gone after {took} s")
    assert took is not None, f"still running 10 s after Ctrl-C:\n{output}"
    assert process.returncode != 0 and "KeyboardInterrupt" in output
    assert "swarm stopped" not in output  # the loop did not carry on as if nothing happened


# --------------------------------------------------------------------------- two swarms, one port
def test_a_second_swarm_on_the_port_of_a_running_one_starts_nothing(two_model_swarm, swarm_env):
    swarm, control, pids = two_model_swarm
    running = {p.pid for p in processes_with_log_dir(swarm_env.log_dir)}
    assert running == set(pids.values())

    second = ManagedSwarm(ROOT / "swarm.yaml", dataclasses.replace(swarm_env, models=MODELS))
    began = time.monotonic()
    with pytest.raises(SwarmError, match=rf"port {swarm_env.port} on 127.0.0.1 is already in use "
                                            r"\(is a previous swarm still running\?"):
        second.start()
    print(f"the second swarm refused to start after {time.monotonic() - began:.3f} s")
    assert time.monotonic() - began < 2
    assert second.pids() == {}, "the second swarm started processes"
    assert {p.pid for p in processes_with_log_dir(swarm_env.log_dir)} == running

    # The same from a shell: a second `python 06_control.py` fails, starts nothing, names the cause.
    process = run_control({})
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0 and "previous swarm still running" in output, output
    assert {p.pid for p in processes_with_log_dir(swarm_env.log_dir)} == running

    # ...and the first swarm never noticed.
    reply = control.request({NR_OF_EPISODE: 2, DETERMINISTIC: True}, until=ENV_DONE, timeout=30)
    assert reply[EPISODE] == 2 and 16 <= reply[STEPS] <= 1000
    assert swarm.running() == list(pids)

"""Healing: processes of a running swarm killed or frozen, started again from the last checkpoint,
and the run going on; and the stop that reads like one when it cannot."""
import dataclasses
import itertools
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from swarm_rl import rounds
from swarm_rl.healing import Healer, resume_command, stopped_run
from swarm_rl.launcher import ManagedSwarm, SwarmError
from swarm_rl.protocol import CMD, ROOM_EVOLUTION, STATE, WEIGHTS
from swarm_rl.settings import SwarmSettings
from tests.helpers import (ROOT, Output, assert_all_gone, get_weights, processes_with_log_dir, ready_swarm,
                           run_control, set_weights)


# --------------------------------------------------------------------------- the round loop
def test_a_round_that_fails_is_healed_and_played_again_counting_its_lost_steps():
    attempts = iter([ValueError, None, None, None])
    def start(episodes, deterministic):
        if not deterministic and next(attempts) is not None:
            fault = SwarmError("model1 died")
            fault.progress = {"STEPS": 30}
            raise fault
        return {"SCORES": [20.0] * episodes, "STEPS": 0 if deterministic else 100}

    healed, saved = [], []
    settings = SwarmSettings(envs=1, episodes=2, rounds=2, evolution=False, max_seconds=0)
    result = rounds.train_until_solved(start, lambda: 0.0, lambda t, r: (0.0, 0), settings, report=lambda line: None,
                                       after_round=saved.append,
                                       heal=lambda fault, round_nr: (healed.append((str(fault), round_nr)) or ["model1"], 1.5))
    assert healed == [("model1 died", 1)]
    first, second = result["history"]
    assert first["restarted"] == "model1" and first["lost_steps"] == 30 and first["steps"] == 130
    assert second["restarted"] is None and second["lost_steps"] == 0 and second["steps"] == 230
    assert [len(history) for history in saved] == [1, 2], "a checkpoint per round played to its end"


def test_a_fault_the_healer_refuses_ends_the_run_with_its_error():
    def start(episodes, deterministic):
        raise SwarmError("the server stopped")

    def heal(fault, round_nr):
        raise fault

    with pytest.raises(SwarmError, match="the server stopped"):
        rounds.train_until_solved(start, lambda: 0.0, lambda t, r: (0.0, 0), SwarmSettings(rounds=3),
                                  report=lambda line: None, heal=heal)


# --------------------------------------------------------------------------- the healer
def member_states(control, models):
    return control.gather(ROOM_EVOLUTION, {CMD: STATE}, models, key=WEIGHTS)


def killed(swarm, name, sig=signal.SIGKILL):
    process = swarm.components[name].process
    os.kill(process.pid, sig)
    if sig == signal.SIGKILL:
        process.wait(10)
    return process.pid


def test_a_killed_model_is_restarted_and_every_member_goes_back_to_the_remembered_state(swarm_env):
    with ready_swarm(swarm_env, 3) as (swarm, control, _pids):
        healer = Healer(swarm, control, swarm.settings)
        healer.remember(member_states(control, 3))
        remembered = {m["model_id"]: m["weights"].numpy() for m in healer.saved["members"]}
        rng = np.random.default_rng(0)
        set_weights(control, {model_id: rng.normal(size=w.shape) for model_id, w in remembered.items()})
        old = killed(swarm, "model1")

        names, seconds = healer.heal(SwarmError("model1 died"), round_nr=4)

        assert names == ["model1"] and seconds < 60
        assert swarm.components["model1"].process.pid != old and not psutil.pid_exists(old)
        weights = get_weights(control, 3)
        assert sorted(weights) == sorted(remembered), "the restarted model answers under its old id"
        for model_id, vector in weights.items():
            np.testing.assert_array_equal(vector.astype(np.float32), remembered[model_id])


def test_a_process_that_dies_again_in_the_round_it_was_restarted_for_stops_the_run(swarm_env):
    with ready_swarm(swarm_env, 2) as (swarm, control, _pids):
        healer = Healer(swarm, control, swarm.settings)
        healer.remember(member_states(control, 2))
        killed(swarm, "model0")
        assert healer.heal(SwarmError("model0 died"), round_nr=2)[0] == ["model0"]
        killed(swarm, "model0")
        with pytest.raises(SwarmError, match=r"model0 stopped again before round 2 could be played again .*model0\.log"):
            healer.heal(SwarmError("model0 died"), round_nr=2)
        assert healer.restarts == [(2, "model0")]


def test_restarts_beyond_swarm_restarts_stop_the_run_naming_what_was_not_restarted(swarm_env):
    with ready_swarm(dataclasses.replace(swarm_env, restarts=1), 2) as (swarm, control, _pids):
        healer = Healer(swarm, control, swarm.settings)
        healer.remember(member_states(control, 2))
        killed(swarm, "model0")
        healer.heal(SwarmError("model0 died"), round_nr=1)
        killed(swarm, "environment")
        with pytest.raises(SwarmError, match=r"1 of SWARM_RESTARTS=1 restarts used, environment not restarted"):
            healer.heal(SwarmError("environment died"), round_nr=3)


def test_the_server_is_not_restarted(swarm_env):
    with ready_swarm(swarm_env, 2) as (swarm, control, _pids):
        healer = Healer(swarm, control, swarm.settings)
        healer.remember(member_states(control, 2))
        killed(swarm, "server")
        time.sleep(1.0)  # the others exit when their connection goes
        with pytest.raises(SwarmError, match="the server stopped"):
            healer.heal(SwarmError("lost the server"), round_nr=1)


def test_the_healer_is_in_charge_only_within_its_block_and_what_escapes_it_stops_the_swarm(swarm_env):
    with ready_swarm(swarm_env, 2) as (swarm, control, _pids):
        healer = Healer(swarm, control, swarm.settings)
        assert control.stops_swarm_on_failure, "a request outside the run loop stops the swarm on failure"
        with pytest.raises(KeyboardInterrupt), healer.in_charge():
            assert not control.stops_swarm_on_failure
            raise KeyboardInterrupt
        assert control.stops_swarm_on_failure and swarm.running() == []


def test_a_fault_that_names_no_process_is_not_healed(swarm_env):
    with ready_swarm(swarm_env, 2) as (swarm, control, _pids):
        healer = Healer(swarm, control, swarm.settings)
        with pytest.raises(SwarmError, match="no ENV_DONE"):
            healer.heal(SwarmError("no ENV_DONE within 1 s"), round_nr=1)
        assert healer.restarts == []


# --------------------------------------------------------------------------- whole runs
def component_pids(log_dir) -> dict[str, int]:
    """The running processes of the swarm whose logs go to `log_dir`, by their component name."""
    pids = {}
    for process in processes_with_log_dir(log_dir):
        try:
            name = process.environ().get("SWARM_COMPONENT_NAME")
        except psutil.NoSuchProcess:
            continue
        if name:
            pids[name] = process.pid
    return pids


def wait_for_pid(log_dir, name: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (pid := component_pids(log_dir).get(name)) is not None:
            return pid
        time.sleep(0.1)
    pytest.fail(f"no process {name} with logs in {log_dir}")


def assert_played_to_the_end(history: list[dict], rounds: int) -> None:
    """Every round in order, up to the last one, or to an earlier one that was confirmed solved."""
    assert [row["round"] for row in history] == list(range(1, len(history) + 1))
    assert len(history) == rounds or (len(history) < rounds and history[-1]["confirmed"]), history[-1]


def finished_run(process, output: Output, log_dir, timeout: float = 300.0) -> list[dict]:
    try:
        assert process.wait(timeout=timeout) == 0, output.text()
    finally:
        process.kill()
    output.thread.join(timeout=10)  # the last lines
    return json.loads((log_dir / "result.json").read_text())["history"]


@pytest.mark.parametrize("per_process", [1, 2])
def test_model_processes_killed_at_random_moments_are_restarted_and_the_run_finishes(swarm_env, per_process):
    """Three kills of model processes (one process per model, or two models per process)."""
    log_dir, rng = swarm_env.log_dir, random.Random(per_process)
    process = run_control({"SWARM_MODELS": "4", "SWARM_MODELS_PER_PROCESS": str(per_process), "SWARM_ROUNDS": "8",
                           "SWARM_EPISODES": "5"})
    victims = ["model0", "model2", "model0"] if per_process == 2 else ["model1", "model3", "model2"]
    output, gone = Output(process), []
    try:
        for victim in victims:
            output.wait_for("ROUND ")  # a round of its own for every kill: a second one in a round stops the run
            time.sleep(rng.uniform(0.0, 0.5))
            pid = wait_for_pid(log_dir, victim)
            os.kill(pid, signal.SIGKILL)
            gone.append(pid)
            output.wait_for(f"  restarted {victim} in")
        history = finished_run(process, output, log_dir)
    finally:
        process.kill()
    assert_played_to_the_end(history, 8)
    assert sorted(" ".join(row["restarted"] or "" for row in history).split()) == sorted(victims)
    assert all(row["steps"] > before["steps"] for before, row in itertools.pairwise(history))
    assert_all_gone(gone)


def healed_run(swarm_env, settings: dict[str, str], fault, healed: str, at: str = "ROUND 2"):
    """`06_control.py` with `settings` (8 rounds of 5 episodes, 3 models unless said); at the line
    `at`, `fault(log_dir)` (the pids it hit); then the run must say it restarted `healed` and
    finish. Its history, its output lines and the pids hit."""
    process = run_control({"SWARM_MODELS": "3", "SWARM_ROUNDS": "8", "SWARM_EPISODES": "5", **settings})
    output = Output(process)
    try:
        output.wait_for(at)
        hit = fault(swarm_env.log_dir)
        output.wait_for(f"  restarted {healed} in")
        history = finished_run(process, output, swarm_env.log_dir)
    finally:
        process.kill()
    assert [row["restarted"] for row in history].count(healed) == 1
    assert_played_to_the_end(history, int(settings.get("SWARM_ROUNDS", "8")))
    return history, output.lines, hit


def test_with_the_fork_launcher_a_killed_model_restarts_the_launcher_and_all_its_models(swarm_env):
    def kill_a_fork(log_dir):
        launcher = psutil.Process(wait_for_pid(log_dir, "models"))  # the launcher, or one of its forks
        if launcher.parent().environ().get("SWARM_COMPONENT_NAME") == "models":
            launcher = launcher.parent()
        forked = launcher.children()
        assert len(forked) == 3
        os.kill(forked[1].pid, signal.SIGKILL)
        return [launcher.pid, *(child.pid for child in forked)]

    _, _, hit = healed_run(swarm_env, {"SWARM_LAUNCHER": "fork", "SWARM_ROUNDS": "6"}, kill_a_fork, "models")
    assert_all_gone(hit)


def test_a_frozen_model_is_restarted_after_the_model_timeout_and_the_frozen_process_is_gone(swarm_env):
    def freeze_model1(log_dir):
        frozen = wait_for_pid(log_dir, "model1")
        os.kill(frozen, signal.SIGSTOP)
        return [frozen]

    _, lines, hit = healed_run(swarm_env, {"SWARM_MODEL_TIMEOUT": "2"}, freeze_model1, "model1")
    assert_all_gone(hit)  # stopped, woken and gone: not left frozen
    assert any("no LOGITS within 2 s" in line for line in lines)


@pytest.mark.parametrize("victim", ["aggregation", "environment", "evolution"])
def test_a_component_killed_mid_round_is_restarted(swarm_env, victim):
    def kill(log_dir):
        pid = wait_for_pid(log_dir, victim)
        os.kill(pid, signal.SIGKILL)
        return [pid]

    _, _, hit = healed_run(swarm_env, {}, kill, victim, at="ROUND 3")
    assert_all_gone(hit)


@pytest.mark.parametrize(("victim", "restarts", "said"), [
    ("model2", "0", "the run stopped: component(s) stopped unexpectedly: model2 (exit code -9"),
    ("server", "5", "the run stopped: the server stopped"),
])
def test_a_fault_that_is_not_healed_stops_the_run_with_a_message_and_the_command_to_go_on(swarm_env, victim, restarts,
                                                                                          said):
    log_dir = swarm_env.log_dir
    process = run_control({"SWARM_MODELS": "3", "SWARM_ROUNDS": "50", "SWARM_EPISODES": "5", "SWARM_RESTARTS": restarts})
    output = Output(process)
    try:
        output.wait_for("ROUND 3")
        pids = component_pids(log_dir)
        os.kill(pids[victim], signal.SIGKILL)
        assert process.wait(timeout=60) == 1
    finally:
        process.kill()
    output.thread.join(timeout=10)
    text = output.text()
    assert "Traceback" not in text and "restarted" not in text and said in text
    command = next(line.strip() for line in output.lines if line.strip().endswith("python 06_control.py"))
    assert f"SWARM_LOG_DIR={log_dir} " in command  # where it ran: the run's own settings come from the checkpoint
    assert command.endswith(f"SWARM_RESUME={log_dir / 'swarm.pt'} python 06_control.py")
    assert_all_gone(pids.values(), within=10)


def test_the_stop_message_says_when_there_is_no_checkpoint_to_go_on_from(tmp_path):
    settings = SwarmSettings(log_dir=tmp_path)
    text = stopped_run(SwarmError("model1 died"), settings, tmp_path / "swarm.pt")
    assert text.splitlines() == ["the run stopped: model1 died", f"logs: {tmp_path}",
                                 "no round was finished: there is no checkpoint to go on from"]


def test_the_resume_command_names_only_where_the_run_runs(tmp_path):
    plain = SwarmSettings.from_env({})
    assert resume_command(plain, tmp_path / "swarm.pt") == f"SWARM_RESUME={tmp_path / 'swarm.pt'} python 06_control.py"
    moved = SwarmSettings.from_env({"SWARM_PRESET": "tutorial", "SWARM_MODELS": "5", "SWERGIO_PORT": "9000",
                                    "SWARM_TOKEN": "a-shared-secret"})
    assert resume_command(moved, tmp_path / "swarm.pt").split() == [
        "SWERGIO_PORT=9000", f"SWARM_RESUME={tmp_path / 'swarm.pt'}", "python", "06_control.py"]


def test_a_model_started_by_hand_is_named_with_its_command_and_waited_for(swarm_env):
    """SWARM_LAUNCH=0: the control cannot restart a model it did not start; it prints the command,
    and the run goes on once the model is back."""
    log_dir = swarm_env.log_dir
    hosts = ManagedSwarm(ROOT / "swarm.yaml", swarm_env.replace(models=2))
    hosts.start()  # the server and the components, as another host would run them
    env = {**os.environ, "SWARM_MODELS": "2"}
    by_hand = [subprocess.Popen([sys.executable, str(ROOT / "02_model.py")], env={**env, "SWARM_COMPONENT_NAME": name},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name in ("model0", "model1")]
    process = run_control({"SWARM_LAUNCH": "0", "SWARM_MODELS": "2", "SWARM_ROUNDS": "8", "SWARM_EPISODES": "5",
                           "SWARM_MODEL_TIMEOUT": "2"})
    output = Output(process)
    try:
        output.wait_for("ROUND 3")
        by_hand[1].kill()
        by_hand[1].wait(10)
        assert "start it again on its host" in output.wait_for("  model1 stopped answering")
        command = shlex.split(output.wait_for("    SWARM_COMPONENT_NAME=model1 ", timeout=5))
        assert command[0] == "SWARM_COMPONENT_NAME=model1" and command[-2:] == ["python", "02_model.py"]
        variables = dict(word.split("=", 1) for word in command[:-2])
        by_hand.append(subprocess.Popen([sys.executable, str(ROOT / "02_model.py")], env={**env, **variables},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        history = finished_run(process, output, log_dir)
    finally:
        process.kill()
        for model in by_hand:
            model.kill()
            model.wait(10)
        hosts.stop()
    assert [row["restarted"] for row in history].count("model1") == 1
    assert_played_to_the_end(history, 8)

"""The swarm as real processes on a free loopback port, launched the tutorial's way by Swarm."""
import dataclasses
import json
import os
import signal
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest

from swarm_rl.client import SwarmClient
from swarm_rl.control import ControlClient
from swarm_rl.launcher import ManagedSwarm, SwarmError
from swarm_rl.protocol import (AVG_SCORE, CMD, COMPONENT_ID, CONTRIBUTION, DETERMINISTIC, ENV_DONE, ENV_PROGRESS, EPISODE,
                               EVO_DONE, EVOLUTION, NR_OF_EPISODE, ROOM_CONTROL, ROOM_EVOLUTION, ROOT_ID, SCORES, SET,
                               STATUS, STEPS, WEIGHTS, custom_message)
from tests.helpers import (COMPONENTS, ROOT, assert_all_gone, drain, get_weights, ready_swarm, run_control, set_weights,
                           start_swarm, wait_for_line)


def test_episodes_evolution_and_evaluation_end_to_end(swarm_env):
    models = 3
    swarm = start_swarm(swarm_env, models)
    pids = list(swarm.pids().values())
    try:
        control = ControlClient(swarm)
        probe = SwarmClient("probe", swarm_env)  # watches the evolution room like a plain client
        probe.join_room(ROOM_EVOLUTION)
        swarm.wait_ready(control, COMPONENTS, models)

        initial = get_weights(probe, models)
        set_weights(probe, initial)  # resume training, weights unchanged

        reply = control.request({NR_OF_EPISODE: 3, DETERMINISTIC: False}, until=ENV_DONE)
        # CartPole pays 1 per step: the run's steps are its scores' sum
        assert len(reply[SCORES]) == 3 and reply[STEPS] == sum(reply[SCORES])
        assert reply[AVG_SCORE] == pytest.approx(np.mean(reply[SCORES]))
        drain(probe, 0.5)

        control.request({EVOLUTION: True}, until=EVO_DONE)
        late_replies = drain(control, 1.5, ROOM_CONTROL)
        assert not [m for m in late_replies if m.get(STATUS) == EVO_DONE], "more than one EVO_DONE"
        seen = drain(probe, 1.0, ROOM_EVOLUTION)
        answers = {m[COMPONENT_ID]: np.array(m[WEIGHTS]) for m in seen if WEIGHTS in m and CMD not in m}
        sets = [m for m in seen if m.get(CMD) == SET]
        assert set(answers) == set(initial), "every model answered the evolution's GET"
        assert any(not np.allclose(answers[k], initial[k]) for k in initial), "training changed no weights"
        assert len(sets) == 1, f"{len(sets)} SET messages for one EVOLUTION"
        new_weights = {k: np.array(v) for k, v in sets[0][WEIGHTS].items()}
        assert set(new_weights) == set(initial) and all(len(v) == 755 for v in new_weights.values())
        assert [m for m in seen if CONTRIBUTION in m], "the aggregation sent no contribution"

        loaded = get_weights(probe, models)  # the models now hold exactly what the SET carried
        for model_id, vector in new_weights.items():
            assert np.allclose(loaded[model_id], vector.astype(np.float32), rtol=0, atol=1e-6)
        set_weights(probe, loaded)

        reply = control.request({NR_OF_EPISODE: 1, DETERMINISTIC: True}, until=ENV_DONE)
        assert reply[SCORES] == [reply[STEPS]] == [reply[AVG_SCORE]]
    finally:
        swarm.stop()
    assert_all_gone(pids)


def test_a_new_request_abandons_the_run_in_progress(swarm_env):
    swarm = start_swarm(swarm_env, 2)
    pids = list(swarm.pids().values())
    try:
        control = ControlClient(swarm)
        swarm.wait_ready(control, COMPONENTS, 2)
        # A control asks for a very long run, sees it going, gives up on it, and asks again.
        control.send(custom_message(ROOM_CONTROL, {NR_OF_EPISODE: 10_000, DETERMINISTIC: False},
                                       root_id="abandoned"))
        progress = [m for m in drain(control, 2.0, ROOM_CONTROL) if m.get(ROOT_ID) == "abandoned"]
        assert progress and progress[-1][STATUS] == ENV_PROGRESS, "the long run never got going"
        reply = control.request({NR_OF_EPISODE: 2, DETERMINISTIC: True}, until=ENV_DONE, timeout=60)
        assert reply[EPISODE] == 2 and 16 <= reply[STEPS] <= 1000
        late = [m for m in drain(control, 1.0, ROOM_CONTROL) if m.get(ROOT_ID) == "abandoned"]
        assert not late, "the abandoned run is still going"
    finally:
        swarm.stop()
    assert_all_gone(pids)


def test_waiting_for_readiness_names_what_is_missing(swarm_env):
    swarm = ManagedSwarm(ROOT / "swarm.yaml", swarm_env)
    swarm.start("server")
    pids = list(swarm.pids().values())
    control = ControlClient(swarm)
    began = time.monotonic()
    with pytest.raises(SwarmError, match=r"no answer from: aggregation, models \(0 of 2 answered\)"):
        swarm.wait_ready(control, ["aggregation"], models=2, timeout=3)
    assert time.monotonic() - began < 10
    assert_all_gone(pids)  # a failed start stops the swarm


def component_swarm(tmp_path, config, source):
    (tmp_path / "component.py").write_text(textwrap.dedent(source))
    (tmp_path / "swarm.yaml").write_text("settings: {}\ncomponents:\n  component:\n    filepath: component.py\n")
    swarm = ManagedSwarm(tmp_path / "swarm.yaml", config)
    swarm.start()
    return swarm


def test_a_crashed_component_exits_and_is_reported(swarm_env, tmp_path):
    # swergio-toolbox would run `python -i component.py`: a crash leaves an interactive prompt.
    swarm = component_swarm(tmp_path, swarm_env, "raise SystemExit(3)\n")
    swarm.components["component"].process.wait(timeout=10)
    with pytest.raises(SwarmError, match=r"component \(exit code 3, log .*component.log\)"):
        swarm.raise_if_dead()


def test_stop_kills_a_component_that_ignores_sigterm(swarm_env, tmp_path):
    swarm = component_swarm(tmp_path, swarm_env, """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(120)
    """)
    log = swarm_env.log_dir / "component.log"
    deadline = time.monotonic() + 10
    while "ready" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = swarm.pids()["component"]
    began = time.monotonic()
    swarm.stop()
    assert time.monotonic() - began < 10
    assert_all_gone([pid])


def test_the_control_script_runs_the_tutorial_loop(swarm_env):
    process = run_control({})
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "ROUND 1/2" in output and "ROUND 2/2" in output and "swarm stopped" in output
    assert output.count("evolved (fitness spread") == 1, "evolution between the rounds, not after the last"
    assert "NOT solved after 2 rounds" in output and "training steps/s" in output
    assert (swarm_env.log_dir / "scores.png").stat().st_size > 1000
    result = json.loads((swarm_env.log_dir / "result.json").read_text())
    assert result["solved"] is False and [row["round"] for row in result["history"]] == [1, 2]
    first, second = result["history"]
    # One CartPole pays 1 per step: a round's training steps are its episodes' scores (2 per round).
    assert first["steps"] == 2 * first["train_mean"] and second["steps"] - first["steps"] == 2 * second["train_mean"]
    assert result["steps"] == second["steps"]
    assert all(row["eval_mean"] >= 8 and row["eval_std"] >= 0 for row in result["history"])
    assert "[BROADCAST]" not in output, "server chatter reached the console"
    # and the notebook's last cell: the checkpoint, watched
    assert "the trained swarm:" in output and "over 10 deterministic episodes" in output
    assert (swarm_env.log_dir / "swarm.pt").is_file() and (swarm_env.log_dir / "swarm.gif").stat().st_size > 1000


def test_lunar_lander_installs_and_plays_a_round_over_sockets(swarm_env):
    """LunarLander-v3 (gymnasium's box2d extra): eight observations, four actions, a threshold of
    200 and its own budget; the defaults' training actions, corrected by V-trace."""
    process = run_control({"SWARM_PRESET": "swarm", "SWARM_ENV_ID": "LunarLander-v3", "SWARM_ENVS": "2",
                           "SWARM_ROUNDS": "1", "SWARM_EVAL_EPISODES": "2", "SWARM_CORRECTION": "vtrace"})
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert "ROUND 1/1" in output and "NOT solved after 1 rounds" in output and "swarm stopped" in output
    result = json.loads((swarm_env.log_dir / "result.json").read_text())
    assert result["history"][0]["steps"] > 0 and (swarm_env.log_dir / "swarm.gif").stat().st_size > 1000


def test_a_stopped_swarm_says_so_and_can_start_again(swarm_env, tmp_path):
    swarm = component_swarm(tmp_path, swarm_env, "import time\ntime.sleep(120)\n")
    first = swarm.pids()["component"]
    swarm.stop()
    with pytest.raises(SwarmError, match="has been stopped"):
        swarm.raise_if_dead()
    swarm.start()
    assert swarm.running() == ["component"] and swarm.pids()["component"] != first
    swarm.stop()
    assert_all_gone([first, swarm.pids()["component"]])


def test_components_exit_when_the_control_is_killed(swarm_env):
    process = run_control({"SWARM_EPISODES": "1000"})
    wait_for_line(process, "ROUND 1")
    launched = [p.pid for p in psutil.Process(process.pid).children()]
    process.kill()  # no atexit, no signal handler: only the components' own watch can help
    process.communicate(timeout=30)
    assert_all_gone(launched, within=10)


def test_a_swarm_with_several_environment_copies(swarm_env):
    config = dataclasses.replace(swarm_env, envs=4)
    swarm = start_swarm(config, 2)
    pids = list(swarm.pids().values())
    try:
        control = ControlClient(swarm)
        swarm.wait_ready(control, COMPONENTS, 2)
        reply = control.request({NR_OF_EPISODE: 6, DETERMINISTIC: False}, until=ENV_DONE)
        assert reply[EPISODE] >= 6 and len(reply[SCORES]) == reply[EPISODE]
        assert reply[STEPS] % 4 == 0 and reply[STEPS] >= 6 * 8
        control.request({EVOLUTION: True}, until=EVO_DONE)
        reply = control.request({NR_OF_EPISODE: 4, DETERMINISTIC: True}, until=ENV_DONE)
        assert len(reply[SCORES]) == 4 and sum(reply[SCORES]) <= reply[STEPS]  # each copy played one counted episode
    finally:
        swarm.stop()
    assert_all_gone(pids)


def test_a_model_that_stops_answering_is_named_within_the_model_timeout(swarm_env):
    with ready_swarm(dataclasses.replace(swarm_env, model_timeout=2.0), 2) as (swarm, control, pids):
        frozen = {}

        def freeze_model1():
            time.sleep(1.0)
            frozen["at"] = time.monotonic()
            os.kill(pids["model1"], signal.SIGSTOP)  # alive, but silent: only a timeout can tell

        threading.Thread(target=freeze_model1, daemon=True).start()
        with pytest.raises(SwarmError, match=r"aggregation: no LOGITS within 2 s from 1 model\(s\): model1-"):
            control.request({NR_OF_EPISODE: 100_000, DETERMINISTIC: False}, until=ENV_DONE)
        assert time.monotonic() - frozen["at"] < 2.0 + 3.0
        assert swarm.running() == []  # the control stopped the swarm, the frozen model too


def test_an_evolution_missing_a_model_is_given_up_naming_it(swarm_env):
    with ready_swarm(dataclasses.replace(swarm_env, model_timeout=2.0), 2) as (_swarm, control, pids):
        os.kill(pids["model0"], signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(SwarmError, match=r"evolution: no answer to GET within 2 s from: model0-"):
            control.request({EVOLUTION: True}, until=EVO_DONE)
        assert time.monotonic() - began < 2.0 + 3.0

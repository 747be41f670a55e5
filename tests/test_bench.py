"""bench/throughput.py runs end to end and reports every figure (the figures themselves are
checked by running the benchmark, not by tests), and its forked-models launcher option (swarm_rl.fork) works."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import psutil
import pytest

from swarm_rl.client import SwarmClient
from swarm_rl.control import ControlClient
from swarm_rl.launcher import SwarmError
from swarm_rl.protocol import (CMD, DETERMINISTIC, ENV_DONE, EPISODE, NR_OF_EPISODE, ROOM_EVOLUTION, SET, WEIGHTS,
                               custom_message)
from tests.helpers import COMPONENTS, ROOT, assert_all_gone, get_weights, processes_with_log_dir, start_swarm


@pytest.mark.parametrize("per_process", [1, 2])
def test_the_quick_benchmark_reports_every_figure(swarm_env, per_process):
    result = subprocess.run(
        [sys.executable, "bench/throughput.py", "--quick", "--models", "2", "--envs", "2", "--steps", "60",
         "--warmup", "20", "--per-process", str(per_process), "--log-dir", str(swarm_env.log_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["models"] == 2 and figures["envs"] == 2 and figures["steps"] >= 60
    assert figures["per_process"] == per_process
    for name in ("compute_only_sps", "swarm_sps", "ready_s", "evolution_s", "pss_mb"):
        assert figures[name] > 0, name
    assert figures["ratio"] == pytest.approx(figures["swarm_sps"] / figures["compute_only_sps"], rel=0.01)
    assert "compute_only_sps" in result.stdout and "pss_mb" in result.stdout  # the table
    assert not processes_with_log_dir(swarm_env.log_dir), "the benchmark left its swarm running"


def test_forked_models_are_separate_models_and_stop_with_the_swarm(swarm_env):
    """SWARM_LAUNCHER=fork (swarm_rl/fork.py): every fork has its own id and weights."""
    swarm = start_swarm(swarm_env.replace(launcher="fork"), 3)
    launched = list(swarm.pids().values())
    try:
        control = ControlClient(swarm)
        probe = SwarmClient("probe", swarm_env)
        probe.join_room(ROOM_EVOLUTION)
        swarm.wait_ready(control, COMPONENTS, 3)
        forks = [p.pid for p in psutil.Process(swarm.pids()["models"]).children()]
        assert len(forks) == 3
        weights = get_weights(probe, 3)
        assert sorted(k.split("-")[0] for k in weights) == ["model0", "model1", "model2"]
        vectors = list(weights.values())
        assert not np.allclose(vectors[0], vectors[1]), "forks share their initial weights"
        probe.send(custom_message(ROOM_EVOLUTION, {CMD: SET, WEIGHTS: {k: v.tolist() for k, v in weights.items()}}))
        reply = control.request({NR_OF_EPISODE: 2, DETERMINISTIC: False}, until=ENV_DONE)
        assert reply[EPISODE] == 2
        os.kill(forks[1], signal.SIGKILL)  # one model dies: the launcher reports it by exiting
        with pytest.raises(SwarmError, match=r"models \(exit code 1"):
            control.request({NR_OF_EPISODE: 1000, DETERMINISTIC: False}, until=ENV_DONE)
    finally:
        swarm.stop()
    assert_all_gone(launched + forks)


def test_the_scale_benchmark_writes_its_table_and_plot(swarm_env, tmp_path):
    out = tmp_path / "scale"
    result = subprocess.run([sys.executable, "bench/scale.py", "--models", "3", "--envs", "1", "--out", str(out),
                             "--log-dir", str(swarm_env.log_dir)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads((out / "scale.json").read_text())
    assert (row["models"], row["per_process"], row["envs"]) == (3, 2, 1)
    for name in ("ready_s", "swarm_sps", "evolution_s", "pss_mb"):
        assert row[name] > 0, name
    assert "| 3 | 2 | 1 |" in (out / "scale.md").read_text() and (out / "scale.png").stat().st_size > 0


def test_the_members_bench_ranks_the_fitness_against_each_members_own_return(tmp_path):
    """bench/members.py on a small greedy-led swarm: a correlation for the ranked rounds, and the
    rounds as the swarm played them."""
    settings = ["SWARM_MODELS=4", "SWARM_ENVS=4", "SWARM_EPISODES=8", "SWARM_ROUNDS=3", "SWARM_EVAL_EPISODES=4",
                "SWARM_TRAINING_ACTIONS=greedy-leader", "SWARM_CORRECTION=vtrace"]
    result = subprocess.run([sys.executable, "bench/members.py", "--seed", "0", "--episodes", "2", "--rule-episodes", "2",
                             "--out", str(tmp_path), *[f"--set={s}" for s in settings]],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["seed"] == 0 and summary["solved"] is False and summary["ranked_rounds"] >= 1
    assert -1 <= summary["median_rho"] <= 1
    rows = json.loads((tmp_path / "members.json").read_text())["rows"]
    assert [row["round"] for row in rows] == [1, 2, 3] and all(len(row["own"]) == 4 for row in rows)


def test_the_members_bench_plots_the_correlation_of_runs_given_as_files_or_folders(tmp_path):
    rows = [dict(steps=steps, rho=rho) for steps, rho in ((100, 0.1), (200, None), (300, 0.5))]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "members.json").write_text(json.dumps(dict(settings=[], rows=rows)))
    (tmp_path / "other.json").write_text(json.dumps(dict(settings=["SWARM_FITNESS=advantage"], rows=rows)))
    result = subprocess.run([sys.executable, "bench/members.py", "--plot-rho", str(tmp_path / "run"),
                             str(tmp_path / "other.json"), "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "rho.png").read_bytes().startswith(b"\x89PNG")

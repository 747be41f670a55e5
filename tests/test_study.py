"""bench/study.py: its arms run end to end and it reports them (the figures themselves come from
running the study: they take an hour and vary with the machine)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import ROOT, Output, assert_all_gone, ip, kill_all, load_script, why_no_namespaces

study = load_script("bench/study.py")


def run_study(*options, timeout=600):
    result = subprocess.run([sys.executable, "bench/study.py", "--quick", *options], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


def test_the_quick_study_runs_every_default_arm_and_writes_table_numbers_and_plot(tmp_path):
    output, last = run_study("--out", str(tmp_path), "--jobs", "2")
    assert list(last["arms"]) == ["swarm", "swarm-no-evolution", "sb3-a2c"]
    for arm, figures in last["arms"].items():
        assert figures["runs"] == 2 and figures["solved"] == 0, arm  # 400 steps: far too few to solve
        assert figures["median_steps"] == 400, arm  # unsolved: the budget
    assert last["arms"]["swarm"]["median_spread"] > 0 and last["arms"]["swarm-no-evolution"]["median_spread"] is None
    assert 0 < last["p_value"] <= 1
    written = json.loads((tmp_path / "study.json").read_text())
    assert sorted((r["arm"], r["seed"]) for r in written["runs"]) == sorted(
        (arm, seed) for arm in last["arms"] for seed in (0, 1))
    assert all(r["curve"] for r in written["runs"])
    assert "| swarm | 2 | 0 |" in (tmp_path / "study.md").read_text() and "| swarm | 2 | 0 |" in output
    assert (tmp_path / "study.png").stat().st_size > 5000


def test_the_study_runs_the_real_swarm_over_sockets(tmp_path):
    _, last = run_study("--sockets", "--seeds", "0", "--arms", "swarm", "--out", str(tmp_path), "--jobs", "1")
    run = json.loads((tmp_path / "study.json").read_text())["runs"][0]
    assert last["arms"]["swarm"]["runs"] == 1 and run["steps"] >= 400 and run["spread"] is not None


def test_a_study_started_again_plays_only_the_runs_it_has_not_finished(tmp_path):
    run_study("--seeds", "0", "--arms", "swarm", "--out", str(tmp_path), "--jobs", "1")
    first = json.loads((tmp_path / "study.json").read_text())["runs"]
    _, summary = run_study("--seeds", "0-3", "--arms", "swarm", "sb3-a2c", "--out", str(tmp_path), "--no-play")
    assert list(summary["arms"]) == ["swarm"] and summary["arms"]["swarm"]["runs"] == 1, "the finished run, no other"
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 1
    output, last = run_study("--seeds", "0-1", "--arms", "swarm", "--out", str(tmp_path), "--jobs", "1")
    assert "1 runs already in" in output and "1 to play" in output and last["arms"]["swarm"]["runs"] == 2
    runs = json.loads((tmp_path / "study.json").read_text())["runs"]
    assert sorted(r["seed"] for r in runs) == [0, 1] and runs[0] == first[0]
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 2
    output, _ = run_study("--seeds", "0-1", "--arms", "swarm", "--out", str(tmp_path), "--jobs", "1",
                          "--set", "SWARM_ENVS=2")
    assert "already in" not in output, "a run with other settings is another run"
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 4


def test_unsolved_runs_count_as_the_budget_and_the_rank_test_tells_arms_apart():
    runs = [dict(arm="swarm", seed=s, solved=True, steps=1000 + s, seconds=1.0, spread=0.1) for s in range(8)]
    runs += [dict(arm="swarm-no-evolution", seed=s, solved=s < 4, steps=5000 + s, seconds=2.0, spread=None)
             for s in range(8)]
    summary = study.arm_summary([r for r in runs if r["arm"] == "swarm-no-evolution"], budget=100_000)
    assert summary["solved"] == 4 and summary["median_steps"] == pytest.approx((5003 + 100_000) / 2)
    assert study.p_value(runs, budget=100_000) < 0.001
    assert study.p_value(runs[:1] + runs[8:], budget=100_000) is None, "one run is no sample"
    ratio = study.median_ratio(runs, budget=100_000)
    assert ratio["ratio"] == pytest.approx(1003.5 / 52_501.5)
    assert ratio["ci95"][0] <= ratio["ratio"] <= ratio["ci95"][1] < 1, "evolution needs fewer steps here, surely"


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "LunarLander-v3"])
def test_the_quick_study_runs_every_arm_on_each_environment(tmp_path, env_id):
    arms = ["swarm", "sb3-a2c-zoo", "sb3-ppo-zoo"] + (["tutorial", "sb3-a2c"] if env_id == "CartPole-v1" else [])
    _, last = run_study("--env", env_id, "--seeds", "0", "--arms", *arms, "--out", str(tmp_path), "--jobs", "2")
    assert list(last["arms"]) == arms
    assert all(figures["runs"] == 1 and figures["median_steps"] == 400 for figures in last["arms"].values())
    assert json.loads((tmp_path / "study.json").read_text())["env_id"] == env_id
    assert "RL Zoo" in last["arms"]["sb3-ppo-zoo"]["setup"]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_study_leaves_no_worker_behind(tmp_path, how):
    """Its runs go in worker processes: stopping the study, politely or not, ends them too."""
    process = subprocess.Popen([sys.executable, "bench/study.py", "--seeds", "0-1", "--arms", "swarm", "--jobs", "2",
                                "--set", "SWARM_MODELS=2", "--out", str(tmp_path)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study_process = psutil.Process(process.pid)
    deadline = time.monotonic() + 60
    while len(workers := [p for p in study_process.children() if "spawn_main" in " ".join(p.cmdline())]) < 2:
        assert time.monotonic() < deadline and process.poll() is None, "the study started no workers"
        time.sleep(0.2)
    try:
        process.send_signal(getattr(signal, how))
        process.wait(timeout=30)
        assert_all_gone([p.pid for p in workers], within=15)
    finally:
        kill_all([study_process, *workers])


def test_the_members_diagnostic_measures_every_member_and_vote_and_changes_nothing(tmp_path):
    from swarm_rl.local import LocalSwarm
    from swarm_rl.settings import SwarmSettings

    tiny = {"SWARM_MODELS": "3", "SWARM_ROUNDS": "3", "SWARM_ENVS": "2", "SWARM_EPISODES": "2"}
    result = subprocess.run([sys.executable, "bench/members.py", "--seed", "4", "--episodes", "1", "--rule-episodes", "2",
                             *[f"--set={name}={value}" for name, value in tiny.items()], "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((tmp_path / "members.json").read_text())["rows"]
    assert [row["round"] for row in rows] == [1, 2, 3] and (tmp_path / "members.png").stat().st_size > 0
    for row in rows:
        assert len(row["own"]) == 3 and all(1 <= value <= 500 for value in row["own"].values())
        assert set(row["rules"]) == {"probabilities", "majority", "log-probabilities"}
    # The same seed without the measurement plays the same rounds.
    settings = SwarmSettings.from_env({**tiny, "SWARM_SEED": "4", "SWARM_LOG_DIR": str(tmp_path / "plain")})
    plain = LocalSwarm(settings).train_until_solved(report=lambda line: None)["history"]
    assert [(row["steps"], row["eval_mean"]) for row in plain] == [(row["steps"], row["swarm"]) for row in rows]


@pytest.mark.slow
def test_the_quick_study_runs_its_runs_as_tasks_of_a_ray_cluster(tmp_path):
    """`--ray ADDRESS`: a Ray head started for the test runs the quick study's runs. Ray listens on
    the machine's address unless it has no other than loopback, so the head and the study run in
    a network namespace of their own with only `lo`."""
    if reason := why_no_namespaces():
        pytest.skip(reason)
    namespace, port = f"swarm-rl-ray-{os.getpid()}", 6379  # the namespace's ports are all free
    ray_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ip("netns", "add", namespace)
    head = None
    try:
        ip("-n", namespace, "link", "set", "lo", "up")
        head = subprocess.Popen(["ip", "netns", "exec", namespace, str(Path(sys.executable).parent / "ray"), "start",
                                 "--head", f"--port={port}", "--num-cpus=2", "--object-store-memory=100000000",
                                 "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_dir}", "--block"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        Output(head).wait_for("Ray runtime started", timeout=120, anywhere=True)  # Ray's lines begin with a time
        result = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "bench/study.py", "--quick",
                                 "--ray", f"127.0.0.1:{port}", "--arms", "swarm", "sb3-a2c", "--out", str(tmp_path)],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"on the Ray cluster at 127.0.0.1:{port}" in result.stdout.splitlines()[0]
        last = json.loads(result.stdout.strip().splitlines()[-1])
        assert {arm: figures["runs"] for arm, figures in last["arms"].items()} == {"swarm": 2, "sb3-a2c": 2}
        # Each task a Ray worker ran is named in that worker's log: the four runs were Ray's.
        logs = (ray_dir / "session_latest" / "logs").glob("worker-*.out")
        assert sum(log.read_text().count(":task_name:run_shipped") for log in logs) == 4
    finally:
        if head is not None:
            head.terminate()  # `ray start --block` stops what it started
            try:
                head.wait(60)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait()
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10).stdout
        left = [psutil.Process(int(pid)) for pid in pids.split() if psutil.pid_exists(int(pid))]
        kill_all(left)
        ip("netns", "del", namespace)
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert not left, f"Ray processes left behind: {[p.pid for p in left]}"


def test_a_ray_address_where_no_cluster_answers_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "bench/study.py", "--quick", "--arms", "sb3-a2c", "--seeds", "0",
                             "--ray", "127.0.0.1:1", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert "--ray 127.0.0.1:1: no Ray cluster answered" in result.stderr


def test_evaluations_along_the_way_are_each_runs_mean_per_part_of_the_budget_then_the_median():
    runs = [dict(arm="a", curve=[[100, 10.0], [200, 20.0], [300, 30.0], [900, 90.0]]),
            dict(arm="a", curve=[[100, 0.0], [250, 40.0]]),  # solved at 250: nothing later
            dict(arm="b", curve=[])]
    medians = study.evaluations_along_the_way(runs, budget=1000, windows=2)
    # first half: run one's mean (10+20+30)/3 = 20, run two's 20, median 20; second half: 90 alone.
    assert medians == {"a": [20.0, 90.0], "b": [None, None]}
    lines = study.along_the_way_table(runs, 1000)
    assert "| a | 7.5 | 35.0 | - | - | 90.0 |" in lines and "| b | - | - | - | - | - |" in lines

"""A folder per run: two runs keep two checkpoints, `runs/latest` is the newest, and the watch
finds it without being told."""
import csv
import datetime
import itertools
import json
import subprocess
import sys

import pytest

from swarm_rl import checkpoint
from swarm_rl.protocol import COMPONENT_ID, COPIED, FITNESS, HYPERPARAMETERS, LEARNING_RATE
from swarm_rl.records import RunRecords
from swarm_rl.runs import LATEST, new_run_folder
from swarm_rl.settings import SwarmSettings
from tests.helpers import ROOT, run_control


def test_run_folders_are_named_by_game_time_and_seed_and_never_shared(tmp_path):
    now = datetime.datetime(2026, 12, 7, 9, 30, 5)
    first = new_run_folder(SwarmSettings(seed=3), tmp_path, now)
    second = new_run_folder(SwarmSettings(seed=3), tmp_path, now)  # the same second
    assert (first.name, second.name) == ("CartPole-v1-20261207-093005-seed3", "CartPole-v1-20261207-093005-seed3-2")
    assert (tmp_path / LATEST).resolve() == second.resolve()
    assert new_run_folder(SwarmSettings(env_id="Acrobot-v1"), tmp_path, now).name == "Acrobot-v1-20261207-093005"


def test_two_runs_leave_two_folders_and_two_checkpoints_and_the_watch_plays_the_newest(swarm_env, tmp_path):
    folders = []
    for _ in range(2):
        process = run_control({"SWARM_LOG_DIR": "", "SWARM_ROUNDS": "1"}, cwd=tmp_path)
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
        folders.append(tmp_path / output.split("this run's folder: ")[1].split("\n")[0])
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == sorted([folders[0].name, folders[1].name, LATEST]) and folders[0] != folders[1]
    for folder in folders:
        assert {"swarm.pt", "result.json", "rounds.csv", "scores.png", "swarm.gif", "model0.log"} <= {
            p.name for p in folder.iterdir()}
        assert len(json.loads((folder / "result.json").read_text())["history"]) == 1
    assert (tmp_path / "runs" / LATEST).resolve() == folders[1].resolve()
    assert not (tmp_path / "logs").exists(), "nothing written beside the run folders"
    watched = subprocess.run([sys.executable, str(ROOT / "07_watch.py"), "--episodes", "1"], capture_output=True,
                             text=True, timeout=300, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.startswith("CartPole-v1, 2 models (after 1 rounds")


def test_a_run_records_tensorboard_events_a_monitor_row_per_episode_and_its_lineage(swarm_env):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    process = run_control({"SWARM_PRESET": "swarm", "SWARM_MODELS": "4", "SWARM_ROUNDS": "2", "SWARM_EPISODES": "3"})
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    folder = swarm_env.log_dir
    history = json.loads((folder / "result.json").read_text())["history"]
    members = sorted(m["model_id"] for m in checkpoint.load(folder / "swarm.pt")["members"])

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for name in ("train_mean", "eval_mean", "eval_std", "steps_per_second", "fitness_spread", "after_mean"):
        assert f"round/{name}" in tags, name
    for member in members:
        assert {f"member/{member}/{name}" for name in ("learning_rate", "ent_coef", "gamma")} <= tags
    train = events.Scalars("round/train_mean")
    assert [(e.step, round(e.value, 4)) for e in train] == [(row["steps"], round(row["train_mean"], 4)) for row in history]

    with open(folder / "monitor.csv") as monitor:
        assert json.loads(monitor.readline()[1:])["env_id"] == "CartPole-v1"
        rows = list(csv.DictReader(monitor))
    assert len(rows) == 2 * 3, "a row per training episode (3 a round)"
    assert [float(r["r"]) for r in rows[:3]] == [float(r["l"]) for r in rows[:3]], "CartPole: a point a step"
    assert sum(float(r["r"]) for r in rows[:3]) / 3 == pytest.approx(history[0]["train_mean"])
    assert all(float(a["t"]) <= float(b["t"]) for a, b in itertools.pairwise(rows))

    with open(folder / "lineage.csv") as lineage:
        rows = list(csv.DictReader(lineage))
    assert [(r["round"], r["member"]) for r in rows] == [(str(n), m) for n in (1, 2) for m in members]
    copies = [r for r in rows if r["copied_from"]]
    assert len(copies) == 1 and copies[0]["round"] == "1" and copies[0]["copied_from"] in members, \
        "population-based training: the worst quarter (1 of 4) copies; the last round has no evolution"
    ranked = {r["member"] for r in rows if r["round"] == "1" and r["fitness"]}  # members that led an episode
    assert len(ranked) >= 2 and not any(r["fitness"] for r in rows if r["round"] == "2")
    assert {t for t in tags if t.endswith("/fitness")} == {f"member/{m}/fitness" for m in ranked}


def test_the_records_hold_the_fitness_rank_correlation_of_consecutive_evolutions(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = RunRecords(tmp_path, "CartPole-v1")
    states = [{COMPONENT_ID: m, HYPERPARAMETERS: {LEARNING_RATE: 7e-4}} for m in "abcde"]
    evolutions = [{FITNESS: {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0}, COPIED: {"a": "e"}},
                  {FITNESS: {"a": 9.0, "b": 3.0, "c": 2.0, "d": 4.0, "e": 5.0}, COPIED: {"b": "e"}},
                  None,  # a round without an evolution
                  {FITNESS: {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0}, COPIED: {}}]
    for number, evolution in enumerate(evolutions, 1):
        records.round({"round": number, "steps": 100 * number}, states, evolution, 1000.0)
    records.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    # round 2 against round 1 without a (copied): b, c, d, e ranked 1, 2, 3, 4 then 2, 1, 3, 4;
    # round 4 against round 2 without b: a, c, d, e ranked 4, 1, 2, 3 then 1, 2, 3, 4.
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("round/fitness_rank_correlation")] == \
        [(200, 0.8), (400, -0.2)]

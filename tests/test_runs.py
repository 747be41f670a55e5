"""A folder per run: two runs keep two checkpoints, `runs/latest` is the newest, and the watch
finds it without being told."""
import datetime
import json
import subprocess
import sys

from swarm.runs import LATEST, new_run_folder
from swarm.settings import SwarmSettings
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

"""Checkpoints: a swarm saved after a round, loaded into another swarm, plays and learns as the original."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from swarm_rl import checkpoint
from swarm_rl.local import LocalSwarm
from swarm_rl.scripts import load_script
from swarm_rl.settings import SettingsError, SwarmSettings
from tests.helpers import ROOT, run_control, wait_for_line

model = load_script("02_model.py")
SETTINGS = SwarmSettings(models=3, envs=2, episodes=4, seed=5, learning_rate=0.01, rounds=2)


def weights_and_actions(runner, observations):
    members = runner.members()
    weights = [np.array(state.vector(j), dtype=np.float32) for _, state, j in members]
    actions = [state.logits(observations)[j].argmax(-1).numpy() for _, state, j in members]
    return weights, actions


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A swarm after two rounds, checkpointed after each."""
    path = tmp_path_factory.mktemp("checkpoint") / checkpoint.FILE_NAME
    runner = LocalSwarm(SETTINGS)
    result = runner.train_until_solved(report=lambda line: None, checkpoint_path=path)
    return runner, result, path


def test_a_loaded_checkpoint_has_the_same_weights_and_takes_the_same_actions(trained):
    runner, result, path = trained
    saved = checkpoint.load(path)
    assert saved["history"] == result["history"] and saved["env_id"] == "CartPole-v1" and saved["models"] == 3
    other = LocalSwarm(SETTINGS.replace(seed=99))  # other initial weights and ids
    observations = torch.as_tensor(np.random.default_rng(0).normal(0, 0.5, (200, 4)), dtype=torch.float32)
    before = weights_and_actions(other, observations)
    other.restore(saved)
    after, original = weights_and_actions(other, observations), weights_and_actions(runner, observations)
    assert all(np.array_equal(a, b) for a, b in zip(after[0], original[0]))
    assert all(np.array_equal(a, b) for a, b in zip(after[1], original[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(before[0], original[0])), "the restore changed nothing"


def train_five_steps(state):
    """One A2C update of every model of a learner on five made-up steps (two copies)."""
    observation = np.random.default_rng(2).normal(0, 0.05, (2, 4)).tolist()
    model.forward({"OBSERVATION": observation, "DETERMINISTIC": False}, state)
    for step in range(1, 6):
        model.forward({"OBSERVATION": observation, "DETERMINISTIC": False, "REWARD": [1.0, 1.0],
                       "DONE": [False, False], "ACTION": [step % 2, 0]}, state)


def test_a_restored_swarm_learns_as_the_original_would(trained):
    """Weights, learning rates and Adam's moments all come back: the same steps give the same
    update, to float32 rounding; without the moments the update differs by about the learning rate.
    A checkpoint keeps no half-filled rollout: a restored model starts an empty one."""
    runner, _, path = trained
    saved = checkpoint.load(path)
    twin, forgetful = LocalSwarm(SETTINGS.replace(seed=99)), LocalSwarm(SETTINGS.replace(seed=99))
    twin.restore(saved)
    forgetful.restore({**saved, "members": [{**m, "optimizer": None} for m in saved["members"]]})
    for swarm in (runner, twin, forgetful):
        for client in swarm.models:
            client.state.positions[:] = 0
            client.state.remembers[:] = False
            train_five_steps(client.state)
    original, restored, fresh = (weights_and_actions(s, torch.zeros(1, 4))[0] for s in (runner, twin, forgetful))
    assert max(np.abs(a - b).max() for a, b in zip(original, restored)) < 1e-6
    assert min(np.abs(a - b).max() for a, b in zip(original, fresh)) > 1e-4


def test_a_checkpoint_is_written_whole_or_not_at_all(trained, tmp_path, monkeypatch):
    runner, result, path = trained
    target = tmp_path / checkpoint.FILE_NAME
    target.write_bytes(path.read_bytes())
    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save(target, runner.state(), SETTINGS, result["history"])
    assert checkpoint.load(target)["history"] == result["history"]  # the last complete one is intact
    assert os.listdir(tmp_path) == [checkpoint.FILE_NAME]  # and nothing half-written is left


def test_a_checkpoint_of_another_size_or_environment_is_refused(trained, tmp_path):
    _, _, path = trained
    saved = checkpoint.load(path)
    with pytest.raises(SettingsError, match="holds 3 models, SWARM_MODELS is 4"):
        checkpoint.check_fits(saved, SETTINGS.replace(models=4), path)
    with pytest.raises(SettingsError, match="a swarm of Acrobot-v1"):
        checkpoint.check_fits({**saved, "env_id": "Acrobot-v1"}, SETTINGS, path)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(SettingsError, match="is not a swarm checkpoint"):
        checkpoint.load(junk)


def bad_checkpoints(path, folder):
    """Files that are not whole checkpoints, by what is wrong with them."""
    saved = torch.load(path, weights_only=True)
    member, others = saved["members"][0], saved["members"][1:]
    variants = {
        "text": "a line of text\n",
        "markdown": (ROOT / "README.md").read_bytes(),
        "an image": (ROOT / "docs" / "cartpole.gif").read_bytes(),
        "a torch file of objects": SwarmSettings(),  # a dataclass: only weights_only=False would read it
        "another torch file": {"state_dict": {"weight": torch.zeros(3)}},
        "no members": {k: v for k, v in saved.items() if k != "members"},
        "no history": {k: v for k, v in saved.items() if k != "history"},
        "too few members": {**saved, "members": saved["members"][:1]},
        "weights of another size": {**saved, "members": [{**member, "weights": torch.zeros(7)}, *others]},
        "no model id": {**saved, "members": [{k: v for k, v in member.items() if k != "model_id"}, *others]},
        "Adam of another size": {**saved, "members": [
            {**member, "optimizer": {**member["optimizer"], "exp_avg": torch.zeros(2)}}, *others]},
        "bad settings": {**saved, "settings": {**saved["settings"], "SWARM_MODELS": "many"}},
    }
    files = {}
    for name, content in variants.items():
        target = folder / (name.replace(" ", "-") + ".pt")
        if isinstance(content, str):
            target.write_text(content)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            torch.save(content, target)
        files[name] = target
    return files


def test_every_file_that_is_not_a_whole_checkpoint_is_refused_in_one_line_by_the_watch_and_the_control(trained, tmp_path):
    _, _, path = trained
    for name, bad in bad_checkpoints(path, tmp_path).items():
        with pytest.raises(SettingsError, match=r"is not a (whole )?swarm checkpoint") as refused:
            checkpoint.load(bad)
        assert len(refused.value.problems) == 1, name
        env = {**os.environ, "SWARM_LOG_DIR": str(tmp_path / "logs")}
        for command in ([str(ROOT / "07_watch.py"), str(bad)], [str(ROOT / "06_control.py"), "--resume", str(bad)]):
            result = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=120, env=env,
                                    cwd=tmp_path)
            assert result.returncode == 2, (name, command[0], result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and str(bad) in lines[0], (name, result.stderr)
            assert "Traceback" not in result.stderr and "weights_only" not in result.stderr, name
    assert checkpoint.load(path)["members"], "the real one still loads"


# --------------------------------------------------------------------------- over sockets: 06_control.py
def test_the_control_checkpoints_every_round_and_a_resumed_swarm_goes_on(swarm_env, tmp_path):
    process = run_control({"SWARM_ROUNDS": "2"})
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    saved = checkpoint.load(swarm_env.log_dir / checkpoint.FILE_NAME)
    assert [row["round"] for row in saved["history"]] == [1, 2] and len(saved["members"]) == 2
    first_run = json.loads((swarm_env.log_dir / "result.json").read_text())["history"]
    kept = tmp_path / "kept.pt"
    shutil.copy(swarm_env.log_dir / checkpoint.FILE_NAME, kept)

    process = run_control({"SWARM_ROUNDS": "3", "SWARM_RESUME": str(kept)})
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    assert f"resumed from {kept}: round 2" in output and "ROUND 3/3" in output and "ROUND 1/" not in output
    assert f"resuming {kept} with its settings; this command changes SWARM_ROUNDS" in output
    history = json.loads((swarm_env.log_dir / "result.json").read_text())["history"]
    assert history[:2] == first_run and history[2]["round"] == 3 and history[2]["steps"] > history[1]["steps"]
    assert len(checkpoint.load(swarm_env.log_dir / checkpoint.FILE_NAME)["history"]) == 3


def test_a_resumed_run_keeps_the_checkpoints_settings_unless_the_command_sets_them(tmp_path):
    path = tmp_path / "swarm.pt"
    tutorial = SwarmSettings.from_env({"SWARM_PRESET": "tutorial", "SWARM_MODELS": "2", "SWARM_EPISODES": "3",
                                       "SWARM_ROUNDS": "1", "SWARM_SEED": "4"})
    LocalSwarm(tutorial).train_until_solved(report=lambda line: None, checkpoint_path=path)

    command = SwarmSettings.from_env({"SWARM_RESUME": str(path), "SWARM_EPISODES": "5", "SWERGIO_PORT": "9000"})
    saved, run, changed = checkpoint.resume(command, {"SWARM_RESUME", "SWARM_EPISODES", "SWERGIO_PORT"})
    assert saved["history"] and changed == ["SWARM_EPISODES"]
    assert (run.preset, run.models, run.envs, run.training_actions, run.seed) == ("tutorial", 2, 1, "summed", 4)
    assert (run.episodes, run.port, run.resume) == (5, 9000, path)

    _, run, changed = checkpoint.resume(command.replace(preset="swarm"), {"SWARM_RESUME", "SWARM_PRESET"})
    assert (run.preset, run.models, run.training_actions, run.envs) == ("swarm", 2, "leader", 4)
    assert "SWARM_PRESET" in changed
    with pytest.raises((SystemExit, SettingsError)):  # another size: refused as a bad setting (shell, notebook)
        checkpoint.resume(command.replace(models=3), {"SWARM_RESUME", "SWARM_MODELS"})


def test_a_checkpoint_of_another_size_is_refused_before_anything_starts(swarm_env, trained):
    _, _, path = trained  # 3 models; the control below runs 2
    process = run_control({"SWARM_RESUME": str(path)})
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    assert "SWARM_RESUME:" in output and "holds 3 models, SWARM_MODELS is 2" in output
    assert "swarm ready" not in output and not (swarm_env.log_dir / "server.log").exists()


def test_a_killed_control_leaves_the_checkpoint_of_its_last_finished_round(swarm_env):
    process = run_control({"SWARM_ROUNDS": "0", "SWARM_MAX_SECONDS": "0", "SWARM_EPISODES": "1"})
    wait_for_line(process, "ROUND 3")  # two rounds finished, and checkpointed
    process.kill()
    process.communicate(timeout=30)
    saved = checkpoint.load(swarm_env.log_dir / checkpoint.FILE_NAME)
    assert [row["round"] for row in saved["history"]][:2] == [1, 2] and len(saved["members"]) == 2


# --------------------------------------------------------------------------- 07_watch.py
def watch(*args):
    return subprocess.run([sys.executable, str(ROOT / "07_watch.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_watch_plays_the_checkpoint_and_saves_an_animation(trained, tmp_path):
    _, _, path = trained
    result = watch(path, "--episodes", "4", "--seed", "3", "--render", tmp_path / "episode.gif")
    assert result.returncode == 0, result.stderr
    line = result.stdout.splitlines()[0]
    assert line.startswith("CartPole-v1, 3 models (after 2 rounds,") and "over 4 episodes" in line
    # the same swarm and the same starting states as a swarm built here from the checkpoint
    watched = load_script("07_watch.py").load_swarm(checkpoint.load(path), seed=3)
    expected = np.array(watched.play(4)["SCORES"])
    assert f"{expected.mean():.1f} ± {expected.std():.1f} over 4 episodes" in line
    with Image.open(tmp_path / "episode.gif") as animation:
        assert animation.n_frames > 5 and animation.size == (300, 200)
    assert "saved to" in result.stdout


def test_watch_saves_an_episode_as_an_mp4_with_its_frames(trained, tmp_path):
    import imageio.v2 as imageio

    _, _, path = trained
    result = watch(path, "--episodes", "1", "--seed", "3", "--render", tmp_path / "episode.mp4")
    assert result.returncode == 0, result.stderr
    score = float(result.stdout.split("one episode (score ")[1].split(")")[0])
    frames = imageio.mimread(tmp_path / "episode.mp4", memtest=False)
    assert len(frames) == int(score) // 2 + 1, "every other frame of the episode, its first included"
    assert frames[0].shape == (200, 300, 3) and frames[0].std() > 0, "a picture, not a blank"
    assert watch(path, "--render", tmp_path / "episode.avi").returncode == 2


def test_watch_without_a_checkpoint_says_how_to_get_one(tmp_path):
    result = watch(tmp_path / "none.pt")
    assert result.returncode == 2 and "train one with `python 06_control.py` first" in result.stderr


def test_the_control_shows_progress_in_a_terminal_and_keeps_its_records_every_round(swarm_env):
    """In a terminal a line counts the episodes of the phase in progress; the rounds' CSV, the
    results and the plot are written as the run goes."""
    controller, terminal = os.openpty()
    process = run_control({"SWARM_ROUNDS": "2", "SWARM_EPISODES": "3"}, stdout=terminal)
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closes when the control exits
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=300) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "\r  training: 1/3 episodes, mean score" in text and "\r  training: 2/3 episodes" in text
    assert "\r  evaluation: 1/" in text
    with open(swarm_env.log_dir / "rounds.csv") as table:
        rows = list(csv.DictReader(table))
    assert [int(row["round"]) for row in rows] == [1, 2] and (swarm_env.log_dir / "scores.png").stat().st_size > 1000

# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06_control: run the RL swarm
#
# This file and `06_control.ipynb` are paired by jupytext (`jupytext --sync 06_control.py` after
# editing either). Run it cell by cell (VS Code `# %%` cells or the notebook) or from a shell with
# `python 06_control.py`.
#
# The control starts every component with swergio-toolbox's `Swarm`, waits until all of them
# answer, then trains the swarm round by round until it solves CartPole-v1: a round is training
# episodes, an evaluation (deterministic episodes, nothing learned) and an evolution step. It
# stops everything at the end. Settings come from the environment (README, "Configuration") or,
# from a shell, from options (`python 06_control.py --help` lists them), and every one is checked
# before anything starts: a bad value is named, with what is allowed.

# %%
import csv
import json
import sys
import time

import matplotlib.pyplot as plt
import numpy as np

from swarm_rl import checkpoint
from swarm_rl.control import ControlClient
from swarm_rl.healing import Healer, explain_stops
from swarm_rl.launcher import ManagedSwarm
from swarm_rl.local import confirm_from_state
from swarm_rl.records import RunRecords
from swarm_rl.protocol import (AVG_SCORE, CMD, COMPONENT_ID, DETERMINISTIC, ENV_DONE, EPISODE, EVO_DONE, EVOLUTION,
                               FITNESS_SPREAD, NR_OF_EPISODE, ROOM_EVOLUTION, SCORES, STATE, WEIGHTS, custom_message)
from swarm_rl.rounds import train_until_solved
from swarm_rl.scripts import load_script
from swarm_rl.environments import solved_at
from swarm_rl.runs import new_run_folder
from swarm_rl.settings import SwarmSettings, given_settings, in_notebook, load_settings

settings = load_settings(argv=sys.argv[1:], description="Train the RL swarm until it solves CartPole-v1.",
                         log_dir_needed=False)
given = given_settings(SwarmSettings, sys.argv[1:])  # the settings this command sets itself
# SWARM_RESUME: the checkpoint's swarm and its run's settings, but for those this command sets
resumed, settings, changed = checkpoint.resume(settings, given)
if "SWARM_LOG_DIR" not in given:  # a folder of its own: runs/<env>-<date>-<time>[-seed<N>], and runs/latest
    settings = settings.replace(log_dir=new_run_folder(settings))
if resumed is not None:
    print(f"resuming {settings.resume} with its settings"
          + (f"; this command changes {', '.join(changed)}" if changed else ""), flush=True)
print(f"this run's folder: {settings.log_dir}", flush=True)
checkpoint_path = settings.log_dir / checkpoint.FILE_NAME
explain_stops(settings, checkpoint_path)  # from a shell: a stop, not a traceback

# %% [markdown]
# Start the server, aggregation, environment and evolution from `swarm.yaml`, then the models:
# all run `02_model.py`, each as its own process (the tutorial's shape; `SWARM_MODELS_PER_PROCESS`
# hosts several in one, `SWARM_LAUNCHER=fork` forks them from one interpreter). Every component
# writes to its own log file in the run's folder; if anything fails from here on, the whole swarm
# is stopped. With `SWARM_LAUNCH=0` nothing is started here: the control joins a swarm whose
# processes were started by hand, for instance on several hosts (`docs/hosts.md`).

# %%
swarm = ManagedSwarm(settings=settings)  # swarm.yaml, next to this file
if settings.launch:
    swarm.start()
    swarm.start_models()  # `02_model.py` model0, model1, ... (SWARM_MODELS_PER_PROCESS in each)

# %% [markdown]
# The control is a swergio client in the `control` room. Instead of sleeping and hoping, it
# pings until the server, the three components and every model answer (or fails, naming who
# did not).

# %%
control = ControlClient(swarm)
ready_s = swarm.wait_ready(control, ["aggregation", "environment", "evolution"], settings.models)
print(f"swarm ready: {settings.models} models and 4 components in {ready_s:.1f} s", flush=True)

# %% [markdown]
# With `SWARM_RESUME=<checkpoint>` the models take the checkpoint's weights, learning rates and
# Adam state before the first round, and the rounds go on from its history.
#
# A model process (or the aggregation, environment or evolution) that dies or falls silent during
# a round is started again by the `healer` (up to `SWARM_RESTARTS` times): every member goes back
# to the last checkpoint and the round is played again. It remembers the members' state before
# the first round and after every round. Models started by hand (`SWARM_LAUNCH=0`) it names, with
# the command that starts each again, and waits for them.

# %%
def model_states():
    """Every model's weights, learning rate and Adam state (they answer STATE and train on)."""
    return control.gather(ROOM_EVOLUTION, {CMD: STATE}, settings.models, key=WEIGHTS)


healer = Healer(swarm, control, settings, report=lambda line: print(line, flush=True)) if settings.restarts else None
if resumed is not None:
    model_ids = [answer[COMPONENT_ID] for answer in model_states()]
    control.send(custom_message(ROOM_EVOLUTION, checkpoint.restore_message(resumed, model_ids)))
    print(f"resumed from {settings.resume}: round {len(resumed['history'])}, "
          f"{resumed['history'][-1]['steps'] if resumed['history'] else 0:,} training steps", flush=True)
if healer is not None:
    healer.remember(model_states())

# %% [markdown]
# `start` runs episodes and returns the environment's report (their scores and steps); with
# `deterministic=True` the models neither learn from them nor earn contribution. While it waits,
# a line shows the episodes done so far and their mean score (in a terminal or the notebook).
# `start_evo` runs one evolution step and returns its fitness spread. Each waits, bounded, for
# the reply to its own request. Beside the checkpoint the run records, in its folder, what
# TensorBoard shows (`tensorboard --logdir runs`: every round's scores and every member's
# hyperparameters and fitness), `monitor.csv` (every training episode, as stable-baselines3's
# Monitor writes it) and `lineage.csv` (who copied whom in each evolution step).

# %%
live = sys.stdout.isatty() or in_notebook()  # a line that rewrites itself; not in a log file
records = RunRecords(settings.log_dir, settings.env_id)
evolutions = []  # every EVO_DONE: the members' fitness, and who copied whom


def start(nr_of_episodes=1, deterministic=False):
    phase = "evaluation" if deterministic else "training"

    def show_progress(message):  # each ENV_PROGRESS: episodes done of asked, their mean score
        if live:
            print(f"\r  {phase}: {message[EPISODE]}/{nr_of_episodes} episodes, mean score {message[AVG_SCORE]:.1f}  ",
                  end="", flush=True)
        return False  # not the reply: keep waiting for ENV_DONE

    asked_at = time.time()
    reply = control.request({NR_OF_EPISODE: nr_of_episodes, DETERMINISTIC: deterministic}, until=ENV_DONE,
                            progress=show_progress)
    if live:
        print("\r\033[K", end="", flush=True)  # rub the progress line out
    if not deterministic:
        records.training_run(reply, asked_at)
    return reply


def start_evo():
    evolutions.append(control.request({EVOLUTION: True}, until=EVO_DONE))
    return evolutions[-1][FITNESS_SPREAD]


def confirm(threshold, round_nr):
    """The 100-episode confirmation, played here by the members' current weights (their STATE)
    with the swarm's own vote: no message per step. It stops once the threshold is out of reach."""
    return confirm_from_state(model_states(), settings, threshold, round_nr)


# %% [markdown]
# Train until solved. Each round is the tutorial's: `SWARM_EPISODES` training episodes, a
# deterministic evaluation, an evolution step (unless `SWARM_EVOLUTION=0`), and an evaluation of
# the evolved population. CartPole-v1 is solved, as gymnasium defines it, by a mean of at least
# 475 over 100 consecutive episodes: an evaluation that reaches 475 is confirmed with 100
# deterministic episodes, played in this process (`confirm`). The budget (`SWARM_MAX_STEPS`
# training steps, `SWARM_MAX_SECONDS` of wall time from the first round) is checked after every
# round. The same loop drives the in-process runner (`swarm_rl.local`) that the study uses.

# %%
def plot_scores(history):
    """Training and evaluation scores against training steps."""
    steps = [row["steps"] for row in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [row["train_mean"] for row in history], "o-", ms=3,
            label=f"training ({settings.episodes} episodes, mean)")
    eval_mean = np.array([row["eval_mean"] for row in history])
    eval_std = np.array([row["eval_std"] for row in history])
    ax.plot(steps, eval_mean, "s-", ms=3, label="evaluation (deterministic, mean ± sd)")
    ax.fill_between(steps, eval_mean - eval_std, eval_mean + eval_std, alpha=0.2, color="C1")
    after = [(row["steps"], row["after_mean"]) for row in history if row["after_mean"] is not None]
    if after:
        ax.plot(*zip(*after), "x", ms=4, color="C2", label="evaluation after the evolution step")
    if (threshold := solved_at(settings.env_id)) is not None:
        ax.axhline(threshold, ls=":", color="grey", label=f"solved ({threshold:g})")
    ax.set(xlabel="training environment steps", ylabel="score (return per episode)",
           title=f"{settings.env_id}, {settings.models} models, {settings.envs} env(s)"
                 + (", evolution" if settings.evolution else ", no evolution"))
    ax.legend(loc="upper left")
    return fig


def save_round(history):
    """After every round, so that a run stopped by an error or Ctrl-C keeps what it did: the swarm
    (swarm.pt), the rounds (result.json, rounds.csv) and the plot (scores.png)."""
    states = model_states()
    checkpoint.save(checkpoint_path, states, settings, history)
    if healer is not None:
        healer.remember(states)
    (settings.log_dir / "result.json").write_text(json.dumps(dict(history=history), indent=1))
    with open(settings.log_dir / "rounds.csv", "w", newline="") as table:
        writer = csv.DictWriter(table, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    fig = plot_scores(history)
    fig.savefig(settings.log_dir / "scores.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    row, before = history[-1], history[-2] if len(history) > 1 else dict(steps=0, seconds=0.0)
    records.round(row, states, evolutions[-1] if row["fitness_spread"] is not None else None,
                  (row["steps"] - before["steps"]) / max(row["seconds"] - before["seconds"], 1e-9))


# what the healer cannot heal (or Ctrl-C) stops every process
with healer.in_charge() if healer is not None else swarm.stop_on_failure():
    result = train_until_solved(start, start_evo, confirm, settings, report=lambda line: print(line, flush=True),
                                after_round=save_round, earlier=resumed["history"] if resumed else None,
                                heal=healer.heal if healer is not None else None)
print(f"checkpoint: {checkpoint_path}")

# %% [markdown]
# The scores against training steps. Every round's numbers are in `result.json` and `rounds.csv`,
# and the plot in `scores.png`, next to the logs.

# %%
result.update(ready_s=ready_s, models=settings.models, envs=settings.envs, evolution=settings.evolution,
              seed=settings.seed)
(settings.log_dir / "result.json").write_text(json.dumps(result, indent=1))
records.close()
plot_scores(result["history"])
print(f"plot saved to {settings.log_dir / 'scores.png'}")

# %% [markdown]
# Stop every process of the swarm (and wait until they are gone). With `SWARM_LAUNCH=0` the
# control started none, and leaves those started by hand running.

# %%
swarm.stop()
print("swarm stopped" if settings.launch else "done; the processes started by hand go on")

# %% [markdown]
# The trained swarm, playing: `07_watch.py` loads the checkpoint into this process (no server),
# plays deterministic episodes with the swarm's own aggregation, and saves one as an animation.
# From a shell: `python 07_watch.py --render cartpole.mp4` (the newest run, `runs/latest`).

# %%
watch = load_script("07_watch.py")
watched = watch.load_swarm(checkpoint.load(checkpoint_path), settings.seed)
scores = np.array(watched.play(10)[SCORES])
print(f"the trained swarm: {scores.mean():.1f} ± {scores.std():.1f} over 10 deterministic episodes")
animation = settings.log_dir / "swarm.gif"
print(f"one episode (score {watch.render(watched, animation, settings.seed):g}) saved to {animation}")
if in_notebook():
    from IPython.display import Image, display
    display(Image(filename=str(animation)))

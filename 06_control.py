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
# stops everything at the end. Settings come from the environment (README, "Configuration"), and
# every one is checked before anything starts: a bad value is named, with what is allowed.

# %%
import itertools
import json
import math
import time

import matplotlib.pyplot as plt
import numpy as np

from swarm.control import ControlClient
from swarm.launcher import ManagedSwarm
from swarm.protocol import DETERMINISTIC, ENV_DONE, EVO_DONE, EVOLUTION, FITNESS_SPREAD, NR_OF_EPISODE, SCORES, STEPS
from swarm.settings import SOLVED_AT, load_settings

settings = load_settings()

# %% [markdown]
# Start the server, aggregation, environment and evolution from `swarm.yaml`, then the models:
# all run `02_model.py`, each as its own process. Every component writes to its own log file in
# `SWARM_LOG_DIR`; if anything fails from here on, the whole swarm is stopped.

# %%
swarm = ManagedSwarm(settings=settings)  # swarm.yaml, next to this file
swarm.start()
for i in range(settings.models):
    swarm.add(f"model{i}", "02_model.py")
    swarm.start(f"model{i}")

# %% [markdown]
# The control is a swergio client in the `control` room. Instead of sleeping and hoping, it
# pings until the server, the three components and every model answer (or fails, naming who
# did not).

# %%
control = ControlClient(swarm)
ready_s = swarm.wait_ready(control, ["aggregation", "environment", "evolution"], settings.models)
print(f"swarm ready: {settings.models} models and 4 components in {ready_s:.1f} s", flush=True)

# %% [markdown]
# `start` runs episodes and returns their scores; `evaluate` runs deterministic episodes (the
# models neither learn from them nor earn contribution) and returns their mean and standard
# deviation; `start_evo` runs one evolution step. Each waits, bounded, for the reply to its own
# request.

# %%
training = {"steps": 0, "seconds": 0.0}


def start(nr_of_episodes=1, deterministic=False):
    began = time.monotonic()
    reply = control.request({NR_OF_EPISODE: nr_of_episodes, DETERMINISTIC: deterministic},
                            until=ENV_DONE)
    if not deterministic:
        training["steps"] += reply[STEPS]
        training["seconds"] += time.monotonic() - began
    return reply[SCORES]


def evaluate(nr_of_episodes=settings.eval_episodes):
    # whole batches: every environment copy plays the same number of episodes
    scores = start(math.ceil(nr_of_episodes / settings.envs) * settings.envs, deterministic=True)
    return float(np.mean(scores)), float(np.std(scores))


def start_evo():
    reply = control.request({EVOLUTION: True}, until=EVO_DONE)
    return reply[FITNESS_SPREAD]


# %% [markdown]
# Train until solved. Each round trains for `SWARM_EPISODES` episodes, evaluates, and evolves
# the population (unless `SWARM_EVOLUTION=0`). CartPole-v1 counts as solved when the evaluation
# mean reaches its reward threshold, 475. The budget (`SWARM_MAX_STEPS` training steps,
# `SWARM_MAX_SECONDS` of wall time from the first round) is checked after every round.

# %%
history = []  # one row per round
began = time.monotonic()
solved = False
for round_nr in itertools.count(1):
    print(f"ROUND {round_nr}" + (f"/{settings.rounds}" if settings.rounds else ""), flush=True)
    train_scores = start(settings.episodes)
    eval_mean, eval_std = evaluate()
    solved = eval_mean >= SOLVED_AT
    out_of_budget = ((settings.max_steps and training["steps"] >= settings.max_steps)
                     or (settings.max_seconds and time.monotonic() - began >= settings.max_seconds)
                     or round_nr == settings.rounds)
    spread = start_evo() if settings.evolution and not solved and not out_of_budget else None
    history.append(dict(round=round_nr, steps=training["steps"], seconds=time.monotonic() - began,
                        train_mean=float(np.mean(train_scores)), eval_mean=eval_mean, eval_std=eval_std,
                        fitness_spread=spread))
    print(f"  steps {training['steps']:>7,}  training {np.mean(train_scores):6.1f}"
          f"  evaluation {eval_mean:6.1f} ± {eval_std:5.1f}  wall {time.monotonic() - began:5.0f} s"
          + (f"  evolved (fitness spread {spread:.2%})" if spread is not None else ""), flush=True)
    if solved or out_of_budget:
        break

# %% [markdown]
# What it took, and the scores against environment steps (the plot is saved next to the logs,
# with the numbers in `result.json`).

# %%
wall_s = time.monotonic() - began
print(f"{'solved' if solved else 'NOT solved'} after {round_nr} rounds: {training['steps']:,} training steps, "
      f"{wall_s:.0f} s wall ({training['steps'] / max(training['seconds'], 1e-9):.0f} training steps/s)")
result = dict(solved=solved, steps=training["steps"], seconds=wall_s, ready_s=ready_s, models=settings.models,
              envs=settings.envs, evolution=settings.evolution, seed=settings.seed, history=history)
(settings.log_dir / "result.json").write_text(json.dumps(result, indent=1))

steps = [row["steps"] for row in history]
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(steps, [row["train_mean"] for row in history], "o-", ms=3, label=f"training ({settings.episodes} episodes, mean)")
eval_mean = np.array([row["eval_mean"] for row in history])
eval_std = np.array([row["eval_std"] for row in history])
ax.plot(steps, eval_mean, "s-", ms=3, label="evaluation (deterministic, mean ± sd)")
ax.fill_between(steps, eval_mean - eval_std, eval_mean + eval_std, alpha=0.2, color="C1")
ax.axhline(SOLVED_AT, ls=":", color="grey", label=f"solved ({SOLVED_AT:g})")
ax.set(xlabel="training environment steps", ylabel="score (steps balanced)", ylim=(0, 510),
       title=f"CartPole-v1, {settings.models} models, {settings.envs} env(s)"
             + (", evolution" if settings.evolution else ", no evolution"))
ax.legend(loc="upper left")
plot_path = settings.log_dir / "scores.png"
fig.savefig(plot_path, dpi=100, bbox_inches="tight")
print(f"plot saved to {plot_path}")

# %% [markdown]
# Stop every process of the swarm (and wait until they are gone).

# %%
swarm.stop()
print("swarm stopped")

# %% [markdown]
# # 06_control: run the RL swarm
#
# This file is the source of `06_control.ipynb` (regenerate it with
# `python tools/py_to_ipynb.py 06_control.py`). Run it cell by cell (VS Code `# %%` cells or the
# notebook) or from a shell with `python 06_control.py`.
#
# The control starts every component with swergio-toolbox's `Swarm`, waits until all of them
# answer, runs training and deterministic episodes and evolution steps through the `control`
# room, and stops everything at the end. Settings come from the environment: `SWARM_MODELS`,
# `SWARM_ROUNDS`, `SWARM_EPISODES`, `SWERGIO_HOST`, `SWERGIO_PORT`, `SWARM_LOG_DIR`.

# %%
import time

import matplotlib.pyplot as plt

import swarm_common as sc

config = sc.Config.from_env()

# %% [markdown]
# Start the server, aggregation, environment and evolution from `swarm.yaml`, then the models:
# all run `02_model.py`, each as its own process. Every component writes to its own log file in
# `SWARM_LOG_DIR`; if anything fails from here on, the whole swarm is stopped.

# %%
swarm = sc.ManagedSwarm("swarm.yaml", config)
swarm.start()
for i in range(config.models):
    swarm.add(f"model{i}", "02_model.py")
    swarm.start(f"model{i}")

# %% [markdown]
# The control is a swergio client in the `control` room. Instead of sleeping and hoping, it
# pings until the server, the three components and every model answer (or fails, naming who
# did not).

# %%
control = sc.ControlClient(swarm)
ready_s = swarm.wait_ready(control, ["aggregation", "environment", "evolution"], config.models)
print(f"swarm ready: {config.models} models and 4 components in {ready_s:.1f} s")

# %% [markdown]
# `start` runs episodes and returns their average score; `start_evo` runs one evolution step.
# Both wait, bounded, for the reply to their own request.

# %%
training = {"steps": 0, "seconds": 0.0}


def start(nr_of_episodes=1, deterministic=False):
    began = time.monotonic()
    reply = control.request({sc.NR_OF_EPISODE: nr_of_episodes, sc.DETERMINISTIC: deterministic},
                            until=sc.ENV_DONE)
    seconds, steps = time.monotonic() - began, reply[sc.STEPS]
    if not deterministic:
        training["steps"] += steps
        training["seconds"] += seconds
    kind = "deterministic" if deterministic else "training"
    print(f"  {nr_of_episodes} {kind} episode(s): average score {reply[sc.AVG_SCORE]:6.1f}"
          f"  ({steps} steps, {steps / seconds:.0f} steps/s)")
    return reply[sc.AVG_SCORE]


def start_evo():
    began = time.monotonic()
    control.request({sc.EVOLUTION: True}, until=sc.EVO_DONE)
    print(f"  evolution step done in {time.monotonic() - began:.2f} s")
    return True


# %% [markdown]
# The tutorial's loop: train for `SWARM_EPISODES` episodes, check with one deterministic
# episode, evolve the population, and check again.

# %%
scores = []
for round_nr in range(1, config.rounds + 1):
    print(f"ROUND {round_nr}/{config.rounds}")
    train_score = start(config.episodes, deterministic=False)
    before_evo = start(1, deterministic=True)
    start_evo()
    after_evo = start(1, deterministic=True)
    scores.append((round_nr, train_score, before_evo, after_evo))

# %% [markdown]
# Scores per round, and a plot (saved next to the logs).

# %%
print(f"\n{'round':>5} {'training avg':>13} {'deterministic':>14} {'after evolution':>16}")
for round_nr, train_score, before_evo, after_evo in scores:
    print(f"{round_nr:>5} {train_score:>13.1f} {before_evo:>14.1f} {after_evo:>16.1f}")
steps_per_s = training["steps"] / max(training["seconds"], 1e-9)
print(f"training: {training['steps']} environment steps at {steps_per_s:.1f} steps/s")

rounds = [row[0] for row in scores]
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(rounds, [row[1] for row in scores], "o-", label=f"training ({config.episodes} episodes, mean)")
ax.plot(rounds, [row[2] for row in scores], "s--", label="deterministic, before evolution")
ax.plot(rounds, [row[3] for row in scores], "^:", label="deterministic, after evolution")
ax.set(xlabel="round", ylabel="score (steps balanced)", title=f"CartPole-v1, {config.models} models",
       xticks=rounds)
ax.legend()
plot_path = config.log_dir / "scores.png"
fig.savefig(plot_path, dpi=100, bbox_inches="tight")
print(f"plot saved to {plot_path}")

# %% [markdown]
# Stop every process of the swarm (and wait until they are gone).

# %%
swarm.stop()
print("swarm stopped")

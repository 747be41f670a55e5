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
# # 05_run_and_inference: train a network to aim a trebuchet, by messages
#
# This file and `05_run_and_inference.ipynb` are paired by jupytext
# (`jupytext --sync trebuchet/05_run_and_inference.py` after editing either). Run it cell by cell
# (VS Code `# %%` cells or the notebook, from any folder) or from a shell with
# `python trebuchet/05_run_and_inference.py`.
#
# It starts the server, the control model and the trebuchet with swergio-toolbox's `Swarm`, then
# the trainer, which runs `TRAIN_STEPS` steps (default 1000) and exits. Then we aim: a batch of
# fresh (wind, target) pairs goes through the trained network and the simulator, and we compare
# the distances reached with the targets. At the end everything is stopped. Settings come from
# the environment (`TRAIN_STEPS`, `SWERGIO_HOST`, `SWERGIO_PORT`, `SWARM_LOG_DIR`, ...; see
# `trebuchet/README.md`), and every one is checked before anything starts.

# %%
import json
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
from swergio import MODEL_STATUS

from swarm_rl.control import ControlClient
from swarm_rl.launcher import ManagedSwarm, SwarmError
from swarm_rl.protocol import ROOM_CONTROL, ROOT_ID, STATUS
from swarm_rl.scripts import PROJECT_DIR
from swarm_rl.settings import load_settings
from trebuchet import protocol as tp
from trebuchet.settings import TrebuchetSettings

HERE = PROJECT_DIR / "trebuchet"  # swarm.yaml's folder, wherever this runs from (a notebook has no __file__)
settings = load_settings(TrebuchetSettings, argv=sys.argv[1:], description="Train the trebuchet's control model and use it.")

# %% [markdown]
# Start the server, the control model and the trebuchet from `swarm.yaml`. Each writes to its
# own log file in `SWARM_LOG_DIR`. Our own client, `inference`, sits in the `control` room (where
# the trainer reports) and the `output` room (where distances arrive). Instead of sleeping and
# hoping, it pings until both components answer; if anything fails from here on, the whole swarm
# is stopped.

# %%
SERVING = ["server", "controlmodel", "trebuchet"]  # these must stay up; the trainer exits when done
swarm = ManagedSwarm(HERE / "swarm.yaml", settings)
swarm.start(SERVING)
client = ControlClient(swarm, name="inference")  # stops the swarm if it cannot connect
client.join_room(tp.ROOM_OUTPUT)
ready_s = swarm.wait_ready(client, ["controlmodel", "trebuchet"], models=0)  # stops the swarm on failure
print(f"control model and trebuchet ready in {ready_s:.1f} s")

# %% [markdown]
# Training: start the trainer and wait for its `TRAIN_DONE`. Every message between the
# components is one hop of the training loop: the batch goes forward through the control model
# and the trebuchet to the trainer, whose loss gradient comes back the same way. The wait is
# bounded: `SWARM_REPLY_TIMEOUT` seconds without progress is an error.


# %%
def train() -> dict:
    """Run the trainer to the end; its loss summary."""
    with swarm.stop_on_failure():
        swarm.start("trainer")
        trainer = swarm.components["trainer"]
        deadline = time.monotonic() + settings.start_timeout + settings.reply_timeout  # includes start-up
        while True:
            swarm.raise_if_dead(SERVING)
            if trainer.exit_code() not in (None, 0):
                raise SwarmError(f"the trainer failed (exit code {trainer.exit_code()}); see {trainer.log_file}")
            if (left := deadline - time.monotonic()) <= 0:
                raise SwarmError(f"no progress from the trainer within {settings.reply_timeout:.0f} s; "
                                 f"see the logs in {settings.log_dir}")
            message = client.receive(timeout=min(1.0, left))
            if message is None or message.get("TO_ROOM") != ROOM_CONTROL:
                continue  # silence, or training traffic in `output`
            if message.get(STATUS) == tp.TRAIN_PROGRESS:
                print(f"  step {message[tp.STEP]:5d}/{settings.train_steps}: mean loss {message[tp.LOSS]:9.2f} "
                      f"(RMSE {np.sqrt(message[tp.LOSS]):6.2f} m)")
                deadline = time.monotonic() + settings.reply_timeout
            elif message.get(STATUS) == tp.TRAIN_DONE:
                trainer.process.wait(timeout=30)  # it exits right after reporting
                return message[tp.SUMMARY]


print(f"training for {settings.train_steps} steps of 100 samples")
summary = train()
print(f"trained {summary['steps']} steps in {summary['seconds']:.1f} s ({summary['steps_per_second']:.1f} steps/s); "
      f"mean loss over the first and last {summary['averaged_over']} steps: "
      f"{summary['loss_first']:.1f} -> {summary['loss_last']:.2f} m^2 "
      f"(RMSE {summary['rmse_first']:.1f} -> {summary['rmse_last']:.2f} m)")

# %% [markdown]
# Inference: `aim_and_shoot` sends a batch to `input` with `MODEL_STATUS` VALIDATE (nobody trains
# on it or keeps it for a gradient) and waits, bounded, for the trebuchet's distances for that
# batch in `output`.


# %%
def aim_and_shoot(wind: np.ndarray, target: np.ndarray, timeout: float = 30.0) -> np.ndarray:
    """The distances the trebuchet reaches when the network aims at `target` in `wind`."""
    message = tp.data_message(tp.ROOM_INPUT, np.stack([wind, target], axis=1).tolist(), MODEL_STATUS.VALIDATE)
    with swarm.stop_on_failure():
        client.send(message)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            swarm.raise_if_dead(SERVING)
            reply = client.receive(timeout=min(1.0, left))
            if (reply is not None and reply.get(ROOT_ID) == message[ROOT_ID]
                    and reply.get("TYPE") == tp.FORWARD.id and reply.get("TO_ROOM") == tp.ROOM_OUTPUT):
                return np.asarray(reply[tp.DATA])
        raise SwarmError(f"no distances in `output` within {timeout:.0f} s; see the logs in {settings.log_dir}")


rng = np.random.default_rng(settings.component_seed("inference"))  # SWARM_SEED: the same pairs every run
target = rng.uniform(20.0, 100.0, 100)  # fresh pairs, drawn as the trainer draws them
wind = rng.normal(0.0, 5.0, 100)
distance = aim_and_shoot(wind, target)
error = distance - target

print(f"{'wind m/s':>9} {'target m':>9} {'reached m':>10} {'error m':>8}")
for i in np.argsort(target)[::10]:  # every tenth pair, by target
    print(f"{wind[i]:9.1f} {target[i]:9.1f} {distance[i]:10.1f} {error[i]:8.2f}")
mean_abs_error = float(np.mean(np.abs(error)))
print(f"mean absolute error on {len(target)} fresh pairs: {mean_abs_error:.2f} m (largest {np.max(np.abs(error)):.2f} m)")

# %% [markdown]
# Targets against the distances reached (on the diagonal: a hit), coloured by the wind.

# %%
fig, ax = plt.subplots(figsize=(6, 5))
points = ax.scatter(target, distance, c=wind, cmap="coolwarm", vmin=-12, vmax=12, s=18)
ax.plot([20, 100], [20, 100], "k--", lw=1, label="hit")
fig.colorbar(points, label="wind (m/s, + towards the target)")
ax.set(xlabel="target (m)", ylabel="distance reached (m)",
       title=f"after {summary['steps']} steps: mean |error| {mean_abs_error:.2f} m")
ax.legend()
plot_path = settings.log_dir / "trebuchet_inference.png"
fig.savefig(plot_path, dpi=100, bbox_inches="tight")
print(f"plot saved to {plot_path}")
results = {"train_steps": settings.train_steps, "training": summary, "pairs": len(target),
           "mean_abs_error": mean_abs_error, "max_abs_error": float(np.max(np.abs(error))), "pids": swarm.pids()}
(settings.log_dir / "trebuchet_results.json").write_text(json.dumps(results, indent=2))

# %% [markdown]
# Stop every process of the swarm (and wait until they are gone).

# %%
swarm.stop()
print("swarm stopped")

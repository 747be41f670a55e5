"""04_training.py: the trainer of the trebuchet example (seeds 000/001).

It sends batches of 100 random (wind, target) pairs to `input`. The distances the trebuchet
reaches for them arrive in `output`; the trainer answers with the gradient of the mean squared
error between distance and target, which travels back through the trebuchet and the control
model. When the control model's gradient arrives in `input`, one training step is complete and
the next batch goes out: `TRAIN_STEPS` steps (default 1000), then a loss summary, then it exits.

Our additions: it waits until the control model and the trebuchet answer before the first batch,
reports progress and the summary in the `control` room, and gives up (exit code 1, naming what is
missing) if a step's gradient does not come back within SWARM_REPLY_TIMEOUT seconds.
"""
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from swergio import MODEL_STATUS
from torch import nn

from swarm_rl.client import Handlers, SwarmClient
from swarm_rl.component import setup_component
from swarm_rl.launcher import SwarmError, wait_for_answers
from swarm_rl.protocol import CUSTOM, ROOM_CONTROL, ROOT_ID, STATUS
from trebuchet import protocol as tp
from trebuchet.settings import TrebuchetSettings

COMPONENT_NAME = "trainer"
BATCH_SIZE = 100
TARGET_RANGE = (20.0, 100.0)  # m
WIND_SD = 5.0  # m/s; positive wind blows towards the target
PROGRESS_EVERY = 100  # steps between progress reports
log = logging.getLogger(COMPONENT_NAME)
handlers = Handlers()
l_fn = nn.MSELoss()


@dataclass
class TrainerState:
    """What the handlers share (the tutorial's step counter and memory, in one place)."""

    train_steps: int  # TRAIN_STEPS
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    targets: tp.BoundedMemory = field(default_factory=tp.BoundedMemory)  # ROOT_ID -> targets
    in_flight: tp.BoundedMemory = field(default_factory=tp.BoundedMemory)  # ROOT_IDs of unfinished steps
    losses: list = field(default_factory=list)  # one MSE per step
    steps: int = 0
    reported: int = 0
    started: float = field(default_factory=time.monotonic)
    done: bool = False


def new_msg(state: TrainerState) -> dict:
    """A new batch for `input`; its targets are kept under the batch's ROOT_ID."""
    target = state.rng.uniform(*TARGET_RANGE, BATCH_SIZE)
    wind = state.rng.normal(0.0, WIND_SD, BATCH_SIZE)
    msg = tp.data_message(tp.ROOM_INPUT, np.stack([wind, target], axis=1).tolist(), MODEL_STATUS.TRAIN)
    state.targets[msg[ROOT_ID]] = target
    state.in_flight[msg[ROOT_ID]] = True
    return msg


@handlers.on(tp.ROOM_OUTPUT, reply_to=tp.ROOM_OUTPUT, message_type=tp.FORWARD, reply_type=tp.GRADIENT)
def backward(msg, state):
    """Distances in `output` -> d MSE / d distance back to `output`, under the message's ID."""
    root_id = msg.get(ROOT_ID)
    if root_id not in state.targets:
        return None  # not one of our training batches (an inference, or another trainer's)
    target = state.targets[root_id]
    distances = tp.get_vector(msg, tp.DATA, len(target))
    message_id = tp.get_id(msg)
    del state.targets[root_id]
    prediction = torch.tensor(distances, requires_grad=True)
    loss = l_fn(prediction, torch.from_numpy(target))
    loss.backward()
    state.losses.append(loss.item())
    return {tp.ID: message_id, tp.DATA: prediction.grad.tolist()}


@handlers.on(tp.ROOM_INPUT, reply_to=tp.ROOM_INPUT, message_type=tp.GRADIENT, reply_type=tp.FORWARD)
def new_data(msg, state):
    """The control model's gradient in `input` ends a step: send the next batch, or finish."""
    if state.in_flight.pop(msg.get(ROOT_ID), None) is None:
        return None
    state.steps += 1
    if state.steps < state.train_steps:
        return new_msg(state)
    state.done = True
    return None


@handlers.on(tp.ROOM_INPUT, reply_to=ROOM_CONTROL, message_type=tp.GRADIENT, reply_type=CUSTOM)
def report(msg, state):
    """Every PROGRESS_EVERY steps a TRAIN_PROGRESS, at the end TRAIN_DONE with the summary."""
    if state.steps == state.reported or not (state.done or state.steps % PROGRESS_EVERY == 0):
        return None
    state.reported = state.steps
    recent = state.losses[-PROGRESS_EVERY:]
    log.info("step %d/%d: mean loss of the last %d steps %.2f (RMSE %.2f m)", state.steps, state.train_steps,
             len(recent), np.mean(recent), math.sqrt(np.mean(recent)))
    if state.done:
        return {STATUS: tp.TRAIN_DONE, tp.SUMMARY: summary(state)}
    return {STATUS: tp.TRAIN_PROGRESS, tp.STEP: state.steps, tp.LOSS: float(np.mean(recent))}


def summary(state: TrainerState) -> dict:
    """Mean loss (MSE, m^2) over the first and the last tenth of the steps, and the speed."""
    seconds = time.monotonic() - state.started
    tenth = max(1, len(state.losses) // 10)
    first, last = float(np.mean(state.losses[:tenth])), float(np.mean(state.losses[-tenth:]))
    return {"steps": state.steps, "seconds": seconds, "steps_per_second": state.steps / seconds,
            "loss_first": first, "loss_last": last, "loss_min": float(min(state.losses)),
            "rmse_first": math.sqrt(first), "rmse_last": math.sqrt(last), "averaged_over": tenth}


def main() -> None:
    """Train for TRAIN_STEPS steps, report, and exit (exit code 1, naming what is missing, on a
    timeout)."""
    settings = setup_component(COMPONENT_NAME, TrebuchetSettings, description=__doc__)
    torch.set_num_threads(1)
    state = TrainerState(settings.train_steps, rng=np.random.default_rng(settings.component_seed(COMPONENT_NAME)))
    client = handlers.wire(SwarmClient(COMPONENT_NAME, settings, state=state))

    # The first batch must not go out before the others listen: it would be lost.
    wait_for_answers(client, ["controlmodel", "trebuchet"], timeout=settings.start_timeout)
    train(client, state, settings)
    log.info("done: %s", summary(state))
    client.close()


def train(client: SwarmClient, state: TrainerState, settings: TrebuchetSettings) -> None:
    """Send the first batch and serve until the last step; a SwarmError when a step's gradient
    does not come back within SWARM_REPLY_TIMEOUT seconds."""
    log.info("training for %d steps of %d samples", state.train_steps, BATCH_SIZE)
    state.started = time.monotonic()
    client.send(new_msg(state))
    deadline, last_step = time.monotonic() + settings.reply_timeout, 0
    while not state.done:  # listen() would serve forever; we serve until the last step
        message = client.receive(timeout=max(0.0, deadline - time.monotonic()))
        if message is not None:
            client.dispatch(message)
        if state.steps != last_step:
            deadline, last_step = time.monotonic() + settings.reply_timeout, state.steps
        elif time.monotonic() > deadline:
            raise SwarmError(f"trainer: the gradient of step {state.steps + 1} did not come back in "
                             f"`input` within {settings.reply_timeout:.0f} s; are controlmodel and trebuchet "
                             f"running? (logs in {settings.log_dir})")


if __name__ == "__main__":
    main()

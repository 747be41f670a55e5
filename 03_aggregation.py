"""03_aggregation.py: many models' logits in, one action out.

Every model proposes a distribution over the actions. The aggregation adds up the models'
probabilities, takes the argmax (deterministic) or samples from the summed distribution, and
credits each model with its share of the chosen action's summed probability: its contribution,
which the evolution uses as fitness.
"""
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from swergio import Trigger

import swarm_common as sc

COMPONENT_NAME = "aggregation"
rng = np.random.default_rng()


@dataclass
class StepLogits:
    """The logits received so far for the current step of the current run (by ROOT_ID)."""
    root_id: str | None = None
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    retired_roots: deque = field(default_factory=lambda: deque(maxlen=1000))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def get_action(logits_by_model: dict[str, np.ndarray], deterministic: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """One action per environment from the summed probabilities, and each model's share of the
    chosen actions (shares of one environment sum to 1; a model's contribution adds them up).

    `logits_by_model` maps a model to its logits, one row per environment: (envs, actions).
    """
    all_probs = softmax(np.stack(list(logits_by_model.values())))  # (models, envs, actions)
    summed = all_probs.sum(axis=0)  # (envs, actions)
    if deterministic:
        actions = summed.argmax(axis=-1)
    else:  # sample every environment's action at once (inverse CDF)
        cumulative = np.cumsum(summed / summed.sum(axis=-1, keepdims=True), axis=-1)
        draws = rng.random((len(summed), 1))
        actions = np.minimum((cumulative < draws).sum(axis=-1), summed.shape[-1] - 1)
    rows = np.arange(len(summed))
    shares = all_probs[:, rows, actions] / summed[rows, actions]  # (models, envs)
    return actions, {model_id: float(s) for model_id, s in zip(logits_by_model, shares.sum(axis=-1))}


def aggregate(msg, memory, contribution_memory, nr_of_models, envs):
    """Collect one LOGITS per model; when all have answered, send the ACTION (one per environment)."""
    model_id = sc.get_str(msg, sc.COMPONENT_ID)
    logits = sc.as_batch(sc.require(msg, sc.LOGITS), sc.LOGITS, envs)
    deterministic = sc.get_bool(msg, sc.DETERMINISTIC)
    root_id = msg.get(sc.ROOT_ID)
    if root_id != memory.root_id:
        if root_id in memory.retired_roots:
            return None  # a late answer from an abandoned run
        if memory.root_id is not None:
            memory.retired_roots.append(memory.root_id)
        memory.root_id, memory.logits = root_id, {}
    if memory.logits and logits.shape != next(iter(memory.logits.values())).shape:
        raise sc.BadMessage(f"LOGITS of {model_id} has shape {logits.shape}, the others have "
                            f"{next(iter(memory.logits.values())).shape}")
    memory.logits[model_id] = logits
    if len(memory.logits) < nr_of_models:
        return None
    actions, contribution = get_action(memory.logits, deterministic)
    for k, share in contribution.items():
        contribution_memory[k] = contribution_memory.get(k, 0.0) + share
    memory.logits = {}
    return {sc.ACTION: actions.tolist()}


def send_contribution(msg, contribution_memory):
    """GET from the evolution: hand over the tally and start a new one."""
    if msg.get(sc.CMD) != sc.GET:
        return None
    contribution = dict(contribution_memory)
    contribution_memory.clear()
    return {sc.CONTRIBUTION: contribution}


if __name__ == "__main__":
    config = sc.setup_component(COMPONENT_NAME)
    client = sc.SwarmClient(COMPONENT_NAME, config, memory=StepLogits(), contribution_memory={},
                            nr_of_models=config.models, envs=config.envs)
    client.add_eventHandler(aggregate, sc.CUSTOM, responseRooms=sc.ROOM_ACTION,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_LOGITS))
    client.add_eventHandler(send_contribution, sc.CUSTOM, responseRooms=sc.ROOM_EVOLUTION,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_EVOLUTION))
    client.listen()

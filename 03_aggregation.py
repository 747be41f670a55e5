"""03_aggregation.py: many models' logits in, one action out.

Every model proposes a distribution over the actions. The aggregation adds up the models'
probabilities, takes the argmax (deterministic) or samples from the summed distribution, and
credits each model with its share of the chosen action's summed probability: its contribution,
which the evolution uses as fitness. A step whose last logits do not come within
SWARM_MODEL_TIMEOUT seconds is given up, and the control is told which models are missing.
"""
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from swergio import Trigger

import swarm_common as sc

COMPONENT_NAME = "aggregation"
log = logging.getLogger(COMPONENT_NAME)
rng = np.random.default_rng()


@dataclass
class StepLogits:
    """The logits received so far for the current step of the current run (by ROOT_ID)."""
    root_id: str | None = None
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    first_at: float = 0.0  # when the step's first logits arrived (time.monotonic)
    retired_roots: deque = field(default_factory=lambda: deque(maxlen=1000))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def get_action(logits_by_model: dict[str, np.ndarray], deterministic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One action per environment from the summed probabilities, and each model's share of each
    chosen action: (models, envs), the shares of one environment sum to 1.

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
    return actions, all_probs[:, rows, actions] / summed[rows, actions]


@dataclass
class ReturnCredit:
    """The option SWARM_FITNESS=return: a fitness that credits returns instead of agreement.

    The tutorial's contribution pays a model for agreeing with the action taken, whatever came of
    it; models trained on the same steps agree alike, so every contribution is about 1/N. Here a
    model earns, for each finished episode, how much more than an equal share (1/N) it pushed
    for the episode's actions, times how much better than usual the episode went (its return
    minus the mean return of the last 100 episodes): pushing for the actions of long episodes
    pays, pushing for those of short ones costs.
    """
    excess: np.ndarray | None = None  # (models, envs): this episode's sum of (share - 1/N), per copy
    returns: np.ndarray | None = None  # (envs,): this episode's return so far, per copy
    finished: deque = field(default_factory=lambda: deque(maxlen=100))  # returns of the latest episodes

    def add_step(self, shares: np.ndarray) -> None:
        if self.excess is None or self.excess.shape != shares.shape:
            self.excess, self.returns = np.zeros_like(shares), np.zeros(shares.shape[1])
        self.excess += shares - 1.0 / len(shares)

    def add_outcome(self, rewards: np.ndarray, dones: np.ndarray, model_ids: list[str],
                    fitness: dict[str, float]) -> None:
        """The step's rewards and DONE flags (echoed by the models with their next logits)."""
        if self.excess is None:
            return  # a run's first observation: no step of ours yet
        self.returns += rewards
        for copy in np.flatnonzero(dones):
            baseline = np.mean(self.finished) if self.finished else self.returns[copy]
            self.finished.append(float(self.returns[copy]))
            for model_id, excess in zip(model_ids, self.excess[:, copy]):
                fitness[model_id] = fitness.get(model_id, 0.0) + float(excess * (self.returns[copy] - baseline))
            self.excess[:, copy], self.returns[copy] = 0.0, 0.0


def aggregate(msg, memory, contribution_memory, models, envs, return_credit=None):
    """Collect one LOGITS per model; when all have answered, send the ACTION (one per environment).

    The fitness: each model's contribution (the tutorial's), or with `return_credit` (the option
    SWARM_FITNESS=return) its credit for the returns of the episodes it pushed for.
    """
    model_id = sc.get_str(msg, sc.COMPONENT_ID)
    logits = sc.as_batch(sc.require(msg, sc.LOGITS), sc.LOGITS, envs)
    deterministic = sc.get_bool(msg, sc.DETERMINISTIC)
    outcome = None  # what came of the previous step, echoed by the model (SWARM_FITNESS=return)
    if return_credit is not None and sc.DONE in msg:  # checked now: a bad echo must not stall the step
        outcome = sc.get_per_env(msg, sc.REWARD, envs, float), sc.get_per_env(msg, sc.DONE, envs, bool)
    models.admit(model_id)
    root_id = msg.get(sc.ROOT_ID)
    if root_id != memory.root_id:
        if root_id in memory.retired_roots:
            return None  # a late answer from an abandoned run
        if memory.root_id is not None:
            memory.retired_roots.append(memory.root_id)
        memory.root_id, memory.logits = root_id, {}
        if return_credit is not None:
            return_credit.excess = None  # episodes cut off by the end of a run earn nothing
    if memory.logits and logits.shape != next(iter(memory.logits.values())).shape:
        raise sc.BadMessage(f"LOGITS of {model_id} has shape {logits.shape}, the others have "
                            f"{next(iter(memory.logits.values())).shape}")
    if not memory.logits:
        memory.first_at = time.monotonic()
    memory.logits[model_id] = logits
    if len(memory.logits) < models.expected:
        return None
    actions, shares = get_action(memory.logits, deterministic)
    if not deterministic:  # an evaluation shows what the swarm can do; it earns no one fitness
        if return_credit is None:
            for model_id, share in zip(memory.logits, shares.sum(axis=-1)):
                contribution_memory[model_id] = contribution_memory.get(model_id, 0.0) + float(share)
        else:
            if outcome is not None:
                return_credit.add_outcome(*outcome, list(memory.logits), contribution_memory)
            return_credit.add_step(shares)
    memory.logits = {}
    return {sc.ACTION: actions.tolist()}


def check_missing_models(memory, models, model_timeout):
    """Every half second: a step that has waited `model_timeout` seconds for the last models'
    logits is given up. The control hears which models are missing (an ERROR for its run, which
    stops the swarm); a late answer for the abandoned run is ignored."""
    if not memory.logits or time.monotonic() - memory.first_at < model_timeout:
        return None
    missing = sorted(models.known - set(memory.logits))
    error = (f"no LOGITS within {model_timeout:g} s from {len(missing) or models.expected - len(memory.logits)} "
             f"model(s): {', '.join(missing) or 'not yet known'}; {len(memory.logits)} of {models.expected} answered")
    log.error("%s (run %s)", error, memory.root_id)
    report = {sc.STATUS: sc.ERROR, sc.ERROR: error, sc.MISSING: missing, sc.ROOT_ID: memory.root_id}
    memory.retired_roots.append(memory.root_id)
    memory.root_id, memory.logits = None, {}
    return report


def register_model(msg, models):
    """A model's answer to a readiness ping: now we know its id."""
    models.register_pong(msg)


def send_contribution(msg, contribution_memory):
    """GET from the evolution: hand over the tally and start a new one."""
    if msg.get(sc.CMD) != sc.GET:
        return None
    contribution = dict(contribution_memory)
    contribution_memory.clear()
    return {sc.CONTRIBUTION: contribution}


if __name__ == "__main__":
    config = sc.setup_component(COMPONENT_NAME)
    rng = np.random.default_rng(config.component_seed(COMPONENT_NAME))  # the sampled actions
    client = sc.SwarmClient(COMPONENT_NAME, config, memory=StepLogits(), contribution_memory={},
                            models=sc.ModelRegistry(config.models), envs=config.envs,
                            model_timeout=config.model_timeout,
                            return_credit=ReturnCredit() if config.fitness == "return" else None)
    client.add_eventHandler(aggregate, sc.CUSTOM, responseRooms=sc.ROOM_ACTION,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_LOGITS))
    client.add_eventHandler(register_model, sc.CUSTOM, trigger=Trigger(sc.CUSTOM, sc.ROOM_PING))
    client.add_timer(check_missing_models, 0.5, responseRooms=sc.ROOM_CONTROL)
    client.add_eventHandler(send_contribution, sc.CUSTOM, responseRooms=sc.ROOM_EVOLUTION,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_EVOLUTION))
    client.listen()

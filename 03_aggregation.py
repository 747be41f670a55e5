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

from swarm.checks import BadMessage, as_batch, get_bool, get_per_env, get_str, require
from swarm.client import Handlers, SwarmClient
from swarm.component import setup_component
from swarm.fitness import LeadCredit, ReturnCredit
from swarm.protocol import (ACTION, CMD, COMPONENT_ID, CONTRIBUTION, DETERMINISTIC, DONE, GET, LOGITS, REWARD,
                            ROOM_ACTION, ROOM_CONTROL, ROOM_EVOLUTION, ROOM_LOGITS, ROOM_PING, ROOT_ID, SET, WEIGHTS,
                            ModelRegistry, error_report, register_model)
from swarm.settings import SwarmSettings

COMPONENT_NAME = "aggregation"
log = logging.getLogger(COMPONENT_NAME)
handlers = Handlers()


@dataclass
class StepLogits:
    """The logits received so far for the current step of the current run (by ROOT_ID)."""
    root_id: str | None = None
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    first_at: float = 0.0  # when the step's first logits arrived (time.monotonic)
    retired_roots: deque = field(default_factory=lambda: deque(maxlen=1000))

    def start_run(self, root_id: str | None) -> bool:
        """A new run's first logits: retire the current run. False for a run already retired."""
        if root_id in self.retired_roots:
            return False
        if self.root_id is not None:
            self.retired_roots.append(self.root_id)
        self.root_id, self.logits = root_id, {}
        return True


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per row of `probs` (rows sum to 1), every row at once (inverse CDF)."""
    cumulative = np.cumsum(probs, axis=-1)
    draws = rng.random((len(probs), 1))
    return np.minimum((cumulative < draws).sum(axis=-1), probs.shape[-1] - 1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def decide(all_logits: np.ndarray, vote: str = "probabilities", summed: np.ndarray | None = None) -> np.ndarray:
    """The swarm's deterministic action for each environment from every model's logits,
    (models, envs, actions), by SWARM_VOTE:
    - `probabilities`: the argmax of the summed probabilities (the tutorial's);
    - `majority`: the action most models would choose alone (a tie goes to the summed probabilities);
    - `log-probabilities`: the argmax of the summed log-probabilities (a product of experts).
    A few confident models can outweigh many that agree in a sum of probabilities; a majority
    follows the many (docs/learning.md measures the three). `summed`: the summed probabilities,
    if the caller has them already."""
    if vote == "log-probabilities":
        return log_softmax(all_logits).sum(axis=0).argmax(axis=-1)
    if summed is None:
        summed = softmax(all_logits).sum(axis=0)  # (envs, actions)
    if vote == "majority":
        votes = np.eye(all_logits.shape[-1])[all_logits.argmax(axis=-1)].sum(axis=0)
        return (votes + summed / (len(all_logits) + 1)).argmax(axis=-1)  # the sum only breaks ties
    return summed.argmax(axis=-1)


def get_action(logits_by_model: dict[str, np.ndarray], rng: np.random.Generator,
               deterministic: bool = False, vote: str = "probabilities") -> tuple[np.ndarray, np.ndarray]:
    """One action per environment, and each model's share of each chosen action: (models, envs),
    the shares of one environment sum to 1. Sampled from the summed probabilities, or (deterministic)
    chosen by `vote` (see `decide`).

    `logits_by_model` maps a model to its logits, one row per environment: (envs, actions).
    """
    all_logits = np.stack(list(logits_by_model.values()))  # (models, envs, actions)
    all_probs = softmax(all_logits)
    summed = all_probs.sum(axis=0)  # (envs, actions)
    if deterministic:
        actions = decide(all_logits, vote, summed)
    else:
        actions = sample(summed / summed.sum(axis=-1, keepdims=True), rng)
    rows = np.arange(len(summed))
    return actions, all_probs[:, rows, actions] / summed[rows, actions]


@handlers.on(ROOM_LOGITS, reply_to=ROOM_ACTION)
def aggregate(msg, memory, contribution_memory, models, envs, rng, return_credit=None, lead_credit=None,
              vote="probabilities"):
    """Collect one LOGITS per model; when all have answered, send the ACTION (one per environment).

    The fitness: each model's contribution (the tutorial's); with `lead_credit` (SWARM_FITNESS=lead)
    the returns of the training episodes it led; with `return_credit` (SWARM_FITNESS=return) its
    credit for the returns of the episodes it pushed for.
    """
    model_id = get_str(msg, COMPONENT_ID)
    logits = as_batch(require(msg, LOGITS), LOGITS, envs)
    deterministic = get_bool(msg, DETERMINISTIC)
    outcome = None  # what came of the previous step, echoed by the model (SWARM_FITNESS=return)
    if (return_credit is not None or lead_credit is not None) and DONE in msg:  # a bad echo must not stall the step
        outcome = get_per_env(msg, REWARD, envs, float), get_per_env(msg, DONE, envs, bool)
    models.admit(model_id)
    root_id = msg.get(ROOT_ID)
    if root_id != memory.root_id:
        if not memory.start_run(root_id):
            return None  # a late answer from an abandoned run
        for credit in (return_credit, lead_credit):
            if credit is not None:
                credit.start_run()  # episodes cut off by the end of a run earn nothing
    if memory.logits and logits.shape != next(iter(memory.logits.values())).shape:
        raise BadMessage(f"LOGITS of {model_id} has shape {logits.shape}, the others have "
                         f"{next(iter(memory.logits.values())).shape}")
    if not memory.logits:
        memory.first_at = time.monotonic()
    memory.logits[model_id] = logits
    if len(memory.logits) < models.expected:
        return None
    # In the order of the model ids, not of arrival: the same sums, shares and draws every run.
    by_model = dict(sorted(memory.logits.items()))
    memory.logits = {}
    if lead_credit is not None and not deterministic:  # each copy follows the member leading its episode
        if outcome is not None:
            lead_credit.add_outcome(*outcome, list(by_model))
        return {ACTION: sample(lead_credit.leading(softmax(np.stack(list(by_model.values())))), rng).tolist()}
    actions, shares = get_action(by_model, rng, deterministic, vote)
    if not deterministic:  # an evaluation shows what the swarm can do; it earns no one fitness
        if return_credit is None:
            for model_id, share in zip(by_model, shares.sum(axis=-1)):
                contribution_memory[model_id] = contribution_memory.get(model_id, 0.0) + float(share)
        else:
            if outcome is not None:
                return_credit.add_outcome(*outcome, list(by_model), contribution_memory)
            return_credit.add_step(shares)
    return {ACTION: actions.tolist()}


# A model's answer to the control's readiness ping tells us its id.
handlers.on(ROOM_PING)(register_model)


@handlers.every(0.5, reply_to=ROOM_CONTROL)
def check_missing_models(memory, models, model_timeout):
    """A step that has waited `model_timeout` seconds for the last models' logits is given up.
    The control hears which models are missing (an ERROR for its run, which stops the swarm); a
    late answer for the abandoned run is ignored."""
    if not memory.logits or time.monotonic() - memory.first_at < model_timeout:
        return None
    missing = sorted(models.known - set(memory.logits))
    error = (f"no LOGITS within {model_timeout:g} s from {len(missing) or models.expected - len(memory.logits)} "
             f"model(s): {', '.join(missing) or 'not yet known'}; {len(memory.logits)} of {models.expected} answered")
    log.error("%s (run %s)", error, memory.root_id)
    report = error_report(error, missing, memory.root_id)
    memory.retired_roots.append(memory.root_id)
    memory.root_id, memory.logits = None, {}
    return report


@handlers.on(ROOM_EVOLUTION, reply_to=ROOM_EVOLUTION)
def send_contribution(msg, contribution_memory, lead_credit=None):
    """GET from the evolution: hand over the fitness. The tutorial's contribution is a tally that
    starts anew; the led returns are the members' latest, whenever they were."""
    if msg.get(CMD) != GET:
        return None
    if lead_credit is not None:
        return {CONTRIBUTION: lead_credit.fitness()}
    contribution = dict(contribution_memory)
    contribution_memory.clear()
    return {CONTRIBUTION: contribution}


@handlers.on(ROOM_EVOLUTION)
def forget_replaced(msg, lead_credit=None):
    """SET: the members that get new weights start a new record of led returns."""
    if lead_credit is not None and msg.get(CMD) == SET and isinstance(msg.get(WEIGHTS), dict):
        lead_credit.forget(msg[WEIGHTS])


def arguments(settings: SwarmSettings, name: str = COMPONENT_NAME) -> dict:
    """The aggregation's state, which its handlers receive by name."""
    return dict(memory=StepLogits(), contribution_memory={}, models=ModelRegistry(settings.models),
                envs=settings.envs, rng=np.random.default_rng(settings.component_seed(name)),  # the sampled actions
                model_timeout=settings.model_timeout,
                return_credit=ReturnCredit() if settings.fitness == "return" else None,
                lead_credit=LeadCredit() if settings.fitness == "lead" else None, vote=settings.vote)


def main() -> None:
    settings = setup_component(COMPONENT_NAME)
    handlers.wire(SwarmClient(COMPONENT_NAME, settings, **arguments(settings))).listen()


if __name__ == "__main__":
    main()

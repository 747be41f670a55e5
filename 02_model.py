"""02_model.py: the swarm's A2C policies (SWARM_MODELS of them).

Each model answers every observation with its action logits; the aggregation turns all models'
logits into one action. Every reward that comes back is stored in the model's rollout, and when
the rollout is full the model takes one A2C step on it. The evolution can read (GET) and replace
(SET) a model's weights as one flat vector.

A process serves SWARM_MODELS_PER_PROCESS models (1, the tutorial's: one process per model),
computed together by the learner (swarm_rl/learner.py); each answers as its own model.
"""
import gc
import secrets

import numpy as np
import torch

from swarm_rl.checks import BadMessage, unbatch
from swarm_rl.client import Handlers, SwarmClient
from swarm_rl.component import (NAME_VARIABLE, component_name, hosted_names, new_component_id, setup_component,
                                yield_to_the_critical_path)
from swarm_rl.environments import spaces
from swarm_rl.learner import A2CConfig, Members, make_policy
from swarm_rl.protocol import (CMD, COMPONENT_ID, DETERMINISTIC, DONE, ENT_COEF, GAMMA, GET, HYPERPARAMETERS,
                               LEARNING_RATE, LOGITS, OPTIMIZER, REWARD, ROOM_EVOLUTION, ROOM_LOGITS, ROOM_OBSERVATION,
                               SET, STATE, WEIGHTS, read_observation, read_set)
from swarm_rl.settings import SwarmSettings

COMPONENT_NAME = "model"
NET_ARCH = [16, 16]  # the tutorial's: two 16-unit layers for the policy and for the value
handlers = Handlers()


def initial_hyperparameters(settings: SwarmSettings, seed: int | None) -> dict[str, float]:
    """SWARM_LEARNING_RATE and A2C's entropy coefficient (0) and discount (0.99). With
    population-based training each member starts with its own learning rate, log-uniformly
    between half and twice the setting, so the population differs in more than its initial
    weights; with SWARM_EVOLVED=all also its own entropy coefficient (1e-4 to 1e-2) and discount
    (1 - gamma from 0.005 to 0.05), log-uniformly."""
    config = A2CConfig()
    values = {LEARNING_RATE: settings.learning_rate, ENT_COEF: config.ent_coef, GAMMA: config.gamma}
    if settings.operators != "pbt":
        return values
    rng = np.random.default_rng(seed)
    values[LEARNING_RATE] = settings.learning_rate * 2.0 ** rng.uniform(-1.0, 1.0)
    if settings.evolved == "all":
        values[ENT_COEF] = 10.0 ** rng.uniform(-4.0, -2.0)
        values[GAMMA] = 1.0 - 10.0 ** rng.uniform(np.log10(0.005), np.log10(0.05))
    return values


def new_state(settings: SwarmSettings, names: list[str]) -> Members:
    """The models `names`, each with its own initial weights and hyperparameters from its seed."""
    observation_space, action_space = spaces(settings.env_id)
    ids, policies, hyperparameters = [], [], []
    for name in names:
        seed = settings.component_seed(name)
        torch.manual_seed(secrets.randbits(63) if seed is None else seed)
        ids.append(new_component_id(name, seed))
        policies.append(make_policy(observation_space, action_space, NET_ARCH))
        hyperparameters.append(initial_hyperparameters(settings, seed))
    config = A2CConfig(normalize_advantage=settings.normalize_advantage, adam_eps=settings.adam_eps,
                       vtrace=settings.correction == "vtrace")
    members = Members(policies, ids, [h[LEARNING_RATE] for h in hyperparameters], settings.envs, config)
    for j, values in enumerate(hyperparameters):
        members.set_hyperparameters(j, values)
    return members


@handlers.on(ROOM_OBSERVATION, reply_to=ROOM_LOGITS, join_reply_room=False)
def forward(msg, state: Members):
    """Observation(s) in, one LOGITS message per model out. With SWARM_ENVS copies every array has
    a row per copy. A training step also carries what came of the last action, for the fitness."""
    seen = read_observation(msg, state.envs, state.width, state.n_actions)
    logits = state.step(seen)
    outcome = {REWARD: msg[REWARD], DONE: msg[DONE]} if seen.is_step and not seen.deterministic else {}
    return [{LOGITS: unbatch(mine), COMPONENT_ID: model_id, DETERMINISTIC: seen.deterministic, **outcome}
            for model_id, mine in zip(state.ids, logits)]


@handlers.on(ROOM_EVOLUTION, reply_to=ROOM_EVOLUTION)
def send_weights(msg, state: Members):
    """GET: every model's weight vector and hyperparameters, and training paused until the SET.
    STATE (for a checkpoint): the same with Adam's state; training goes on."""
    if msg.get(CMD) not in (GET, STATE):
        return None
    if msg[CMD] == GET:
        state.training_enabled[:] = False
    return [{WEIGHTS: state.vector(j), COMPONENT_ID: model_id, HYPERPARAMETERS: state.hyperparameters(j),
             **({OPTIMIZER: state.optimizer_state(j)} if msg[CMD] == STATE else {})}
            for j, model_id in enumerate(state.ids)]


@handlers.on(ROOM_EVOLUTION, reply_to=ROOM_EVOLUTION)
def set_weights(msg, state: Members):
    """SET: each model takes its own part (weights, hyperparameters, Adam state), checked first, and
    resumes training. A model whose part is bad changes nothing and stays paused; one the SET
    does not name stays as it is."""
    if msg.get(CMD) != SET:
        return None
    refused = []
    for j, model_id in enumerate(state.ids):
        try:
            new = read_set(msg, model_id, state.size)
        except BadMessage as error:
            refused.append(f"{model_id}: {error}")
            continue
        state.load(j, new)
        state.training_enabled[j] = True
    if refused:
        raise BadMessage("; ".join(refused))
    return None


def main(name: str | None = None) -> None:
    """Connect and serve as model `name` (default: the launcher's name for this process), or with
    SWARM_MODELS_PER_PROCESS=k as k models from that name on (model10 hosting 10: model10-model19)."""
    gc.freeze()  # the libraries' objects live forever: later collections need not scan them
    yield_to_the_critical_path()  # the models share two cores with the rest of the swarm
    name = name or component_name("")
    # Started by hand, a model needs a name of its own: its seed, its ids and its log file follow from it.
    settings = setup_component(name or COMPONENT_NAME, problems=[] if name else [
        f"{NAME_VARIABLE} is not set: a model started by hand needs a name of its own (model0, model1, ...), "
        "which gives it its seed, its ids and its log file"], description=__doc__)
    torch.set_num_threads(1)
    state = new_state(settings, hosted_names(name, settings.models_per_process))
    handlers.wire(SwarmClient(COMPONENT_NAME, settings, state=state, member_ids=state.ids)).listen()


if __name__ == "__main__":
    main()

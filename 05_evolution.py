"""05_evolution.py: evolution of the models' weight vectors.

On EVOLUTION from the control it asks every model for its weights and the aggregation for the
models' fitness (GET), makes a new population, sends the models their new vectors (SET), and
tells the control EVO_DONE. Two sets of operators (SWARM_OPERATORS):
- `genetic`, the tutorial's: deap's tournaments of 3, two-point crossover and Gaussian mutation
  over the whole population;
- `pbt`, population-based training's exploit and explore: the worst quarter copy the whole vector
  of a member of the best quarter, and its hyperparameters, those SWARM_EVOLVED names multiplied
  by 0.8 or 1.2.

Every request starts from fresh data and gives exactly one evolution and one EVO_DONE, or, when
answers are missing after SWARM_MODEL_TIMEOUT seconds, an ERROR naming who did not answer.
"""
import logging
import random
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from deap import algorithms, base, creator, tools

from swarm_rl.checks import BadMessage, as_vector, get_bool, get_float, get_str, require
from swarm_rl.client import Handlers, Reply, SwarmClient
from swarm_rl.component import setup_component
from swarm_rl.fitness import fitness_spread
from swarm_rl.protocol import (CMD, COMPONENT_ID, CONTRIBUTION, COPIED, ENT_COEF, EVOLUTION, EVO_DONE, FITNESS,
                               FITNESS_SPREAD, GAMMA, GET,
                               HYPERPARAMETERS, LEARNING_RATE, ModelRegistry, ROOM_CONTROL, ROOM_EVOLUTION, ROOM_PING,
                               ROOT_ID, SET, STATUS, WEIGHTS, error_report, read_hyperparameters, register_model)
from swarm_rl.settings import SwarmSettings

COMPONENT_NAME = "evolution"
log = logging.getLogger(COMPONENT_NAME)
handlers = Handlers()

# The tutorial's genetic algorithm: tournaments of 3, two-point crossover, Gaussian mutation.
CROSSOVER_PROB, MUTATION_PROB = 0.5, 0.01
if not hasattr(creator, "Individual"):  # deap warns when a second import creates them again
    creator.create("FitnessMax", base.Fitness, weights=(1.0,))
    creator.create("Individual", list, fitness=creator.FitnessMax)
toolbox = base.Toolbox()
toolbox.register("select", tools.selTournament, tournsize=3)
toolbox.register("mate", tools.cxTwoPoint)
toolbox.register("mutate", tools.mutGaussian, mu=0.0, sigma=1.0, indpb=0.01)


def evolve(weights: dict[str, np.ndarray], fitness: dict[str, float]) -> dict[str, list[float]]:
    """One generation: the models' vectors are the population, ranked by their fitness.

    Offspring i goes to the i-th model (in a fixed order); the genome length is whatever the
    models sent.
    """
    model_ids = sorted(weights)
    population = []
    for model_id in model_ids:
        individual = creator.Individual(weights[model_id].tolist())
        individual.fitness.values = (fitness.get(model_id, 0.0),)
        population.append(individual)
    offspring = toolbox.select(population, len(population))
    offspring = algorithms.varAnd(offspring, toolbox, cxpb=CROSSOVER_PROB, mutpb=MUTATION_PROB)
    return {model_id: list(child) for model_id, child in zip(model_ids, offspring)}


# Population-based training (Jaderberg et al. 2017, arXiv 1711.09846): truncation selection, whole
# vectors copied (no crossover of networks whose hidden units do not line up), and the winner's
# hyperparameters perturbed, each within its bounds. The discount is perturbed as its horizon, 1 - gamma.
QUARTER = 0.25
PERTURBATIONS = (0.8, 1.2)
BOUNDS = {LEARNING_RATE: (1e-4, 1e-2), ENT_COEF: (1e-5, 0.05), GAMMA: (0.9, 0.999)}
EVOLVED = {"learning-rate": (LEARNING_RATE,), "all": (LEARNING_RATE, ENT_COEF, GAMMA)}  # SWARM_EVOLVED


def perturb(key: str, value: float, rng: random.Random) -> float:
    """`value` times 0.8 or 1.2 (a discount: its 1 - gamma), kept within BOUNDS[key]."""
    factor = rng.choice(PERTURBATIONS)
    new = 1.0 - (1.0 - value) * factor if key == GAMMA else value * factor
    return float(np.clip(new, *BOUNDS[key]))


def exploit_and_explore(members: list[str], fitness: dict[str, float], hyperparameters: dict[str, dict[str, float]],
                        rng: random.Random, evolved: tuple[str, ...] = (LEARNING_RATE,)) -> dict[str, tuple[str, dict]]:
    """Who changes, and how: each of the worst quarter (of the members with a fitness) takes a
    random member of the best quarter, whose whole vector it copies, and that member's
    hyperparameters with each of `evolved` times 0.8 or 1.2: {loser: (winner, new hyperparameters)}.
    Nothing changes while fewer than two quarters have a fitness.

    The copy starts with fresh Adam moments. Copying the winner's moments as well made it a
    clone that, learning from the same steps, stayed one, and the population lost the variety
    selection needs: it solved later (docs/learning.md)."""
    ranked = sorted((model_id for model_id in members if model_id in fitness), key=lambda m: (fitness[m], m))
    quarter = int(len(members) * QUARTER)
    if quarter == 0 or len(ranked) < 2 * quarter:
        return {}
    choices = {}
    for loser in ranked[:quarter]:
        winner = rng.choice(ranked[-quarter:])
        new = dict(hyperparameters[winner])
        for key in evolved:
            new[key] = perturb(key, new[key], rng)
        choices[loser] = (winner, new)
    return choices


@dataclass
class Evolution:
    """One evolution at a time, over the answers to its own GET (matched by ROOT_ID)."""
    nr_of_models: int
    operators: str  # SWARM_OPERATORS: "genetic" (the tutorial's) or "pbt"
    model_timeout: float  # SWARM_MODEL_TIMEOUT: seconds to wait for the answers to a GET
    evolved: tuple[str, ...] = (LEARNING_RATE,)  # the hyperparameters PBT perturbs (SWARM_EVOLVED)
    models: ModelRegistry | None = None  # whose weights count (default: the first nr_of_models)
    root_id: str | None = None  # of our GET: the answers carry it back
    request_id: str | None = None  # of the control's EVOLUTION: EVO_DONE carries it back
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    hyperparameters: dict[str, dict[str, float]] = field(default_factory=dict)
    fitness: dict[str, float] | None = None  # by model id, from the aggregation (the tutorial's key: CONTRIBUTION)
    started_at: float = 0.0  # when our GET went out (time.monotonic)

    def __post_init__(self) -> None:
        self.models = self.models or ModelRegistry(self.nr_of_models)


@handlers.on(ROOM_CONTROL, reply_to=ROOM_EVOLUTION)
def start_evolution(msg: dict, state: Evolution) -> dict | None:
    """EVOLUTION from the control: forget everything and ask for fresh weights and fitness."""
    if EVOLUTION not in msg or not get_bool(msg, EVOLUTION):
        return None
    state.root_id, state.request_id = uuid.uuid4().hex, msg.get(ROOT_ID)
    state.weights, state.hyperparameters, state.fitness = {}, {}, None
    state.started_at = time.monotonic()
    return {CMD: GET, ROOT_ID: state.root_id}


@handlers.on(ROOM_EVOLUTION, reply_to=ROOM_EVOLUTION)
def collect(msg: dict, state: Evolution) -> list[dict | Reply] | None:
    """Gather the answers to our GET; when all are in, evolve, send the models their new weights
    (SET) and then the control EVO_DONE."""
    if state.root_id is None or msg.get(ROOT_ID) != state.root_id or CMD in msg:
        return None  # not an answer to the evolution in progress
    if WEIGHTS in msg:
        model_id = get_str(msg, COMPONENT_ID)
        state.models.admit(model_id)
        known_length = len(next(iter(state.weights.values()))) if state.weights else None
        weights = as_vector(msg[WEIGHTS], f"{WEIGHTS} of {model_id}", known_length)
        if state.operators == "pbt":  # checked before anything is kept: a bad answer changes nothing
            mine = read_hyperparameters(require(msg, HYPERPARAMETERS), f"{HYPERPARAMETERS} of {model_id}")
            if missing := [key for key in state.evolved if key not in mine]:
                raise BadMessage(f"{HYPERPARAMETERS} of {model_id} lacks {', '.join(missing)}")
            state.hyperparameters[model_id] = mine
        state.weights[model_id] = weights
    elif CONTRIBUTION in msg:
        contribution = require(msg, CONTRIBUTION)
        if not isinstance(contribution, dict):
            raise BadMessage("CONTRIBUTION must map model ids to numbers")
        state.fitness = {k: get_float(contribution, k) for k in contribution}
    if len(state.weights) < state.nr_of_models or state.fitness is None:
        return None
    copied: dict[str, str] = {}
    if state.operators == "pbt":
        choices = exploit_and_explore(list(state.weights), state.fitness, state.hyperparameters, random, state.evolved)
        message = {CMD: SET,
                   WEIGHTS: {loser: state.weights[winner].tolist() for loser, (winner, _) in choices.items()},
                   HYPERPARAMETERS: {loser: new for loser, (_, new) in choices.items()}}
        copied = {loser: winner for loser, (winner, _) in choices.items()}
    else:
        message = {CMD: SET, WEIGHTS: evolve(state.weights, state.fitness)}
    ranked = [model_id for model_id in state.weights if model_id in state.fitness]
    # EVO_DONE after the SET: the control's next request must find the models with their new weights.
    report = {STATUS: EVO_DONE, ROOT_ID: state.request_id or state.root_id,
              FITNESS_SPREAD: fitness_spread(state.fitness, ranked),
              FITNESS: {model_id: state.fitness[model_id] for model_id in ranked}, COPIED: copied}
    state.root_id = None  # done: late or repeated answers start nothing
    return [message, Reply(ROOM_CONTROL, report)]


@handlers.every(0.5, reply_to=ROOM_CONTROL)
def check_missing_answers(state: Evolution) -> dict | None:
    """An evolution still short of answers after `state.model_timeout` seconds is given up, and
    the control hears who did not answer (an ERROR for its EVOLUTION request)."""
    if state.root_id is None or time.monotonic() - state.started_at < state.model_timeout:
        return None
    missing = sorted(state.models.known - set(state.weights))
    silent = missing + (["aggregation (CONTRIBUTION)"] if state.fitness is None else [])
    error = (f"no answer to GET within {state.model_timeout:g} s from: {', '.join(silent) or 'models not yet known'}; "
             f"{len(state.weights)} of {state.nr_of_models} models answered")
    log.error(error)
    report = error_report(error, missing, state.request_id or state.root_id)
    state.root_id = None  # late answers start nothing
    return report


# A model's answer to the control's readiness ping tells us its id.
handlers.on(ROOM_PING)(register_model)


def new_state(settings: SwarmSettings, name: str = COMPONENT_NAME) -> Evolution:
    """The evolution's state, which its handlers receive as `state`."""
    random.seed(settings.component_seed(name))  # deap draws from Python's random
    return Evolution(settings.models, settings.operators, settings.model_timeout, EVOLVED[settings.evolved])


def main() -> None:
    settings = setup_component(COMPONENT_NAME, description=__doc__)
    handlers.wire(SwarmClient(COMPONENT_NAME, settings, state=new_state(settings))).listen()


if __name__ == "__main__":
    main()

"""05_evolution.py: a genetic algorithm over the models' weight vectors.

On EVOLUTION from the control it asks every model for its weights and the aggregation for the
models' contributions (GET), breeds a new population with deap (fitness = contribution), sends
each model its new vector (SET), and tells the control EVO_DONE. Every request starts from
fresh data and gives exactly one evolution and one EVO_DONE, or, when answers are missing after
SWARM_MODEL_TIMEOUT seconds, an ERROR naming who did not answer.
"""
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
from deap import algorithms, base, creator, tools
from swergio import Trigger

import swarm_common as sc

COMPONENT_NAME = "evolution"
log = logging.getLogger(COMPONENT_NAME)

# The tutorial's genetic algorithm: tournaments of 3, two-point crossover, Gaussian mutation.
CROSSOVER_PROB, MUTATION_PROB = 0.5, 0.01
creator.create("FitnessMax", base.Fitness, weights=(1.0,))
creator.create("Individual", list, fitness=creator.FitnessMax)
toolbox = base.Toolbox()
toolbox.register("select", tools.selTournament, tournsize=3)
toolbox.register("mate", tools.cxTwoPoint)
toolbox.register("mutate", tools.mutGaussian, mu=0.0, sigma=1.0, indpb=0.01)


def evolve(weights: dict[str, np.ndarray], contribution: dict[str, float]) -> dict[str, list[float]]:
    """One generation: the models' vectors are the population, their contributions the fitness.

    Offspring i goes to the i-th model (in a fixed order); the genome length is whatever the
    models sent.
    """
    model_ids = sorted(weights)
    population = []
    for model_id in model_ids:
        individual = creator.Individual(weights[model_id].tolist())
        individual.fitness.values = (contribution.get(model_id, 0.0),)
        population.append(individual)
    offspring = toolbox.select(population, len(population))
    offspring = algorithms.varAnd(offspring, toolbox, cxpb=CROSSOVER_PROB, mutpb=MUTATION_PROB)
    return {model_id: list(child) for model_id, child in zip(model_ids, offspring)}


def fitness_spread(contribution: dict[str, float], models: Iterable[str]) -> float:
    """(best - worst) / mean size of the models' fitness: how much there was to select on."""
    fitness = np.array([contribution.get(model_id, 0.0) for model_id in models])
    size = np.abs(fitness).mean()  # a fitness that credits returns can be negative
    return float((fitness.max() - fitness.min()) / size) if size > 0 else 0.0


@dataclass
class Evolution:
    """One evolution at a time, over the answers to its own GET (matched by ROOT_ID)."""
    nr_of_models: int
    models: sc.ModelRegistry | None = None  # whose weights count (default: the first nr_of_models)
    root_id: str | None = None  # of our GET: the answers carry it back
    request_id: str | None = None  # of the control's EVOLUTION: EVO_DONE carries it back
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    contribution: dict[str, float] | None = None
    report: dict | None = None
    started_at: float = 0.0  # when our GET went out (time.monotonic)

    def __post_init__(self) -> None:
        self.models = self.models or sc.ModelRegistry(self.nr_of_models)


def start_evolution(msg, evolution):
    """EVOLUTION from the control: forget everything and ask for fresh weights and contributions."""
    if sc.EVOLUTION not in msg or not sc.get_bool(msg, sc.EVOLUTION):
        return None
    evolution.root_id, evolution.request_id = uuid.uuid4().hex, msg.get(sc.ROOT_ID)
    evolution.weights, evolution.contribution, evolution.report = {}, None, None
    evolution.started_at = time.monotonic()
    return {sc.CMD: sc.GET, sc.ROOT_ID: evolution.root_id}


def collect(msg, evolution):
    """Gather the answers to our GET; when all are in, evolve and send the new weights (SET)."""
    if evolution.root_id is None or msg.get(sc.ROOT_ID) != evolution.root_id or sc.CMD in msg:
        return None  # not an answer to the evolution in progress
    if sc.WEIGHTS in msg:
        model_id = sc.get_str(msg, sc.COMPONENT_ID)
        evolution.models.admit(model_id)
        known_length = len(next(iter(evolution.weights.values()))) if evolution.weights else None
        evolution.weights[model_id] = sc.as_vector(msg[sc.WEIGHTS], f"{sc.WEIGHTS} of {model_id}", known_length)
    elif sc.CONTRIBUTION in msg:
        contribution = sc.require(msg, sc.CONTRIBUTION)
        if not isinstance(contribution, dict):
            raise sc.BadMessage("CONTRIBUTION must map model ids to numbers")
        evolution.contribution = {k: sc.get_float(contribution, k) for k in contribution}
    if len(evolution.weights) < evolution.nr_of_models or evolution.contribution is None:
        return None
    new_weights = evolve(evolution.weights, evolution.contribution)
    evolution.report = {sc.STATUS: sc.EVO_DONE, sc.ROOT_ID: evolution.request_id or evolution.root_id,
                        sc.FITNESS_SPREAD: fitness_spread(evolution.contribution, evolution.weights)}
    evolution.root_id = None  # done: late or repeated answers start nothing
    return {sc.CMD: sc.SET, sc.WEIGHTS: new_weights}


def check_missing_answers(evolution, model_timeout):
    """Every half second: an evolution still short of answers after `model_timeout` seconds is
    given up, and the control hears who did not answer (an ERROR for its EVOLUTION request)."""
    if evolution.root_id is None or time.monotonic() - evolution.started_at < model_timeout:
        return None
    missing = sorted(evolution.models.known - set(evolution.weights))
    silent = missing + (["aggregation (CONTRIBUTION)"] if evolution.contribution is None else [])
    error = (f"no answer to GET within {model_timeout:g} s from: {', '.join(silent) or 'models not yet known'}; "
             f"{len(evolution.weights)} of {evolution.nr_of_models} models answered")
    log.error(error)
    report = {sc.STATUS: sc.ERROR, sc.ERROR: error, sc.MISSING: missing,
              sc.ROOT_ID: evolution.request_id or evolution.root_id}
    evolution.root_id = None  # late answers start nothing
    return report


def register_model(msg, evolution):
    """A model's answer to a readiness ping: now we know its id."""
    evolution.models.register_pong(msg)


def report(msg, evolution):
    """Right after the SET has gone out: EVO_DONE to the control."""
    message, evolution.report = evolution.report, None
    return message


if __name__ == "__main__":
    config = sc.setup_component(COMPONENT_NAME)
    random.seed(config.component_seed(COMPONENT_NAME))  # deap draws from Python's random
    client = sc.SwarmClient(COMPONENT_NAME, config, evolution=Evolution(config.models),
                            model_timeout=config.model_timeout)
    client.add_eventHandler(start_evolution, sc.CUSTOM, responseRooms=sc.ROOM_EVOLUTION,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_CONTROL))
    # collect, then report: SwarmClient runs handlers in the order they are added.
    client.add_eventHandler(collect, sc.CUSTOM, responseRooms=sc.ROOM_EVOLUTION,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_EVOLUTION))
    client.add_eventHandler(report, sc.CUSTOM, responseRooms=sc.ROOM_CONTROL,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_EVOLUTION))
    client.add_eventHandler(register_model, sc.CUSTOM, trigger=Trigger(sc.CUSTOM, sc.ROOM_PING))
    client.add_timer(check_missing_answers, 0.5, responseRooms=sc.ROOM_CONTROL)
    client.listen()

"""The RL swarm's protocol: rooms, message keys, statuses, and who the models are. The tutorial's,
plus what is marked as ours (a plain swergio client ignores it); every message is DATA.CUSTOM."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from swergio import MESSAGE_TYPE

from swarm_rl.checks import BadMessage, as_batch, as_vector, get_actions, get_bool, get_float, get_per_env, require

CUSTOM = MESSAGE_TYPE.DATA.CUSTOM

# --------------------------------------------------------------------------- rooms
ROOM_CONTROL = "control"
ROOM_OBSERVATION = "observation"
ROOM_LOGITS = "logits"
ROOM_ACTION = "action"
ROOM_EVOLUTION = "evolution"
ROOM_PING = "ping"  # ours: readiness checks, so the control never sleeps and hopes

# --------------------------------------------------------------------------- keys
NR_OF_EPISODE = "NR_OF_EPISODE"
DETERMINISTIC = "DETERMINISTIC"
STATUS = "STATUS"
AVG_SCORE = "AVG_SCORE"
EVOLUTION = "EVOLUTION"
OBSERVATION = "OBSERVATION"
REWARD = "REWARD"
DONE = "DONE"
ACTION = "ACTION"
LOGITS = "LOGITS"
COMPONENT_ID = "COMPONENT_ID"
CMD = "CMD"
WEIGHTS = "WEIGHTS"
CONTRIBUTION = "CONTRIBUTION"
ROOT_ID = "ROOT_ID"  # swergio propagates it from a message to its replies: it names a run
# Additions to the tutorial's protocol; plain clients ignore them.
STEPS = "STEPS"  # in ENV_DONE/ENV_PROGRESS: environment steps of the run so far
EPISODE = "EPISODE"  # in ENV_PROGRESS: episodes finished so far
SCORE = "SCORE"  # in ENV_PROGRESS: the score of the episode that just finished
SCORES = "SCORES"  # in ENV_DONE: the scores of all the run's episodes
LENGTHS = "LENGTHS"  # in ENV_DONE: their lengths in steps, in the same order
ENDED_AT = "ENDED_AT"  # in ENV_DONE: when each ended, in seconds from the run's start
TRUNCATED = "TRUNCATED"  # with OBSERVATION, when a copy hit the time limit (500 steps)
FINAL_OBSERVATION = "FINAL_OBSERVATION"  # with TRUNCATED: where each copy was before its reset
FITNESS_SPREAD = "FITNESS_SPREAD"  # in EVO_DONE: (best - worst) / mean |fitness|; near 0: a lottery
FITNESS = "FITNESS"  # in EVO_DONE: the fitness of every member the evolution selected on, by model id
COPIED = "COPIED"  # in EVO_DONE: who copied whom, {loser: winner} (population-based training)
PING = "PING"
PONG = "PONG"
COMPONENT = "COMPONENT"
ERROR = "ERROR"  # STATUS ERROR: a component tells the control why a run cannot go on
MISSING = "MISSING"  # in an ERROR: the model ids that did not answer
HYPERPARAMETERS = "HYPERPARAMETERS"  # with WEIGHTS: a model's own ({LEARNING_RATE: x, ...}); in a SET: by model id
LEARNING_RATE = "LEARNING_RATE"
ENT_COEF = "ENT_COEF"  # A2C's entropy coefficient
GAMMA = "GAMMA"  # the discount
# What each hyperparameter may be: (lowest, highest, whether the lowest itself is allowed).
HYPERPARAMETER_RANGES = {LEARNING_RATE: (0.0, 1.0, False), ENT_COEF: (0.0, 1.0, True), GAMMA: (0.0, 1.0, False)}
BEHAVIOUR = "BEHAVIOUR"  # with ACTION: per copy, the probability the action had where it was drawn
OPTIMIZER = "OPTIMIZER"  # with WEIGHTS: a model's Adam state ({STEP, EXP_AVG, EXP_AVG_SQ}); in a SET: by model id
STEP, EXP_AVG, EXP_AVG_SQ = "STEP", "EXP_AVG", "EXP_AVG_SQ"  # Adam's step count and moments, flat as the weights

# --------------------------------------------------------------------------- statuses and commands
ENV_DONE = "ENV_DONE"
ENV_PROGRESS = "ENV_PROGRESS"
EVO_DONE = "EVO_DONE"
GET = "GET"
SET = "SET"
STATE = "STATE"  # ours: every model answers as to GET, and goes on training (a checkpoint)


def custom_message(room: str, payload: dict[str, Any], root_id: str | None = None) -> dict[str, Any]:
    """A DATA.CUSTOM message for `room`, as a plain swergio client would build it."""
    return {ROOT_ID: root_id or uuid.uuid4().hex, "ID": uuid.uuid4().hex, "TYPE": CUSTOM.id, "TO_ROOM": room,
            **payload}


def error_report(error: str, missing: list[str], root_id: str | None) -> dict[str, Any]:
    """STATUS ERROR for the control's request `root_id`: why it cannot go on, and who is missing."""
    return {STATUS: ERROR, ERROR: error, MISSING: missing, ROOT_ID: root_id}


# --------------------------------------------------------------------------- what a model reads
@dataclass
class Observed:
    """A message in `observation`, checked: one row per environment copy. A run's first
    observation has no step (reward, done, action); TRUNCATED comes with FINAL_OBSERVATION."""
    observation: np.ndarray
    deterministic: bool
    reward: np.ndarray | None = None
    done: np.ndarray | None = None
    action: np.ndarray | None = None
    truncated: np.ndarray | None = None
    final_observation: np.ndarray | None = None
    behaviour: np.ndarray | None = None  # the action's probability where it was drawn; None: unknown

    @property
    def is_step(self) -> bool:
        return self.reward is not None


def read_observation(msg: dict[str, Any], envs: int, width: int, n_actions: int) -> Observed:
    """The observation room's message for a model of `envs` copies, or a BadMessage."""
    seen = Observed(as_batch(require(msg, OBSERVATION), OBSERVATION, envs, width), get_bool(msg, DETERMINISTIC))
    if REWARD in msg:
        seen.reward = get_per_env(msg, REWARD, envs, float)
        seen.done = get_per_env(msg, DONE, envs, bool)
        seen.action = get_actions(msg, ACTION, envs, n_actions)
        if BEHAVIOUR in msg:
            seen.behaviour = get_per_env(msg, BEHAVIOUR, envs, float)
            if not ((seen.behaviour > 0) & (seen.behaviour <= 1)).all():
                raise BadMessage(f"{BEHAVIOUR} must be probabilities in (0, 1], got {msg[BEHAVIOUR]!r:.200}")
        if TRUNCATED in msg:
            seen.truncated = get_per_env(msg, TRUNCATED, envs, bool)
            seen.final_observation = as_batch(require(msg, FINAL_OBSERVATION), FINAL_OBSERVATION, envs, width)
    return seen


@dataclass
class NewState:
    """What a SET gives one model: a weight vector, hyperparameters, Adam's state (step, first and
    second moments, flat as the weights); None (or none given) where the SET leaves it as it is."""
    vector: np.ndarray | None = None
    hyperparameters: dict[str, float] = field(default_factory=dict)
    adam: tuple[float, np.ndarray, np.ndarray] | None = None


def read_set(msg: dict[str, Any], model_id: str, size: int) -> NewState:
    """Model `model_id`'s part of a SET for weight vectors of `size`, or a BadMessage (the model
    must then change nothing)."""
    all_weights, all_hyper, all_optimizers = require(msg, WEIGHTS), msg.get(HYPERPARAMETERS, {}), msg.get(OPTIMIZER, {})
    if not all(isinstance(part, dict) for part in (all_weights, all_hyper, all_optimizers)):
        raise BadMessage(f"{WEIGHTS}, {HYPERPARAMETERS} and {OPTIMIZER} must map model ids to values; weights unchanged")
    new = NewState()
    if model_id in all_weights:
        try:
            new.vector = as_vector(all_weights[model_id], f"{WEIGHTS}[{model_id}]", size)
        except BadMessage as error:
            raise BadMessage(f"{error}; weights unchanged") from None
    if model_id in all_hyper:
        new.hyperparameters = read_hyperparameters(all_hyper[model_id], f"{HYPERPARAMETERS}[{model_id}]")
    if all_optimizers.get(model_id) is not None:
        new.adam = read_optimizer_state(all_optimizers[model_id], size)
    return new


def read_hyperparameters(given: Any, what: str) -> dict[str, float]:
    """A model's hyperparameters ({LEARNING_RATE: x, ...}, at least one), each within its range; a
    BadMessage otherwise."""
    if not isinstance(given, dict) or not given or not set(given) <= set(HYPERPARAMETER_RANGES):
        raise BadMessage(f"{what} must map some of {', '.join(HYPERPARAMETER_RANGES)} to numbers; weights unchanged")
    values = {}
    for key, value in given.items():
        low, high, low_allowed = HYPERPARAMETER_RANGES[key]
        try:
            values[key] = get_float(given, key)
        except BadMessage as error:
            raise BadMessage(f"{what}: {error}; weights unchanged") from None
        if not (low <= values[key] <= high) or (values[key] == low and not low_allowed):
            raise BadMessage(f"{what}: {key} must be in {'[' if low_allowed else '('}{low:g}, {high:g}], "
                             f"got {value!r}; weights unchanged")
    return values


def read_optimizer_state(saved: Any, size: int) -> tuple[float, np.ndarray, np.ndarray]:
    """An OPTIMIZER entry as (step, first moments, second moments); a BadMessage if it does not fit."""
    if not isinstance(saved, dict):
        raise BadMessage(f"{OPTIMIZER} must map {STEP}, {EXP_AVG} and {EXP_AVG_SQ}; weights unchanged")
    try:
        step = get_float(saved, STEP)
        exp_avg, exp_avg_sq = (as_vector(require(saved, key), f"{OPTIMIZER}[{key}]", size) for key in (EXP_AVG, EXP_AVG_SQ))
    except BadMessage as error:
        raise BadMessage(f"{error}; weights unchanged") from None
    if step < 1 or (exp_avg_sq < 0).any():
        raise BadMessage(f"{OPTIMIZER} needs {STEP} >= 1 and {EXP_AVG_SQ} >= 0; weights unchanged")
    return step, exp_avg, exp_avg_sq


# --------------------------------------------------------------------------- who the models are
@dataclass
class ModelRegistry:
    """The model ids a component accepts answers from: those that answered a readiness PING, or,
    until `expected` are known, any new one. A stray or forged COMPONENT_ID is then refused."""
    expected: int
    known: set[str] = field(default_factory=set)

    def register_pong(self, msg: dict[str, Any]) -> None:
        if PONG in msg and msg.get(COMPONENT) == "model" and isinstance(msg.get(COMPONENT_ID), str):
            self.known.add(msg[COMPONENT_ID])

    def admit(self, model_id: str) -> None:
        """Accept `model_id`, or raise BadMessage for a model that is not one of ours."""
        if model_id in self.known:
            return
        if len(self.known) >= self.expected:
            raise BadMessage(f"unknown model {model_id!r}: not among the {len(self.known)} models that answered")
        self.known.add(model_id)


class KnowsModels(Protocol):
    """A component state that accepts answers from its ModelRegistry's models."""
    models: ModelRegistry


def register_model(msg: dict[str, Any], state: KnowsModels) -> None:
    """Handler for the `ping` room: a model's answer to a readiness ping tells us its id."""
    state.models.register_pong(msg)

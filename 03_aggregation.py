"""03_aggregation.py: many models' logits in, one action out.

Every model proposes a distribution over the actions. An evaluation step takes the swarm's vote
(SWARM_VOTE; the tutorial's: the argmax of the summed probabilities). A training step samples its
actions as SWARM_TRAINING_ACTIONS says (the tutorial's: from the summed probabilities), and the
fitness (SWARM_FITNESS, swarm_rl/fitness.py) is told about it; the evolution's GET gets the fitness.
A step whose last logits do not come within SWARM_MODEL_TIMEOUT seconds is given up, and the
control is told which models are missing.
"""
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from swarm_rl.checks import BadMessage, as_batch, get_bool, get_per_env, get_str, require
from swarm_rl.client import Handlers, SwarmClient
from swarm_rl.component import setup_component
from swarm_rl.fitness import Fitness, Outcome, make_fitness
from swarm_rl.protocol import (ACTION, BEHAVIOUR, CMD, COMPONENT_ID, CONTRIBUTION, DETERMINISTIC, DONE, GET, LOGITS, REWARD,
                               ROOM_ACTION, ROOM_CONTROL, ROOM_EVOLUTION, ROOM_LOGITS, ROOM_PING, ROOT_ID, SET, WEIGHTS,
                               ModelRegistry, error_report, register_model)
from swarm_rl.settings import SwarmSettings

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

    def add(self, model_id: str, logits: np.ndarray) -> None:
        """A model's logits for the step; a BadMessage if their shape is not the others'."""
        if self.logits and logits.shape != (shape := next(iter(self.logits.values())).shape):
            raise BadMessage(f"LOGITS of {model_id} has shape {logits.shape}, the others have {shape}")
        if not self.logits:
            self.first_at = time.monotonic()
        self.logits[model_id] = logits

    def take(self) -> dict[str, np.ndarray]:
        """The step's logits, in the order of the model ids, not of arrival (the same sums, shares
        and draws every run); the next step starts empty."""
        by_model, self.logits = dict(sorted(self.logits.items())), {}
        return by_model


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


def decide(all_logits: np.ndarray, vote: str = "probabilities") -> np.ndarray:
    """The swarm's deterministic action for each environment from every model's logits,
    (models, envs, actions), by SWARM_VOTE:
    - `probabilities`: the argmax of the summed probabilities (the tutorial's);
    - `majority`: the action most models would choose alone (a tie goes to the summed probabilities);
    - `log-probabilities`: the argmax of the summed log-probabilities (a product of experts).
    A few confident models can outweigh many that agree in a sum of probabilities; a majority
    follows the many (docs/learning.md measures the three)."""
    if vote == "log-probabilities":
        return log_softmax(all_logits).sum(axis=0).argmax(axis=-1)
    summed = softmax(all_logits).sum(axis=0)  # (envs, actions)
    if vote == "majority":
        votes = np.eye(all_logits.shape[-1])[all_logits.argmax(axis=-1)].sum(axis=0)
        return (votes + summed / (len(all_logits) + 1)).argmax(axis=-1)  # the sum only breaks ties
    return summed.argmax(axis=-1)


def shares_of(probs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Each model's share of each chosen action's summed probability, (models, envs), from all
    models' `probs`, (models, envs, actions): the shares of one environment sum to 1."""
    rows = np.arange(probs.shape[1])
    return probs[:, rows, actions] / probs.sum(axis=0)[rows, actions]


# --------------------------------------------------------------------------- SWARM_TRAINING_ACTIONS
class TrainingActions(Protocol):
    """How a training step's actions are chosen from all models' probabilities."""

    def start_run(self) -> None: ...

    def leaders(self, model_ids: list[str]) -> list[str | None] | None:
        """Per copy, the member whose episode in progress the fitness may credit to it (None for a
        copy whose episode no one's alone); None: no one leads."""

    def choose(self, probs: np.ndarray, rng: np.random.Generator, dones: np.ndarray | None,
               fitness: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One action per copy from `probs`, (models, envs, actions), and the probability each had
        where it was drawn (the behaviour the members' updates correct for); `dones`: which
        copies' episodes ended with the previous step (None at a run's first step); `fitness()`:
        each member's last fitness (NaN: none yet), read only where it is needed."""


class SummedActions:
    """SWARM_TRAINING_ACTIONS=summed, the tutorial's: sampled from the members' summed probabilities."""

    def start_run(self) -> None:
        pass

    def leaders(self, model_ids: list[str]) -> list[str | None] | None:
        return None

    def choose(self, probs: np.ndarray, rng: np.random.Generator, dones: np.ndarray | None,
               fitness: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        summed = probs.sum(axis=0)  # (envs, actions)
        summed = summed / summed.sum(axis=-1, keepdims=True)
        actions = sample(summed, rng)
        return actions, summed[np.arange(len(actions)), actions]


@dataclass
class LeaderActions:
    """SWARM_TRAINING_ACTIONS=leader: each training episode of each environment copy is led by one
    member, and the copy takes that member's own sampled action.

    Sampling a member and then its action is what the summed probabilities do at every step; here
    the member is drawn once per episode, so an episode's return is one member's doing (the `lead`
    fitness ranks on it). Leadership goes round the members in the order of their ids, on from run
    to run; every member still learns from every step.
    """
    leading: list[int] | None = None  # per copy: the index of the member leading its episode
    turn: int = 0  # the member that led last
    greedy_every_other: bool = False  # the leaders of copies 1, 3, 5, ... act greedily
    tournament: bool = False  # the fitter of two members drawn at random leads

    def greedy(self, envs: int) -> np.ndarray:
        return (np.arange(envs) % 2 == 1) & self.greedy_every_other

    def next_leader(self, members: int, rng: np.random.Generator, fitness: Callable[[], np.ndarray]) -> int:
        """The next member in turn; in a tournament, the fitter of two drawn at random (a member
        without a fitness loses to one with), once at least two members have one."""
        if self.tournament and np.isfinite(known := fitness()).sum() >= 2:
            first, second = rng.choice(members, size=2, replace=False)
            ranked = np.nan_to_num(known[[first, second]], nan=-np.inf)
            return int(second if ranked[1] > ranked[0] else first)
        self.turn = (self.turn + 1) % members
        return self.turn

    def start_run(self) -> None:
        self.leading = None

    def leaders(self, model_ids: list[str]) -> list[str | None] | None:
        if self.leading is None:
            return None
        credited = self.greedy(len(self.leading)) if self.greedy_every_other else np.ones(len(self.leading), dtype=bool)
        return [model_ids[index % len(model_ids)] if counts else None
                for index, counts in zip(self.leading, credited)]

    def choose(self, probs: np.ndarray, rng: np.random.Generator, dones: np.ndarray | None,
               fitness: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """A run's first step gives every copy a leader, a finished episode's copy the next member."""
        members, envs = probs.shape[:2]
        if self.leading is None:
            self.leading = [self.next_leader(members, rng, fitness) for _ in range(envs)]
        elif dones is not None:
            for copy in np.flatnonzero(dones):
                self.leading[copy] = self.next_leader(members, rng, fitness)
        led = probs[np.array(self.leading) % members, np.arange(envs)]  # (envs, actions)
        actions = sample(led, rng)
        behaviour = led[np.arange(envs), actions]
        greedy = self.greedy(envs)
        actions[greedy], behaviour[greedy] = led[greedy].argmax(axis=-1), 1.0
        return actions, behaviour


def greedy_leaders() -> LeaderActions:
    """SWARM_TRAINING_ACTIONS=greedy-leader: led as `leader`, but in every other copy the leader
    takes its most probable action. Those episodes show what a member does deterministically,
    and the `lead` fitness is the return of those alone; everyone learns from every step."""
    return LeaderActions(greedy_every_other=True)


def tournament_leaders() -> LeaderActions:
    """SWARM_TRAINING_ACTIONS=tournament-leader: led as `leader`, but each episode's leader is the
    fitter of two members drawn at random (a binary tournament on the last fitness handed to the
    evolution): the better members act more often, and everyone learns from their steps."""
    return LeaderActions(tournament=True)


TRAINING_ACTIONS: dict[str, Callable[[], TrainingActions]] = {
    "summed": SummedActions, "leader": LeaderActions, "greedy-leader": greedy_leaders,
    "tournament-leader": tournament_leaders}


@dataclass
class AggregationState:
    """What the aggregation's handlers share."""
    models: ModelRegistry
    envs: int
    rng: np.random.Generator  # draws the training actions
    model_timeout: float
    vote: str  # SWARM_VOTE: the evaluation's rule
    training_actions: TrainingActions
    fitness: Fitness
    step: StepLogits = field(default_factory=StepLogits)


def new_state(settings: SwarmSettings, name: str = COMPONENT_NAME) -> AggregationState:
    """A fresh aggregation for `settings`."""
    return AggregationState(models=ModelRegistry(settings.models), envs=settings.envs,
                            rng=np.random.default_rng(settings.component_seed(name)),
                            model_timeout=settings.model_timeout, vote=settings.vote,
                            training_actions=TRAINING_ACTIONS[settings.training_actions](),
                            fitness=make_fitness(settings.fitness))


def read_outcome(msg: dict[str, Any], envs: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The previous step's REWARD and DONE a model echoes with its logits, if it does."""
    if DONE not in msg:
        return None
    return get_per_env(msg, REWARD, envs, float), get_per_env(msg, DONE, envs, bool)


@handlers.on(ROOM_LOGITS, reply_to=ROOM_ACTION)
def aggregate(msg: dict[str, Any], state: AggregationState) -> dict[str, Any] | None:
    """Collect one LOGITS per model; when all have answered, send the ACTION (one per environment)."""
    model_id = get_str(msg, COMPONENT_ID)
    logits = as_batch(require(msg, LOGITS), LOGITS, state.envs)
    deterministic = get_bool(msg, DETERMINISTIC)
    echoed = read_outcome(msg, state.envs)  # read before anything changes: a bad echo counts for nothing
    state.models.admit(model_id)
    if msg.get(ROOT_ID) != state.step.root_id:
        if not state.step.start_run(msg.get(ROOT_ID)):
            return None  # a late answer from an abandoned run
        state.training_actions.start_run()
        state.fitness.start_run()  # episodes cut off by the end of a run earn nothing
    state.step.add(model_id, logits)
    if len(state.step.logits) < state.models.expected:
        return None
    by_model = state.step.take()
    all_logits = np.stack(list(by_model.values()))  # (models, envs, actions)
    if deterministic:  # an evaluation shows what the swarm can do; it earns no one fitness
        return {ACTION: decide(all_logits, state.vote).tolist()}
    model_ids, probs = list(by_model), softmax(all_logits)
    outcome = None if echoed is None else Outcome(*echoed, leaders=state.training_actions.leaders(model_ids))
    def fitness() -> np.ndarray:
        ranking = state.fitness.ranking()
        return np.array([ranking.get(model_id, np.nan) for model_id in model_ids])

    actions, behaviour = state.training_actions.choose(probs, state.rng, None if outcome is None else outcome.dones,
                                                       fitness)
    state.fitness.observe(model_ids, shares_of(probs, actions), outcome)
    return {ACTION: actions.tolist(), BEHAVIOUR: behaviour.tolist() if state.envs > 1 else float(behaviour[0])}


# A model's answer to the control's readiness ping tells us its id.
handlers.on(ROOM_PING)(register_model)


@handlers.every(0.5, reply_to=ROOM_CONTROL)
def check_missing_models(state: AggregationState) -> dict[str, Any] | None:
    """A step that has waited `model_timeout` seconds for the last models' logits is given up.
    The control hears which models are missing (an ERROR for its run, which stops the swarm); a
    late answer for the abandoned run is ignored."""
    step, models, model_timeout = state.step, state.models, state.model_timeout
    if not step.logits or time.monotonic() - step.first_at < model_timeout:
        return None
    missing = sorted(models.known - set(step.logits))
    error = (f"no LOGITS within {model_timeout:g} s from {len(missing) or models.expected - len(step.logits)} "
             f"model(s): {', '.join(missing) or 'not yet known'}; {len(step.logits)} of {models.expected} answered")
    log.error("%s (run %s)", error, step.root_id)
    report = error_report(error, missing, step.root_id)
    step.retired_roots.append(step.root_id)
    step.root_id, step.logits = None, {}
    return report


@handlers.on(ROOM_EVOLUTION, reply_to=ROOM_EVOLUTION)
def send_fitness(msg: dict[str, Any], state: AggregationState) -> dict[str, Any] | None:
    """GET from the evolution: hand over the fitness, under the tutorial's key."""
    if msg.get(CMD) != GET:
        return None
    return {CONTRIBUTION: state.fitness.scores()}


@handlers.on(ROOM_EVOLUTION)
def forget_replaced(msg: dict[str, Any], state: AggregationState) -> None:
    """SET: the members that get new weights start a new record."""
    if msg.get(CMD) == SET and isinstance(msg.get(WEIGHTS), dict):
        state.fitness.forget(msg[WEIGHTS])


def main() -> None:
    settings = setup_component(COMPONENT_NAME, description=__doc__)
    handlers.wire(SwarmClient(COMPONENT_NAME, settings, state=new_state(settings))).listen()


if __name__ == "__main__":
    main()

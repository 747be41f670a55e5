"""The evolution's fitness (SWARM_FITNESS), each strategy behind one interface, and the fitness
spread the evolution reports.

The aggregation tells a fitness about every training step (`observe`) and hands its `scores` to
the evolution's GET; the members that get new weights are `forget`-ten. Evaluation steps earn no
one anything: the aggregation does not show them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np


@dataclass
class Outcome:
    """What came of a training step's actions, echoed by the models with their next logits."""
    rewards: np.ndarray  # (envs,)
    dones: np.ndarray  # (envs,) bool: the copy's episode ended with that step
    # per copy, the member leading the episode that step belonged to (SWARM_TRAINING_ACTIONS=leader),
    # None for a copy whose episodes earn no one anything
    leaders: list[str | None] | None = None


class Fitness(ABC):
    """What the evolution ranks the members on. A new run cuts off the episodes in progress:
    they count for no one."""
    name: ClassVar[str]

    def start_run(self) -> None:  # noqa: B027 (optional: a fitness without episodes in progress keeps it)
        """A new run begins: forget the episodes in progress."""

    @abstractmethod
    def observe(self, model_ids: list[str], shares: np.ndarray, outcome: Outcome | None) -> None:
        """One training step: `shares` (models, envs), each model's share of each chosen action's
        summed probability, the rows in the order of `model_ids`; `outcome`, what came of the
        previous step (None at a run's first step, or from models that do not echo it)."""

    @abstractmethod
    def scores(self) -> dict[str, float]:
        """The fitness by model id, for the evolution's GET."""

    def forget(self, model_ids: Iterable[str]) -> None:  # noqa: B027 (optional, as start_run)
        """These members have new weights: what they earned before is not theirs any more."""

    def ranking(self) -> dict[str, float]:
        """The fitness of the last hand-over, read without handing anything over (the members'
        weights replaced since left out); empty before the first."""
        return {}


@dataclass
class Tally(Fitness):
    """A fitness earned step by step and handed over whole: the next round starts from zero."""
    earned: dict[str, float] = field(default_factory=dict)
    handed: dict[str, float] = field(default_factory=dict)  # the last hand-over

    def scores(self) -> dict[str, float]:
        self.handed, self.earned = self.earned, {}
        return dict(self.handed)

    def forget(self, model_ids: Iterable[str]) -> None:
        for model_id in model_ids:
            self.earned.pop(model_id, None)
            self.handed.pop(model_id, None)

    def ranking(self) -> dict[str, float]:
        return dict(self.handed)


@dataclass
class Contribution(Tally):
    """SWARM_FITNESS=contribution, the tutorial's: each model's summed share of the chosen actions.

    It pays a model for agreeing with the actions taken, whatever came of them; models trained on
    the same steps agree alike, so every contribution is about 1/N of the steps.
    """
    name: ClassVar[str] = "contribution"

    def observe(self, model_ids: list[str], shares: np.ndarray, outcome: Outcome | None) -> None:
        for model_id, share in zip(model_ids, shares.sum(axis=-1)):
            self.earned[model_id] = self.earned.get(model_id, 0.0) + float(share)


@dataclass
class ReturnCredit(Tally):
    """SWARM_FITNESS=return: credit for returns instead of agreement.

    For each finished episode a model earns how much more than an equal share (1/N) it pushed for
    the episode's actions, times how much better than usual the episode went (its return minus the
    mean return of the last 100 episodes): pushing for the actions of long episodes pays, pushing
    for those of short ones costs.
    """
    name: ClassVar[str] = "return"
    excess: np.ndarray | None = None  # (models, envs): this episode's sum of (share - 1/N), per copy
    returns: np.ndarray | None = None  # (envs,): this episode's return so far, per copy
    finished: deque = field(default_factory=lambda: deque(maxlen=100))  # returns of the latest episodes

    def start_run(self) -> None:
        self.excess = None

    def observe(self, model_ids: list[str], shares: np.ndarray, outcome: Outcome | None) -> None:
        if outcome is not None and self.excess is not None:  # a run's first step closes nothing
            self._close_episodes(model_ids, outcome)
        if self.excess is None or self.excess.shape != shares.shape:
            self.excess, self.returns = np.zeros_like(shares), np.zeros(shares.shape[1])
        self.excess += shares - 1.0 / len(shares)

    def _close_episodes(self, model_ids: list[str], outcome: Outcome) -> None:
        self.returns += outcome.rewards
        for copy in np.flatnonzero(outcome.dones):
            baseline = np.mean(self.finished) if self.finished else self.returns[copy]
            self.finished.append(float(self.returns[copy]))
            for model_id, excess in zip(model_ids, self.excess[:, copy]):
                self.earned[model_id] = self.earned.get(model_id, 0.0) + float(excess * (self.returns[copy] - baseline))
            self.excess[:, copy], self.returns[copy] = 0.0, 0.0


@dataclass
class LeadReturn(Fitness):
    """SWARM_FITNESS=lead: a member's mean return over the last `window` training episodes it led,
    once it has led that many since it last changed. It needs SWARM_TRAINING_ACTIONS=leader, which
    makes an episode's return one member's doing.

    The default window is one episode: with 20 members and 10 episodes a round each member leads
    one episode every other round, so a larger window ranks a member long after the learning has
    moved on (docs/learning.md).
    """
    name: ClassVar[str] = "lead"
    window: int = 1
    returns: np.ndarray | None = None  # per copy: the return so far of the episode in progress
    led: dict[str, deque] = field(default_factory=dict)  # model id -> returns of its latest led episodes

    def start_run(self) -> None:
        self.returns = None

    def observe(self, model_ids: list[str], shares: np.ndarray, outcome: Outcome | None) -> None:
        """A finished episode credits its leader."""
        if outcome is None or outcome.leaders is None:
            return  # a run's first step, or actions no one led
        if self.returns is None:
            self.returns = np.zeros(len(outcome.rewards))
        self.returns += outcome.rewards
        for copy in np.flatnonzero(outcome.dones):
            leader = outcome.leaders[copy]
            if leader is not None:
                self.led.setdefault(leader, deque(maxlen=self.window)).append(float(self.returns[copy]))
            self.returns[copy] = 0.0

    def scores(self) -> dict[str, float]:
        """The latest record, kept: a member is ranked on the episodes it led, whenever they were."""
        return {model_id: float(np.mean(returns)) for model_id, returns in self.led.items()
                if len(returns) == self.window}

    def forget(self, model_ids: Iterable[str]) -> None:
        for model_id in model_ids:
            self.led.pop(model_id, None)

    def ranking(self) -> dict[str, float]:
        return self.scores()


@dataclass
class AdvantageCredit(Fitness):
    """SWARM_FITNESS=advantage: how much more than the swarm's average a member would have chosen
    the actions that turned out better, over every training step of the round.

    At each step a member's probability of the action taken over the members' mean probability,
    N x its share, weighs the step's discounted return-to-go, centred on the round's mean: an
    importance-weighted estimate of the member's advantage over the swarm at the states visited.
    Every member is scored from the same steps every round, so the ranking is fresh and costs no
    extra step; steps of episodes a run cut off count for no one.
    """
    name: ClassVar[str] = "advantage"
    discount: float = 0.99  # the swarm's horizon, the same for every member whatever its own
    excess: list[list[np.ndarray]] = field(default_factory=list)  # per copy: (models,) N x share - 1, per step
    rewards: list[list[float]] = field(default_factory=list)  # per copy: the rewards of the episode so far
    weighted: np.ndarray | None = None  # (models,): the round's sum of excess x return-to-go
    excess_sum: np.ndarray | None = None  # (models,): the round's sum of excess
    returns_sum: float = 0.0
    steps: int = 0
    model_ids: list[str] = field(default_factory=list)
    latest: dict[str, float] = field(default_factory=dict)  # the last round's scores, kept until replaced

    def start_run(self) -> None:
        self.excess, self.rewards = [], []

    def observe(self, model_ids: list[str], shares: np.ndarray, outcome: Outcome | None) -> None:
        if model_ids != self.model_ids:  # the members changed: what was summed is someone else's
            self.model_ids, self.excess, self.rewards = list(model_ids), [], []
            self.weighted, self.excess_sum = np.zeros(len(model_ids)), np.zeros(len(model_ids))
            self.returns_sum, self.steps = 0.0, 0
        if outcome is not None and self.excess:
            for copy, episode in enumerate(self.rewards):
                episode.append(float(outcome.rewards[copy]))
                if outcome.dones[copy]:
                    self._close_episode(copy)
        if not self.excess:
            self.excess, self.rewards = [[] for _ in range(shares.shape[1])], [[] for _ in range(shares.shape[1])]
        for copy, step in enumerate((len(shares) * shares - 1.0).T):
            self.excess[copy].append(step)

    def _close_episode(self, copy: int) -> None:
        rewards, excess = self.rewards[copy], np.array(self.excess[copy])
        to_go, returns = 0.0, np.zeros(len(rewards))
        for t in reversed(range(len(rewards))):
            to_go = rewards[t] + self.discount * to_go
            returns[t] = to_go
        self.weighted += excess.T @ returns
        self.excess_sum += excess.sum(axis=0)
        self.returns_sum, self.steps = self.returns_sum + float(returns.sum()), self.steps + len(returns)
        self.excess[copy], self.rewards[copy] = [], []

    def scores(self) -> dict[str, float]:
        """The round's estimate per member (the last one, if no episode finished since)."""
        if self.steps:
            centred = (self.weighted - self.returns_sum / self.steps * self.excess_sum) / self.steps
            self.latest = dict(zip(self.model_ids, map(float, centred)))
            self.weighted[:], self.excess_sum[:], self.returns_sum, self.steps = 0.0, 0.0, 0.0, 0
        return dict(self.latest)

    def forget(self, model_ids: Iterable[str]) -> None:
        for model_id in model_ids:
            self.latest.pop(model_id, None)

    def ranking(self) -> dict[str, float]:
        return dict(self.latest)


FITNESSES: dict[str, type[Fitness]] = {kind.name: kind for kind in (LeadReturn, Contribution, ReturnCredit,
                                                                       AdvantageCredit)}


def make_fitness(name: str) -> Fitness:
    """The fitness SWARM_FITNESS names."""
    return FITNESSES[name]()


def fitness_spread(fitness: dict[str, float], models: Iterable[str]) -> float:
    """(best - worst) / mean size of the models' fitness: how much there was to select on."""
    values = np.array([fitness.get(model_id, 0.0) for model_id in sorted(models)])  # one order, one sum
    if len(values) < 2:
        return 0.0
    size = np.abs(values).mean()  # a fitness that credits returns can be negative
    return float((values.max() - values.min()) / size) if size > 0 else 0.0


def rank_correlation(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation of paired values; None for fewer than three pairs, or a side
    with no spread (no ranks to compare)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import spearmanr  # scipy: only where a correlation is asked for

    return float(spearmanr(x, y).statistic)


def fitness_rank_correlation(previous: dict[str, float], current: dict[str, float],
                             replaced: Iterable[str] = ()) -> float | None:
    """Spearman's correlation between two consecutive evolutions' fitness of the members whose
    weights were not replaced between them: near 0, the fitness ranks them by luck; None if fewer
    than three such members, or a fitness with no spread."""
    members = sorted(set(previous) & set(current) - set(replaced))
    return rank_correlation([previous[m] for m in members], [current[m] for m in members])

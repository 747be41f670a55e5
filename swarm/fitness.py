"""Fitness helpers: the SWARM_FITNESS=return credit (aggregation) and the fitness spread (evolution)."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


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

    def start_run(self) -> None:
        self.excess = None

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


def fitness_spread(contribution: dict[str, float], models: Iterable[str]) -> float:
    """(best - worst) / mean size of the models' fitness: how much there was to select on."""
    fitness = np.array([contribution.get(model_id, 0.0) for model_id in sorted(models)])  # one order, one sum
    if len(fitness) < 2:
        return 0.0
    size = np.abs(fitness).mean()  # a fitness that credits returns can be negative
    return float((fitness.max() - fitness.min()) / size) if size > 0 else 0.0


@dataclass
class LeadCredit:
    """SWARM_FITNESS=lead: every training episode of every environment copy is led by one member,
    and the copy takes that member's own sampled action; a member's fitness is the mean return of
    the last `window` episodes it led, once it has led that many since it last changed.

    Sampling a member and then its action is what the tutorial's summed probabilities do at every
    step; here the member is drawn once per episode, so an episode's return is one member's doing.
    Leadership goes round the members in the order of their ids; every member still learns from
    every step. An episode cut off by the end of a run counts for no one.

    The default window is one episode: with 20 members and 10 episodes a round each member leads
    one episode every other round, so a window of 3 ranked a member only every sixth round, long
    after the learning had moved on (docs/learning.md measures both).
    """
    window: int = 1
    leaders: list[int] | None = None  # per copy: the index of the member leading its episode
    returns: np.ndarray | None = None  # per copy: the return so far of the episode in progress
    turn: int = 0  # the next member to lead
    led: dict[str, deque] = field(default_factory=dict)  # model id -> returns of its latest led episodes

    def next_leader(self, members: int) -> int:
        self.turn = (self.turn + 1) % members
        return self.turn

    def start_run(self) -> None:
        self.leaders, self.returns = None, None

    def leading(self, probs: np.ndarray) -> np.ndarray:
        """Each copy's leader's action distribution, (envs, actions), from all members' `probs`,
        (models, envs, actions); a run's first step gives every copy a leader."""
        members, envs = probs.shape[:2]
        if self.leaders is None or len(self.leaders) != envs:
            self.leaders = [self.next_leader(members) for _ in range(envs)]
            self.returns = np.zeros(envs)
        return probs[np.array(self.leaders) % members, np.arange(envs)]

    def add_outcome(self, rewards: np.ndarray, dones: np.ndarray, model_ids: list[str]) -> None:
        """The outcome of the last actions (the models echo REWARD and DONE): a finished episode
        credits its leader, and the copy's next episode gets the next member."""
        if self.leaders is None:
            return  # a run's first observation: no step of ours yet
        self.returns += rewards
        for copy in np.flatnonzero(dones):
            leader = model_ids[self.leaders[copy] % len(model_ids)]
            self.led.setdefault(leader, deque(maxlen=self.window)).append(float(self.returns[copy]))
            self.returns[copy] = 0.0
            self.leaders[copy] = self.next_leader(len(model_ids))

    def fitness(self) -> dict[str, float]:
        """The members that led `window` episodes since they last changed, with their mean led
        return: a member is ranked on a few episodes of its own, not on one lucky one."""
        return {model_id: float(np.mean(returns)) for model_id, returns in self.led.items()
                if len(returns) == self.window}

    def forget(self, model_ids: Iterable[str]) -> None:
        """These members have new weights: what they led before is not theirs any more."""
        for model_id in model_ids:
            self.led.pop(model_id, None)

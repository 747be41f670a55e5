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
    size = np.abs(fitness).mean()  # a fitness that credits returns can be negative
    return float((fitness.max() - fitness.min()) / size) if size > 0 else 0.0

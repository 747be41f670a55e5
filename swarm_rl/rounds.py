"""The control's round loop, shared by `06_control.py` (over sockets) and `swarm_rl.local`: training
episodes, an evaluation, an evolution step and an evaluation of the new population, until solved
(an evaluation at the threshold, confirmed over 100 deterministic episodes) or out of budget.
"""
from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from swarm_rl.environments import solved_at
from swarm_rl.protocol import SCORES, STEPS
from swarm_rl.settings import SwarmSettings

Start = Callable[[int, bool], dict[str, Any]]  # (episodes, deterministic) -> the run's ENV_DONE reply
Evolve = Callable[[], float]  # one evolution step -> its fitness spread
Confirm = Callable[[float, int], tuple[float, int]]  # (threshold, round) -> (mean, episodes played)
Heal = Callable[[Exception, int], tuple[list[str], float]]  # (fault, round) -> (restarted, seconds)
CONFIRM_EPISODES = 100


@dataclass
class Round:
    """What one round did; `steps` and `seconds` are totals since the first round."""
    round: int
    steps: int  # training environment steps
    seconds: float  # wall time, evaluations and evolutions included
    train_mean: float
    eval_mean: float
    eval_std: float
    confirm_mean: float | None = None  # when the evaluation reached the threshold: over `confirm_episodes`
    confirm_episodes: int | None = None  # 100, or fewer where the threshold was already out of reach
    confirmed: bool | None = None
    fitness_spread: float | None = None  # of the evolution step, if there was one
    after_mean: float | None = None  # the evaluation of the evolved population
    after_std: float | None = None
    restarted: str | None = None  # the processes started again during the round, if any
    lost_steps: int = 0  # training steps of the attempts they interrupted (counted in `steps`)

    def line(self) -> str:
        text = (f"  steps {self.steps:>7,}  training {self.train_mean:6.1f}  evaluation {self.eval_mean:6.1f} "
                f"± {self.eval_std:5.1f}")
        if self.confirm_mean is not None:
            text += (f"  {'confirmed' if self.confirmed else 'not confirmed:'} {self.confirm_mean:6.1f} "
                     f"over {self.confirm_episodes}")
        text += f"  wall {self.seconds:5.0f} s"
        if self.restarted:
            text += f"  restarted {self.restarted} ({self.lost_steps:,} steps lost)"
        if self.fitness_spread is not None:
            text += (f"  evolved (fitness spread {self.fitness_spread:.2%}), then {self.after_mean:6.1f} "
                     f"± {self.after_std:5.1f}")
        return text


def describe(settings: SwarmSettings) -> str:
    """How the swarm learns, in one line: the choices that make it this project's or the tutorial's."""
    evolution = "no evolution"
    if settings.evolution:
        evolution = f"evolution: {settings.operators}"
        if settings.operators == "pbt":
            evolution += f" ({settings.evolved})"
    correction = ", correction: vtrace" if settings.correction == "vtrace" else ""
    return (f"training actions: {settings.training_actions}{correction}, fitness: {settings.fitness}, {evolution}, "
            f"vote: {settings.vote}")


def evaluate(start: Start, episodes: int, envs: int) -> tuple[float, float]:
    """Mean and standard deviation of deterministic episodes, rounded up to whole batches:
    every environment copy plays the same number."""
    scores = start(math.ceil(episodes / envs) * envs, True)[SCORES]
    return float(np.mean(scores)), float(np.std(scores))


def train_until_solved(start: Start, start_evo: Evolve, confirm: Confirm, settings: SwarmSettings,
                       report: Callable[[str], None] = print,
                       after_round: Callable[[list[dict[str, Any]]], None] | None = None,
                       earlier: list[dict[str, Any]] | None = None, heal: Heal | None = None) -> dict[str, Any]:
    """Rounds until solved (confirmed over 100 episodes) or out of budget; every round's figures.

    `after_round` is given the history after every round (to checkpoint it). `earlier` is the
    history of a resumed swarm: rounds, steps and seconds go on from its last round, and the
    budget counts them. `confirm` plays the confirmation of a round that reached the threshold.
    `heal`, given a round's fault, restarts what was lost and puts the swarm back to the last
    checkpoint (or raises, to stop); the round is then played again, and its training steps so
    far count as lost.
    """
    threshold = solved_at(settings.env_id)  # None: no threshold, the budget ends the run
    history = [Round(**row) for row in earlier or []]
    steps = steps_before = history[-1].steps if history else 0
    seconds_before = history[-1].seconds if history else 0.0
    training_seconds, began = 0.0, time.monotonic() - seconds_before
    solved = False
    report(describe(settings))
    for round_nr in itertools.count(len(history) + 1):
        report(f"ROUND {round_nr}" + (f"/{settings.rounds}" if settings.rounds else ""))
        restarted: list[str] = []
        lost = 0
        while True:  # an attempt at the round; a healed fault starts it again
            training = None  # the attempt's training reply, once its training is over
            try:
                training_began = time.monotonic()
                training = start(settings.episodes, False)
                training_seconds += time.monotonic() - training_began
                row = Round(round_nr, steps + training[STEPS], 0.0, float(np.mean(training[SCORES])),
                            *evaluate(start, settings.eval_episodes, settings.envs),
                            restarted=" ".join(restarted) or None, lost_steps=lost)
                if threshold is not None and row.eval_mean >= threshold:
                    row.confirm_mean, row.confirm_episodes = confirm(threshold, round_nr)
                    row.confirmed = row.confirm_episodes >= CONFIRM_EPISODES and row.confirm_mean >= threshold
                ends = out_of_budget(row, settings, began)
                if settings.evolution and not row.confirmed and not ends:
                    row.fitness_spread = start_evo()
                    row.after_mean, row.after_std = evaluate(start, settings.eval_episodes, settings.envs)
                row.seconds = time.monotonic() - began
                if after_round is not None:
                    after_round([asdict(r) for r in history] + [asdict(row)])
                break
            except Exception as fault:
                if heal is None:
                    raise
                names, seconds = heal(fault, round_nr)
                lost_now = training[STEPS] if training is not None else steps_in_progress(fault)
                lost, steps = lost + lost_now, steps + lost_now
                restarted += names
                report(f"  restarted {', '.join(names)} in {seconds:.1f} s after: {fault}; "
                       f"{lost_now:,} training steps lost; round {round_nr} again from the last checkpoint")
        steps = row.steps
        history.append(row)
        report(row.line())
        solved = bool(row.confirmed)
        if solved or ends:
            break
    seconds = time.monotonic() - began
    report(f"{'solved' if solved else 'NOT solved'} after {len(history)} rounds: {steps:,} training steps, "
           f"{seconds:.0f} s wall ({(steps - steps_before) / max(training_seconds, 1e-9):.0f} training steps/s)")
    return dict(solved=solved, steps=steps, seconds=seconds, training_seconds=training_seconds,
                history=[asdict(row) for row in history])


def out_of_budget(row: Round, settings: SwarmSettings, began: float) -> bool:
    """Whether the run's budget is spent once `row` is played: steps, wall time or rounds."""
    return bool((settings.max_steps and row.steps >= settings.max_steps)
                or (settings.max_seconds and time.monotonic() - began >= settings.max_seconds)
                or (settings.rounds and row.round >= settings.rounds))


def steps_in_progress(fault: Exception) -> int:
    """The training steps an interrupted training request had played, as far as its last
    progress report tells (0 if it sent none)."""
    progress = getattr(fault, "progress", None) or {}
    return int(progress.get(STEPS, 0))

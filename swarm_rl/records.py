"""What a run records beside its checkpoint, for watching it train: TensorBoard events (per round
and per member), `monitor.csv` (one row per training episode, as stable-baselines3's Monitor
writes it) and `lineage.csv` (who copied whom, with the hyperparameters after)."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from swarm_rl.fitness import fitness_rank_correlation
from swarm_rl.protocol import (COMPONENT_ID, COPIED, ENDED_AT, ENT_COEF, FITNESS, GAMMA, HYPERPARAMETERS, LEARNING_RATE,
                               LENGTHS, SCORES)

ROUND_SCALARS = ("train_mean", "eval_mean", "eval_std", "after_mean", "fitness_spread", "lost_steps")
MEMBER_HYPERPARAMETERS = {LEARNING_RATE: "learning_rate", ENT_COEF: "ent_coef", GAMMA: "gamma"}
LINEAGE_FIELDS = ["round", "member", "copied_from", *MEMBER_HYPERPARAMETERS.values(), "fitness"]


class RunRecords:
    """The records of one run, in its folder; TensorBoard's events go to `folder/tensorboard`."""

    def __init__(self, folder: Path, env_id: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard: only when a run records

        self.folder, self.began = folder, time.time()
        self.writer = SummaryWriter(str(folder / "tensorboard"))
        self.monitor = open(folder / "monitor.csv", "w", newline="")
        self.monitor.write("#" + json.dumps({"t_start": self.began, "env_id": env_id}) + "\n")
        self.episodes = csv.writer(self.monitor)
        self.episodes.writerow(["r", "l", "t"])
        self.lineage_file = open(folder / "lineage.csv", "w", newline="")
        self.lineage = csv.DictWriter(self.lineage_file, fieldnames=LINEAGE_FIELDS)
        self.lineage.writeheader()
        self.training_seconds = 0.0
        self.last_evolution: dict[str, Any] | None = None

    def training_run(self, reply: dict[str, Any], asked_at: float) -> None:
        """A training request's ENV_DONE: a monitor row per episode (`t`: seconds from the run's
        start when it ended)."""
        offset = asked_at - self.began
        for score, length, ended in zip(reply[SCORES], reply.get(LENGTHS, []), reply.get(ENDED_AT, [])):
            self.episodes.writerow([score, length, round(offset + ended, 6)])
        self.monitor.flush()

    def round(self, row: dict[str, Any], states: list[dict[str, Any]], evolution: dict[str, Any] | None,
              steps_per_second: float) -> None:
        """A finished round: its figures, each member's hyperparameters (after the round) and
        fitness, the fitness's rank correlation with the last evolution's, and the copies the
        evolution made, against training steps."""
        steps = row["steps"]
        for name in ROUND_SCALARS:
            if row.get(name) is not None:
                self.writer.add_scalar(f"round/{name}", row[name], steps)
        self.writer.add_scalar("round/steps_per_second", steps_per_second, steps)
        fitness = (evolution or {}).get(FITNESS, {})
        copied = (evolution or {}).get(COPIED, {})
        if evolution is not None:
            if self.last_evolution is not None:
                # The members the last evolution gave other weights are not the ones it ranked.
                correlation = fitness_rank_correlation(self.last_evolution.get(FITNESS, {}), fitness,
                                                       self.last_evolution.get(COPIED, {}))
                if correlation is not None:
                    self.writer.add_scalar("round/fitness_rank_correlation", correlation, steps)
            self.last_evolution = evolution
        for state in sorted(states, key=lambda s: s[COMPONENT_ID]):
            member, values = state[COMPONENT_ID], state[HYPERPARAMETERS]
            for key, name in MEMBER_HYPERPARAMETERS.items():
                if key in values:
                    self.writer.add_scalar(f"member/{member}/{name}", values[key], steps)
            if member in fitness:
                self.writer.add_scalar(f"member/{member}/fitness", fitness[member], steps)
            self.lineage.writerow({"round": row["round"], "member": member, "copied_from": copied.get(member, ""),
                                   **{name: values.get(key, "") for key, name in MEMBER_HYPERPARAMETERS.items()},
                                   "fitness": fitness.get(member, "")})
        self.writer.flush()
        self.lineage_file.flush()

    def close(self) -> None:
        self.writer.close()
        self.monitor.close()
        self.lineage_file.close()

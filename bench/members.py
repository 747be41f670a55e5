"""bench/members.py: what is there to select? Each member's own deterministic return, round by
round, beside the swarm's evaluation and the fitness the evolution ranks on.

One seeded swarm runs in process as the study runs it. After every round each member plays
`--episodes` deterministic episodes alone, in environments of this script's own (seeded apart
from the swarm's), so the measurement changes nothing the swarm does: the run's rounds are the
study's. Per round it prints the swarm's evaluation; the members' own returns (worst, median,
best) and how many reach the threshold alone; the Spearman rank correlation between the fitness
(SWARM_FITNESS=lead: the return of the last training episode a member led) and the members' own
returns (near 0, selection on that fitness is a lottery); the correlation between the members'
own returns and a second measurement of them on other episodes (the reliability of the reference:
no fitness can correlate with it much better); the correlation between each member's own critic's
estimate of its episode length (CartPole: a reward of 1 a step) and its own returns; and the
swarm's return on episodes of this script's own with each SWARM_VOTE. Its last line is one JSON
object: the seed, whether and when the run solved, and the median correlations.

    python bench/members.py --seed 9 --out docs/study/members
    python bench/members.py --seed 0 --set SWARM_TRAINING_ACTIONS=greedy-leader --set SWARM_CORRECTION=vtrace
    python bench/members.py --plot-rho docs/study/fitness/*/ --out docs/study/fitness   # rho.png of those runs
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
import torch

from swarm_rl.environments import solved_at
from swarm_rl.fitness import rank_correlation
from swarm_rl.local import LocalSwarm
from swarm_rl.settings import VOTES, SwarmSettings


def play(choose: Callable[[np.ndarray], np.ndarray], env_id: str, episodes: int, seed: int) -> float:
    """Mean return of `episodes` deterministic episodes (starting states from `seed`), the actions
    chosen by `choose` for a batch of observations."""
    envs = [gymnasium.make(env_id) for _ in range(episodes)]
    observations = np.stack([env.reset(seed=seed + index)[0] for index, env in enumerate(envs)])
    totals, running = np.zeros(episodes), np.ones(episodes, dtype=bool)
    while running.any():
        actions = choose(observations)
        for index in np.flatnonzero(running):
            observation, reward, terminated, truncated, _ = envs[index].step(int(actions[index]))
            observations[index], totals[index] = observation, totals[index] + reward
            running[index] = not (terminated or truncated)
    return float(totals.mean())


def own_returns(swarm: LocalSwarm, env_id: str, episodes: int, seed: int) -> dict[str, float]:
    """Each member's mean return over `episodes` deterministic episodes of its own (the same
    starting states for every member)."""
    def alone(state, j):
        return lambda rows: state.logits(torch.as_tensor(rows, dtype=torch.float32))[j].argmax(-1).numpy()
    return {model_id: play(alone(state, j), env_id, episodes, seed) for model_id, state, j in swarm.members()}


def value_lengths(swarm: LocalSwarm, env_id: str, episodes: int, seed: int) -> dict[str, float]:
    """Each member's own critic's estimate of its episode length, from its values of the same
    starting states as `own_returns`: V = (1 - gamma^T) / (1 - gamma) for a reward of 1 a step
    (CartPole), solved for T, so that members with different discounts compare."""
    starts = np.stack([gymnasium.make(env_id).reset(seed=seed + index)[0] for index in range(episodes)])
    lengths = {}
    for model_id, state, j in swarm.members():
        with torch.no_grad():
            values = state.forward(torch.as_tensor(starts, dtype=torch.float32))[1][j].numpy()
        gamma = float(state.gammas[j])
        reach = np.clip(values * (1 - gamma), 0.0, 1.0 - 1e-9)  # 1 - gamma^T
        lengths[model_id] = float(np.mean(np.log1p(-reach) / np.log(gamma)))
    return lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--episodes", type=int, default=5, help="deterministic episodes per member per round")
    parser.add_argument("--rule-episodes", type=int, default=10, help="deterministic episodes per rule per round")
    parser.add_argument("--set", action="append", default=[], metavar="SWARM_NAME=VALUE", help="a setting for the swarm")
    parser.add_argument("--out", type=Path, help="where members.json and members.png go")
    parser.add_argument("--plot-rho", type=Path, nargs="+", metavar="RUN",
                        help="run nothing: plot the correlation per round of these runs (a members.json, or the "
                             "folder that holds it) as OUT/rho.png")
    args = parser.parse_args()
    if args.plot_rho:
        plot_rho(args.plot_rho, (args.out or Path(".")) / "rho.png")
        return

    with tempfile.TemporaryDirectory(prefix="members-") as log_dir:
        # No wall-clock budget: the measurement's own time would end the run early.
        settings = SwarmSettings.from_env({"SWARM_MAX_SECONDS": "0", **dict(item.split("=", 1) for item in args.set),
                                           "SWARM_SEED": str(args.seed), "SWARM_LOG_DIR": log_dir})
        swarm = LocalSwarm(settings)
        aggregation = swarm.components["03_aggregation.py"].state
        threshold = solved_at(settings.env_id) or float("inf")
        rows: list[dict[str, Any]] = []

        def measure(history: list[dict[str, Any]]) -> None:
            own = own_returns(swarm, settings.env_id, args.episodes, 1_000_000 + 1_000 * len(history))
            # a copy: handing a tally over (SWARM_FITNESS=contribution, return) empties it for the evolution
            fitness = copy.deepcopy(aggregation.fitness).scores()
            ranked = [m for m in own if m in fitness]
            rho = rank_correlation([fitness[m] for m in ranked], [own[m] for m in ranked])
            # How well own returns rank the members against a second, independent measurement of
            # them: the most any fitness can reach against this reference.
            again = own_returns(swarm, settings.env_id, args.episodes, 3_000_000 + 1_000 * len(history))
            reliability = rank_correlation([own[m] for m in own], [again[m] for m in own])
            valued = value_lengths(swarm, settings.env_id, args.episodes, 1_000_000 + 1_000 * len(history))
            value_rho = rank_correlation([valued[m] for m in own], [own[m] for m in own])
            values = np.array(list(own.values()))
            seed = 2_000_000 + 1_000 * len(history)
            rules = {vote: play(lambda rows, vote=vote: swarm.actions(rows, vote), settings.env_id,
                                args.rule_episodes, seed) for vote in VOTES}
            row = dict(round=history[-1]["round"], steps=history[-1]["steps"], swarm=history[-1]["eval_mean"],
                       after=history[-1]["after_mean"], own=own, fitness=fitness, rho=rho, rules=rules,
                       reliability=reliability, value_rho=value_rho)
            rows.append(row)
            print(f"round {row['round']:>3}  steps {row['steps']:>7,}  swarm {row['swarm']:6.1f}  "
                  f"members alone: worst {values.min():6.1f} median {np.median(values):6.1f} best {values.max():6.1f}, "
                  f"{int((values >= threshold).sum()):>2} reach {threshold:g}  "
                  f"fitness~own rho {'-' if rho is None else f'{rho:+.2f}'}  "
                  f"own~own again {'-' if reliability is None else f'{reliability:+.2f}'}  "
                  f"values~own {'-' if value_rho is None else f'{value_rho:+.2f}'}  "
                  + "  ".join(f"{vote} {value:5.1f}" for vote, value in rules.items()), flush=True)

        result = swarm.train_until_solved(report=lambda line: None, after_round=measure)
    rhos = [row["rho"] for row in rows if row["rho"] is not None]
    medians = {name: (float(np.median(found)) if (found := [row[name] for row in rows if row[name] is not None])
                      else None) for name in ("reliability", "value_rho")}
    print(f"{'solved' if result['solved'] else 'NOT solved'} at {result['steps']:,} steps; "
          f"median rho {np.median(rhos):+.2f} over {len(rhos)} rounds" if rhos else "no ranked rounds")
    print(json.dumps(dict(seed=args.seed, settings=args.set, solved=result["solved"], steps=result["steps"],
                          median_rho=float(np.median(rhos)) if rhos else None, ranked_rounds=len(rhos),
                          median_reliability=medians["reliability"], median_value_rho=medians["value_rho"])))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "members.json").write_text(json.dumps(dict(seed=args.seed, settings=args.set, rows=rows), indent=1))
        plot(rows, threshold, args.out / "members.png", args.seed)


def plot(rows: list[dict[str, Any]], threshold: float, path: Path, seed: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    for row in rows:
        own = list(row["own"].values())
        axis.scatter([row["steps"]] * len(own), own, s=8, color="tab:gray", alpha=0.5)
    steps = [row["steps"] for row in rows]
    axis.plot(steps, [row["swarm"] for row in rows], "o-", color="tab:blue", label="swarm (evaluation)")
    axis.plot(steps, [max(row["own"].values()) for row in rows], "-", color="tab:green", label="best member alone")
    for vote, color in zip(VOTES, ("tab:cyan", "tab:purple", "tab:orange")):
        axis.plot(steps, [row["rules"][vote] for row in rows], "--", color=color, label=f"vote by {vote}")
    axis.axhline(threshold, color="tab:red", linestyle=":", label="threshold")
    axis.set_xlabel("training steps")
    axis.set_ylabel("mean return")
    axis.set_title(f"Seed {seed}: each member alone (gray) against the swarm")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def plot_rho(folders: list[Path], path: Path) -> None:
    """Spearman's rho between fitness and own return, per round, one line per run (a members.json
    or its folder), coloured by its settings."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    colors: dict[str, str] = {}
    for folder in folders:
        run = json.loads((folder / "members.json" if folder.is_dir() else folder).read_text())
        label = " ".join(run["settings"]) or "no --set (the defaults when it ran)"
        color = colors.setdefault(label, f"C{len(colors)}")
        rows = [row for row in run["rows"] if row["rho"] is not None]
        axis.plot([row["steps"] for row in rows], [row["rho"] for row in rows], "o-", ms=3, color=color, alpha=0.7,
                  label=label)
    axis.axhline(0.5, ls=":", color="grey")
    axis.set(xlabel="training steps", ylabel="Spearman rho, fitness against own return",
             title="Does the fitness rank the members? (one line per run)")
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one entry per setting, not per run
    axis.legend(unique.values(), unique.keys(), loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()

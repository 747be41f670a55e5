"""bench/paired.py: one arm of two studies, seed by seed (the same seeds play the same episodes
until the two algorithms first act differently), with a Wilcoxon signed-rank test.

    python bench/paired.py docs/study/evolution/study.json docs/study/vote-majority/study.json swarm
"""
import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon


def steps_by_seed(path: Path, arm: str) -> dict[int, int]:
    """Each seed's training steps: to solve, or (unsolved) to the first round past the budget."""
    return {r["seed"]: r["steps"] for r in json.loads(path.read_text())["runs"] if r["arm"] == arm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("arm")
    args = parser.parse_args()
    before, after = steps_by_seed(args.before, args.arm), steps_by_seed(args.after, args.arm)
    seeds = sorted(set(before) & set(after))
    print(f"{args.arm}: training steps to solve, seed by seed ({args.before} -> {args.after})")
    for seed in seeds:
        print(f"  seed {seed:>3}: {before[seed]:>7,} -> {after[seed]:>7,}")
    a, b = np.array([before[s] for s in seeds]), np.array([after[s] for s in seeds])
    p = wilcoxon(a, b).pvalue if np.any(a != b) else 1.0
    print(f"{len(seeds)} seeds: median {np.median(a):,.0f} -> {np.median(b):,.0f}; "
          f"{int(np.sum(b < a))} faster, {int(np.sum(b > a))} slower; Wilcoxon signed-rank p = {p:.3f}")


if __name__ == "__main__":
    main()

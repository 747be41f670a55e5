"""bench/study.py: how many training steps does each arm need to solve CartPole-v1 (or `--env`
Acrobot-v1, LunarLander-v3, ...), over many seeds?

Arms (the study names each arm's setup in its output):
- `swarm`: the swarm with its defaults (`06_control.py` with no settings);
- `swarm-no-evolution`: the same with SWARM_EVOLUTION=0 (the same training actions);
- `tutorial`: the tutorial's exact algorithm (SWARM_PRESET=tutorial: summed training actions);
- `sb3-a2c`: stable-baselines3's A2C with its defaults, in one process;
- `sb3-a2c-zoo`, `sb3-ppo-zoo`: A2C and PPO with the RL Zoo's hyperparameters for the environment
  (bench/baselines.py cites them).

Every arm is judged the same way: "solved" is gymnasium's definition, a mean of at least the
environment's threshold (CartPole-v1: 475) over 100 consecutive episodes. The swarm evaluates after
every round (10 deterministic episodes) and confirms an evaluation that reaches the threshold with
100 more; the SB3 arms evaluate every 2,000 steps and confirm the same way. An unsolved run counts
as the budget (the environment's SWARM_MAX_STEPS) in the medians.

The swarm runs in process by default (`swarm_rl.local`: the real handlers, no sockets, every model in
one learner; a seeded swarm plays the same rounds there as over sockets, docs/learning.md,
"Reproducibility"), or over sockets with `--sockets` (`06_control.py`).
Runs go `--jobs` at a time, each in a process of its own, or (`--ray ADDRESS`) as tasks of an
existing Ray cluster, one CPU each.

    python bench/study.py --seeds 0-19                          # every arm but the tutorial, 20 seeds
    python bench/study.py --seeds 0-2 --arms tutorial           # the tutorial's algorithm (slow)
    python bench/study.py --seeds 0-2 --arms swarm --sockets    # the real swarm, over sockets
    python bench/study.py --quick                               # a smoke test: tiny swarms, tiny budgets
    python bench/study.py --seeds 0-99 --ray HEAD:6379         # on a Ray cluster (`ray start --head` there)
    python bench/study.py --seeds 0-9 --env Acrobot-v1 --arms swarm sb3-a2c-zoo sb3-ppo-zoo   # another game

It prints a table per run and per arm, the Mann-Whitney U p-value of `swarm` against
`swarm-no-evolution` (steps to solve) and the ratio of their median steps with a 95% bootstrap
interval; writes study.json, study.md and study.png to --out; and its
last line is one JSON object with the per-arm summary and the p-value.

Each finished run is appended to --out's runs.jsonl at once. A study started again with the same
--out and the same budgets and settings reuses those runs and plays only the missing ones, so a long
study (LunarLander: hours) can be stopped and continued; `--no-play` writes the summary of the
runs finished so far and plays nothing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from swarm_rl import rounds
from swarm_rl.environments import DEFAULT_ENV_ID, solved_at
from swarm_rl.launcher import free_port
from swarm_rl.scripts import PROJECT_DIR, load_script
from swarm_rl.settings import SwarmSettings

baselines = load_script("bench/baselines.py")

ARMS: dict[str, dict[str, str] | None] = {  # the settings that make each swarm arm; None: SB3
    "swarm": {},
    "swarm-no-evolution": {"SWARM_EVOLUTION": "0"},
    "tutorial": {"SWARM_PRESET": "tutorial"},
    **{arm: None for arm in baselines.ARMS},
}
DEFAULT_ARMS = ["swarm", "swarm-no-evolution", "sb3-a2c"]


def swarm_settings(arm: str, seed: int, args: argparse.Namespace, log_dir: Path) -> SwarmSettings:
    environ = {**ARMS[arm], **dict(args.set), "SWARM_SEED": str(seed), "SWARM_MAX_STEPS": str(args.max_steps),
               "SWARM_MAX_SECONDS": str(args.max_seconds), "SWARM_LOG_DIR": str(log_dir)}
    return SwarmSettings.from_env(environ)


def describe_arm(arm: str, args: argparse.Namespace) -> str:
    """What an arm runs: a swarm arm's training actions, fitness and evolution, or SB3's A2C. An
    arm whose settings cannot work together stops the study before it starts."""
    if ARMS[arm] is None:
        return baselines.describe(arm, args.env_id)
    settings = swarm_settings(arm, 0, args, Path("."))
    if problems := settings.problems():
        raise SystemExit(f"arm {arm}: " + "; ".join(problems))
    return rounds.describe(settings)


def summarise_swarm(arm: str, seed: int, result: dict) -> dict:
    spreads = [row["fitness_spread"] for row in result["history"] if row["fitness_spread"] is not None]
    return dict(arm=arm, seed=seed, solved=result["solved"], steps=result["steps"], seconds=result["seconds"],
                spread=float(np.median(spreads)) if spreads else None,
                curve=[(row["steps"], row["eval_mean"]) for row in result["history"]])


def progress(arm: str, seed: int, args: argparse.Namespace):
    """With --verbose, every round's line, prefixed with its arm and seed."""
    return (lambda line: print(f"    [{arm} {seed}] {line.strip()}", flush=True)) if args.verbose else (lambda line: None)


def run_in_process(arm: str, seed: int, args: argparse.Namespace) -> dict:
    from swarm_rl.local import LocalSwarm

    with tempfile.TemporaryDirectory(prefix="study-") as log_dir:
        settings = swarm_settings(arm, seed, args, Path(log_dir))
        keep = args.keep / f"{arm}-{seed}.pt" if args.keep else None  # checkpointed after every round
        result = LocalSwarm(settings).train_until_solved(report=progress(arm, seed, args), checkpoint_path=keep)
    return summarise_swarm(arm, seed, result)


def run_over_sockets(arm: str, seed: int, args: argparse.Namespace) -> dict:
    """`python 06_control.py` with the arm's settings on a free port. The control stops its own
    swarm on every exit; on our timeout or Ctrl-C we stop the control and wait for it."""
    with tempfile.TemporaryDirectory(prefix="study-") as log_dir:
        settings = swarm_settings(arm, seed, args, Path(log_dir)).replace(port=free_port())
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        with open(Path(log_dir) / "control.out", "w") as output:
            process = subprocess.Popen([sys.executable, str(PROJECT_DIR / "06_control.py")], cwd=log_dir, env=env,
                                       stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                process.wait(timeout=args.max_seconds + 600)  # the budget, the start, a last evaluation
            except BaseException:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                raise
        if process.returncode != 0:
            raise RuntimeError(f"06_control.py exited with {process.returncode}:\n"
                               f"{(Path(log_dir) / 'control.out').read_text()[-2000:]}")
        result = json.loads((Path(log_dir) / "result.json").read_text())
    return summarise_swarm(arm, seed, result)


def exit_with_parent(parent: int) -> None:
    """A worker's initializer: end the worker when the study's process is gone."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="watch-study", daemon=True).start()


def run_task(task: tuple[str, int, argparse.Namespace]) -> dict:
    return run(*task)


def played_here(tasks: list[tuple[str, int]], args: argparse.Namespace) -> Iterator[dict]:
    """The runs, --jobs at a time in this machine's processes, each result as it finishes."""
    context = multiprocessing.get_context("spawn")
    # Leaving the block (done, error, Ctrl-C, SIGTERM) terminates the workers; a SIGKILLed study
    # leaves none either: each worker watches its parent.
    with context.Pool(min(args.jobs, max(len(tasks), 1)), initializer=exit_with_parent,
                      initargs=(os.getpid(),)) as pool:
        yield from pool.imap_unordered(run_task, [(arm, seed, args) for arm, seed in tasks])


# What Ray need not ship to its workers: they have their own environment; the rest is output.
RAY_EXCLUDES = [".venv/", ".git/", "runs/", "logs/", "docs/", "build/", "**/__pycache__/", "*.egg-info/"]


def played_on_ray(tasks: list[tuple[str, int]], args: argparse.Namespace) -> Iterator[dict]:
    """The runs as tasks of the Ray cluster at --ray (one CPU each), each result as it finishes.
    Ray ships this project to the workers; each node needs this project's dependencies."""
    host, _, port = args.ray.rpartition(":")
    try:  # Ray itself would retry for minutes
        socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as error:
        raise SystemExit(f"--ray {args.ray}: no Ray cluster answered ({error})") from None
    import ray

    ray.init(address=args.ray, runtime_env={"working_dir": str(PROJECT_DIR), "excludes": RAY_EXCLUDES},
             log_to_driver=False, logging_level="warning")
    pending: list = []
    try:
        play = ray.remote(num_cpus=1, max_retries=0)(run_shipped)
        pending = [play.remote((arm, seed, args)) for arm, seed in tasks]
        patience = args.max_seconds + 900  # a run's budget, its start and its last evaluation
        while pending:
            finished, pending = ray.wait(pending, num_returns=1, timeout=patience)
            if not finished:
                raise TimeoutError(f"no run on the Ray cluster at {args.ray} finished within {patience:.0f} s "
                                   f"({len(pending)} waiting)")
            yield ray.get(finished[0])
    finally:
        for task in pending:
            ray.cancel(task, force=True)
        ray.shutdown()


def run_shipped(task: tuple[str, int, argparse.Namespace]) -> dict:
    """One run on a Ray worker, by the copy of this script that Ray shipped there (its working
    folder, first on its path, so the shipped swarm_rl is the one imported)."""
    from swarm_rl.scripts import load_script

    return load_script("bench/study.py").run(*task)


def run(arm: str, seed: int, args: argparse.Namespace) -> dict:
    """One run, in a worker process."""
    import logging
    logging.disable(logging.WARNING)  # a component's skipped messages would flood the study's output
    if ARMS[arm] is None:
        return baselines.run(arm, seed, args.env_id, solved_at(args.env_id), args.max_steps, args.sb3_eval_every,
                             args.eval_episodes, args.max_seconds)
    return (run_over_sockets if args.sockets else run_in_process)(arm, seed, args)


# --------------------------------------------------------------------------- finished runs
def run_setup(args: argparse.Namespace) -> dict:
    """What makes two runs of the same arm and seed the same run."""
    return dict(env_id=args.env_id, max_steps=args.max_steps, max_seconds=args.max_seconds, sockets=args.sockets,
                eval_episodes=args.eval_episodes, sb3_eval_every=args.sb3_eval_every, set=sorted(map(list, args.set)))


def finished_runs(path: Path, setup: dict) -> dict[tuple[str, int], dict]:
    """The runs in a runs.jsonl that were played with this setup, by (arm, seed)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(row["run"]["arm"], row["run"]["seed"]): row["run"] for row in rows if row["setup"] == setup}


# --------------------------------------------------------------------------- summary
def counted_steps(run: dict, budget: int) -> int:
    """A run's steps to solve; an unsolved run counts as the budget."""
    return run["steps"] if run["solved"] else budget


def arm_summary(runs: list[dict], budget: int) -> dict:
    steps = np.array([counted_steps(r, budget) for r in runs])
    seconds = np.array([r["seconds"] for r in runs])
    spreads = [r["spread"] for r in runs if r["spread"] is not None]
    return dict(runs=len(runs), solved=sum(r["solved"] for r in runs), median_steps=float(np.median(steps)),
                iqr_steps=[float(np.percentile(steps, 25)), float(np.percentile(steps, 75))],
                median_seconds=float(np.median(seconds)),
                iqr_seconds=[float(np.percentile(seconds, 25)), float(np.percentile(seconds, 75))],
                median_spread=float(np.median(spreads)) if spreads else None)


def p_value(results: list[dict], budget: int, a: str = "swarm", b: str = "swarm-no-evolution") -> float | None:
    """Two-sided Mann-Whitney U test of steps to solve, arm `a` against arm `b`."""
    from scipy.stats import mannwhitneyu

    steps = {arm: [counted_steps(r, budget) for r in results if r["arm"] == arm] for arm in (a, b)}
    if min(len(v) for v in steps.values()) < 2:
        return None
    return float(mannwhitneyu(steps[a], steps[b], alternative="two-sided").pvalue)


def median_ratio(results: list[dict], budget: int, a: str = "swarm", b: str = "swarm-no-evolution",
                 resamples: int = 10_000) -> dict | None:
    """Median steps of arm `a` over arm `b`, with a 95% bootstrap interval (each arm's runs
    resampled with replacement, seeded: the same interval every time)."""
    steps = {arm: np.array([counted_steps(r, budget) for r in results if r["arm"] == arm]) for arm in (a, b)}
    if min(len(v) for v in steps.values()) < 2:
        return None
    rng = np.random.default_rng(0)
    ratios = [np.median(rng.choice(steps[a], len(steps[a]))) / np.median(rng.choice(steps[b], len(steps[b])))
              for _ in range(resamples)]
    return dict(ratio=float(np.median(steps[a]) / np.median(steps[b])),
                ci95=[float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))])


def evaluations_along_the_way(results: list[dict], budget: int, windows: int = 5) -> dict[str, list[float | None]]:
    """Per arm, for each of `windows` equal parts of the budget: the median over runs of a run's
    mean evaluation in it (None where no run evaluated: runs that solved stop evaluating)."""
    edges = np.linspace(0, budget, windows + 1)
    medians: dict[str, list[float | None]] = {}
    for arm in dict.fromkeys(r["arm"] for r in results):
        per_window: list[list[float]] = [[] for _ in range(windows)]
        for r in (r for r in results if r["arm"] == arm and r["curve"]):
            steps, scores = np.array(r["curve"], dtype=float).T
            for i, (low, high) in enumerate(itertools.pairwise(edges)):
                if (inside := (steps > low) & (steps <= high)).any():
                    per_window[i].append(float(scores[inside].mean()))
        medians[arm] = [float(np.median(w)) if w else None for w in per_window]
    return medians


def along_the_way_table(results: list[dict], budget: int, windows: int = 5) -> list[str]:
    medians = evaluations_along_the_way(results, budget, windows)
    edges = np.linspace(0, budget, windows + 1)
    lines = ["Evaluations along the way: per arm, the median over runs of each run's mean evaluation in each "
             "part of the budget (runs that solved stop evaluating; -: none left)", "",
             "| arm | " + " | ".join(f"{low:,.0f}-{high:,.0f}" for low, high in itertools.pairwise(edges)) + " |",
             "| --- |" + " ---: |" * (len(edges) - 1)]
    for arm, values in medians.items():
        lines.append(f"| {arm} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in values) + " |")
    return lines


def table(results: list[dict], summary: dict, p: float | None, ratio: dict | None = None) -> list[str]:
    lines = ["| arm | runs | solved | median steps [IQR] | median wall s [IQR] | median fitness spread | setup |",
             "| --- | ---: | ---: | --- | --- | ---: | --- |"]
    for arm, s in summary.items():
        spread = "-" if s["median_spread"] is None else f"{s['median_spread']:.1%}"
        lines.append(f"| {arm} | {s['runs']} | {s['solved']} | {s['median_steps']:,.0f} "
                     f"[{s['iqr_steps'][0]:,.0f}, {s['iqr_steps'][1]:,.0f}] | {s['median_seconds']:.0f} "
                     f"[{s['iqr_seconds'][0]:.0f}, {s['iqr_seconds'][1]:.0f}] | {spread} | {s.get('setup', '')} |")
    lines.append("")
    lines.append("Mann-Whitney U, swarm against swarm-no-evolution (steps to solve, two-sided): "
                 + ("n/a" if p is None else f"p = {p:.3g}"))
    if ratio is not None:
        lines.append(f"Median steps, swarm over swarm-no-evolution: {ratio['ratio']:.2f} "
                     f"(95% bootstrap interval {ratio['ci95'][0]:.2f} to {ratio['ci95'][1]:.2f})")
    lines.append("")
    lines.append("| arm | seed | solved | training steps | wall s |")
    lines.append("| --- | ---: | --- | ---: | ---: |")
    for r in sorted(results, key=lambda r: (list(summary).index(r["arm"]), r["seed"])):
        lines.append(f"| {r['arm']} | {r['seed']} | {'yes' if r['solved'] else 'no'} | {r['steps']:,} | "
                     f"{r['seconds']:.0f} |")
    return lines


def plot(results: list[dict], summary: dict, budget: int, path: Path, title: str, threshold: float | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(summary)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw=dict(width_ratios=[1, 1.4]))
    rng = np.random.default_rng(0)
    for i, arm in enumerate(arms):
        runs = [r for r in results if r["arm"] == arm]
        steps = np.array([counted_steps(r, budget) for r in runs])
        solved = np.array([r["solved"] for r in runs])
        x = i + rng.uniform(-0.15, 0.15, len(runs))
        left.scatter(x[solved], steps[solved], s=16, color=f"C{i}")
        left.scatter(x[~solved], steps[~solved], s=16, facecolors="none", edgecolors=f"C{i}")
        left.hlines(np.median(steps), i - 0.3, i + 0.3, color="black")
        for r in runs:
            if r["curve"]:
                right.plot(*zip(*r["curve"]), color=f"C{i}", alpha=0.35, lw=1, label=arm if r is runs[0] else None)
    left.set(xticks=range(len(arms)), xticklabels=arms, ylabel="training steps to solve (open: not solved)",
             title="steps to solve, per seed (line: median)")
    if threshold is not None:
        right.axhline(threshold, ls=":", color="grey")
    right.set(xlabel="training environment steps", ylabel="evaluation mean (10 episodes)", title="evaluations, every seed")
    right.legend(loc="lower right")
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def seeds_played(results: list[dict]) -> str:
    """The seeds of the runs in a summary: `0-9`, or a list where some are missing."""
    seeds = sorted({r["seed"] for r in results})
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ", ".join(map(str, seeds))


# --------------------------------------------------------------------------- command line
def seed_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def setting(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    if not name.startswith("SWARM_") or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SWARM_NAME=VALUE")
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=seed_range, help="A-B, inclusive (default 0-19; 0-1 with --quick)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS)
    parser.add_argument("--sockets", action="store_true", help="the swarm arms over sockets (06_control.py)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (default: one per CPU)")
    parser.add_argument("--ray", metavar="ADDRESS", help="run the runs on the Ray cluster at ADDRESS (host:port; "
                        "pip install '.[ray]'), as many at a time as it has CPUs; --jobs is then unused")
    parser.add_argument("--env", help="the environment of every arm (as --set SWARM_ENV_ID=...; default CartPole-v1)")
    parser.add_argument("--max-steps", type=int, help="training budget per run (default: the environment's, "
                        "SWARM_MAX_STEPS's default for it)")
    parser.add_argument("--max-seconds", type=float, help="wall-clock budget per run (default: the environment's)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="SB3's evaluation (the swarm: SWARM_EVAL_EPISODES)")
    parser.add_argument("--sb3-eval-every", type=int, default=2000, help="SB3's training steps between evaluations")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="SWARM_NAME=VALUE",
                        help="a setting for every swarm arm (repeatable)")
    parser.add_argument("--out", type=Path, help="where study.json, study.md and study.png go (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 models, tiny budgets: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="every round of every in-process run")
    parser.add_argument("--no-play", action="store_true",
                        help="summarise the runs already in --out's runs.jsonl; play none of the missing ones")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep each in-process swarm run's checkpoint as DIR/ARM-SEED.pt (for 07_watch.py)")
    args = parser.parse_args()
    args.seeds = args.seeds or seed_range("0-1" if args.quick else "0-19")
    if args.env:
        args.set.append(("SWARM_ENV_ID", args.env))
    args.env_id = dict(args.set).get("SWARM_ENV_ID", DEFAULT_ENV_ID)  # every arm's, SB3's too
    budget = SwarmSettings.from_env({"SWARM_ENV_ID": args.env_id})
    args.max_steps = budget.max_steps if args.max_steps is None else args.max_steps
    args.max_seconds = budget.max_seconds if args.max_seconds is None else args.max_seconds
    if args.quick:
        args.max_steps, args.sb3_eval_every = 400, 200
        args.set += [("SWARM_MODELS", "2"), ("SWARM_EVAL_EPISODES", "2"), ("SWARM_EPISODES", "2")]
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    args.out = args.out or Path(tempfile.mkdtemp(prefix="study-"))
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python bench/study.py " + " ".join(sys.argv[1:])
    print(f"study: arms {', '.join(args.arms)}; seeds {args.seeds[0]}-{args.seeds[-1]}; "
          f"{'over sockets' if args.sockets else 'in process'}; "
          f"{f'on the Ray cluster at {args.ray}' if args.ray else f'{args.jobs} at a time'}; output in {args.out}",
          flush=True)
    setups = {arm: describe_arm(arm, args) for arm in args.arms}
    for arm, setup in setups.items():
        print(f"  {arm}: {setup}", flush=True)

    tasks = [(arm, seed) for seed in args.seeds for arm in args.arms]
    setup, journal = run_setup(args), args.out / "runs.jsonl"
    done = finished_runs(journal, setup)
    results = [done[task] for task in tasks if task in done]
    tasks, total = [task for task in tasks if task not in done], len(tasks)
    if args.no_play:
        tasks, total = [], len(results)
    if results:
        print(f"  {len(results)} runs already in {journal}; {len(tasks)} to play", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # so the pool below is ended
    played = (played_on_ray if args.ray else played_here)(tasks, args) if tasks else iter(())
    for r in played:
        results.append(r)
        with open(journal, "a") as rows:
            rows.write(json.dumps(dict(setup=setup, run=r)) + "\n")
        print(f"  {r['arm']:<20} seed {r['seed']:>3}: {'solved' if r['solved'] else 'NOT solved'} "
              f"at {r['steps']:>7,} steps, {r['seconds']:5.0f} s ({len(results)}/{total})",
              flush=True)

    summary = {arm: {**arm_summary([r for r in results if r["arm"] == arm], args.max_steps), "setup": setups[arm]}
               for arm in args.arms if any(r["arm"] == arm for r in results)}
    both = {"swarm", "swarm-no-evolution"} <= set(args.arms)
    p = p_value(results, args.max_steps) if both else None
    ratio = median_ratio(results, args.max_steps) if both else None
    lines = [*table(results, summary, p, ratio), "", *along_the_way_table(results, args.max_steps)]
    print("\n" + "\n".join(lines))
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    (args.out / "study.json").write_text(json.dumps(dict(command=command, machine=machine, env_id=args.env_id,
                                                         arms=summary, p_value=p, median_ratio=ratio, runs=results),
                                                    indent=1))
    (args.out / "study.md").write_text(f"`{command}` ({machine})\n\n" + "\n".join(lines) + "\n")
    plot(results, summary, args.max_steps, args.out / "study.png",
         f"{args.env_id}, seeds {seeds_played(results)}, {'sockets' if args.sockets else 'in process'}",
         solved_at(args.env_id))
    print(json.dumps({"arms": {arm: {k: s[k] for k in ("runs", "solved", "median_steps", "median_seconds",
                                                       "median_spread", "setup")} for arm, s in summary.items()},
                      "p_value": p, "median_ratio": ratio}))


if __name__ == "__main__":
    main()

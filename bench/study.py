"""How fast does the swarm learn, and what does evolution add? One run, three seeds.

For every seed it measures the training environment steps and the wall time until CartPole-v1
is solved (a deterministic evaluation mean of at least 475 over 10 or more episodes) for:

- the swarm with evolution: `python 06_control.py`, as a user runs it;
- the same swarm without evolution (`SWARM_EVOLUTION=0`);
- stable-baselines3's A2C with its default hyper-parameters, in this one process, evaluated the
  same way every `--sb3-eval-every` steps.

All within the same budget (`--max-steps`, `--max-seconds`). It prints a table, writes
`study.json` and a plot of the evaluation scores against environment steps (`study.png`).

    .venv/bin/python bench/study.py                # 3 seeds, the settings in the README
    .venv/bin/python bench/study.py --learning-rate 0.0007 --variants 1 2   # the tutorial's rate
    .venv/bin/python bench/study.py --quick        # a smoke test: 1 seed, 2 models, tiny budget
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from swarm.launcher import free_port
from swarm.scripts import PROJECT_DIR as ROOT
from swarm.settings import ENV_ID, SOLVED_AT, SwarmSettings

VARIANTS = ("swarm + evolution", "swarm, no evolution", "SB3 A2C, one process")


def run_swarm(seed: int, evolution: bool, args: argparse.Namespace, log_dir: Path) -> dict:
    """`python 06_control.py` with this seed; its result.json. The control stops its own swarm on
    every exit; on our timeout or Ctrl-C we stop the control (SIGTERM, then SIGKILL) and wait."""
    # The options a user sets in the environment (SWARM_FITNESS, ...) hold; the study's own win.
    settings = SwarmSettings.from_env().replace(
        host="127.0.0.1", port=free_port(), log_dir=log_dir, seed=seed, evolution=evolution, models=args.models,
        envs=args.envs, episodes=args.episodes, learning_rate=args.learning_rate, eval_episodes=args.eval_episodes,
        rounds=0, max_steps=args.max_steps, max_seconds=args.max_seconds)
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    log_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with open(log_dir / "control.out", "w") as output:
        process = subprocess.Popen([sys.executable, "06_control.py"], cwd=ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # the budget, the swarm's start-up and a last evaluation and stop
            process.wait(timeout=args.max_seconds + 300)
        except BaseException:  # our timeout, or Ctrl-C: no swarm may outlive the study
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            raise
    if process.returncode != 0:
        raise RuntimeError(f"06_control.py exited with {process.returncode}; see {log_dir / 'control.out'}")
    result = json.loads((log_dir / "result.json").read_text())
    result["total_seconds"] = time.monotonic() - began  # with the swarm's start and stop
    result["curve"] = [(row["steps"], row["eval_mean"]) for row in result["history"]]
    return result


def run_sb3(seed: int, args: argparse.Namespace) -> dict:
    """stable-baselines3's A2C, default hyper-parameters, one environment, in this process."""
    import gymnasium
    import torch
    from stable_baselines3 import A2C
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)  # one process, one core: as each swarm model
    eval_env = gymnasium.make(ENV_ID)
    episodes = args.eval_episodes

    class EvaluateUntilSolved(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.curve: list[tuple[int, float]] = []
            self.solved_at: int | None = None

        def _on_step(self) -> bool:
            if self.num_timesteps % args.sb3_eval_every:
                return time.monotonic() - began < args.max_seconds
            scores = []
            for episode in range(episodes):
                obs, _ = eval_env.reset(seed=seed * 1000 + len(self.curve) * episodes + episode)
                score, done = 0.0, False
                while not done:
                    action, _ = self.model.predict(obs, deterministic=True)
                    obs, reward, terminated, truncated, _ = eval_env.step(action)
                    score, done = score + reward, terminated or truncated
                scores.append(score)
            self.curve.append((self.num_timesteps, float(np.mean(scores))))
            if np.mean(scores) >= SOLVED_AT:
                self.solved_at = self.num_timesteps
            return self.solved_at is None and time.monotonic() - began < args.max_seconds

    began = time.monotonic()
    model = A2C("MlpPolicy", ENV_ID, seed=seed, device="cpu")
    callback = EvaluateUntilSolved()
    model.learn(total_timesteps=args.max_steps, callback=callback)
    seconds = time.monotonic() - began
    return dict(solved=callback.solved_at is not None, steps=callback.solved_at or model.num_timesteps,
                seconds=seconds, total_seconds=seconds, curve=callback.curve)


def summary_rows(results: list[dict]) -> list[str]:
    lines = [f"{'variant':<22} {'seed':>4} {'solved':>6} {'train steps':>11} {'wall s':>7} {'with start':>10}"]
    for r in results:
        lines.append(f"{r['variant']:<22} {r['seed']:>4} {'yes' if r['solved'] else 'NO':>6} {r['steps']:>11,}"
                     f" {r['seconds']:>7.0f} {r['total_seconds']:>10.0f}")
    lines.append("")
    lines.append(f"{'variant':<22} {'solved':>6} {'median steps':>12} {'median wall s':>13}  (of the solved runs)")
    for variant in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == variant]
        solved = [r for r in runs if r["solved"]]
        median_steps = f"{np.median([r['steps'] for r in solved]):,.0f}" if solved else "-"
        median_wall = f"{np.median([r['seconds'] for r in solved]):.0f}" if solved else "-"
        lines.append(f"{variant:<22} {len(solved)}/{len(runs):<4} {median_steps:>12} {median_wall:>13}")
    return lines


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in results))
    fig, axes = plt.subplots(1, len(variants), figsize=(4.4 * len(variants), 3.8), sharex=True, sharey=True,
                             squeeze=False)
    axes = axes[0]
    for ax, variant in zip(axes, variants):
        for r in (r for r in results if r["variant"] == variant):
            steps, means = zip(*r["curve"]) if r["curve"] else ((), ())
            ax.plot(steps, means, ".-", ms=3, label=f"seed {r['seed']}" + ("" if r["solved"] else " (not solved)"))
        ax.axhline(SOLVED_AT, ls=":", color="grey")
        ax.set(title=variant, xlabel="training environment steps", ylim=(0, 510))
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("evaluation mean (deterministic)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--envs", type=int, default=10, help="SWARM_ENVS for the swarm")
    parser.add_argument("--episodes", type=int, default=10, help="SWARM_EPISODES: training episodes per round")
    parser.add_argument("--learning-rate", type=float, default=0.002,
                        help="SWARM_LEARNING_RATE for the swarm's models (the tutorial's: 0.0007)")
    parser.add_argument("--eval-episodes", type=int, default=10, help="SB3's evaluation (the swarm: SWARM_EVAL_EPISODES)")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--sb3-eval-every", type=int, default=2_000, help="environment steps between SB3's evaluations")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "study")
    parser.add_argument("--variants", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3],
                        help="which to run: 1 swarm + evolution, 2 swarm without, 3 SB3's A2C")
    parser.add_argument("--replot", action="store_true", help="table and plot again from OUT/study.json; run nothing")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 models, 1 env, a budget of 300 steps")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.models, args.envs, args.episodes = args.seeds[:1], 2, 1, 2
        args.max_steps, args.sb3_eval_every = 300, 100
    args.out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        study = json.loads((args.out / "study.json").read_text())
        report(study["results"], args.out, study["title"])
        return
    options = {k: v for k, v in os.environ.items() if k in ("SWARM_FITNESS", "SWARM_NORMALIZE_ADVANTAGE")}
    title = (f"CartPole-v1: swarm of {args.models} models, SWARM_ENVS={args.envs}, {args.episodes} episodes per round, "
             f"learning rate {args.learning_rate:g}"
             f"{', ' + ', '.join(f'{k}={v}' for k, v in options.items()) if options else ''}; "
             f"budget {args.max_steps:,} steps / {args.max_seconds:.0f} s")
    print(title, flush=True)

    results = []
    for seed in args.seeds:
        for variant in (VARIANTS[i - 1] for i in args.variants):
            print(f"seed {seed}: {variant} ...", end=" ", flush=True)
            if variant == VARIANTS[2]:
                result = run_sb3(seed, args)
            else:
                evolution = variant == VARIANTS[0]
                result = run_swarm(seed, evolution, args, args.out / f"{'evo' if evolution else 'noevo'}-seed{seed}")
            result.update(variant=variant, seed=seed)
            results.append(result)
            print(f"{'solved' if result['solved'] else 'NOT solved'}: {result['steps']:,} steps, "
                  f"{result['seconds']:.0f} s", flush=True)
            (args.out / "study.json").write_text(json.dumps(dict(title=title, results=results), indent=1))

    report(results, args.out, title)


def report(results: list[dict], out: Path, title: str) -> None:
    print()
    print("\n".join(summary_rows(results)))
    plot(results, out / "study.png", title)
    print(f"\nplot: {out / 'study.png'}; numbers: {out / 'study.json'}")


if __name__ == "__main__":
    main()

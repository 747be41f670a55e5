"""bench/throughput.py: how fast is the swarm, compared with the same work in one process?

One run measures, and prints as a table and as a final JSON line:
- compute_only_sps: the same models doing the same per-step work (forward, rollout storage, an
  A2C update every 5 steps, the aggregation, the environment step), called directly in ONE
  process: no sockets, no JSON;
- swarm_sps: the real swarm (server, aggregation, environment, evolution and the models as
  separate processes on loopback, launched like 06_control.py, training on), over a fixed
  number of environment steps after a warm-up;
- ratio = swarm_sps / compute_only_sps (on 2 cores the ceiling is about 2);
- ready_s: launch until every component and model answers a ping;
- evolution_s: EVOLUTION sent until EVO_DONE (the median of three);
- pss_mb: the peak total proportional set size (PSS) of all swarm processes, sampled every 5 s.

It also prints where the CPU went while the swarm was measured: cores busy and CPU milliseconds per
(batched) step for each kind of process, and for the whole machine.

    python bench/throughput.py                       # 20 models, 1 environment
    python bench/throughput.py --envs 32             # 32 CartPole copies per step
    python bench/throughput.py --quick               # 4 models, short: under a minute
    python bench/throughput.py --launcher fork       # models forked from one process (swarm_rl/fork.py)
    python bench/throughput.py --per-process 10      # 10 models hosted in each model process
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from swarm_rl.control import ControlClient
from swarm_rl.launcher import ManagedSwarm, free_port
from swarm_rl.protocol import (DETERMINISTIC, ENV_DONE, EVO_DONE, EVOLUTION, NR_OF_EPISODE, ROOT_ID, STEPS)
from swarm_rl.scripts import PROJECT_DIR, load_script
from swarm_rl.environments import DEFAULT_ENV_ID
from swarm_rl.settings import SwarmSettings


def compute_only_sps(models: int, envs: int, steps: int, warmup: int) -> float:
    """Environment steps per second of the swarm's per-step work in this one process."""
    import gymnasium
    import torch

    torch.set_num_threads(1)  # as each model process
    model = load_script("02_model.py")
    aggregation = load_script("03_aggregation.py")
    environment = load_script("04_environment.py")
    settings = SwarmSettings(models=models, envs=envs, learning_rate=7e-4, operators="genetic")
    model_states = [model.new_state(settings, [f"model{index}"]) for index in range(models)]
    cartpole = environment.EnvironmentCopies([gymnasium.make(DEFAULT_ENV_ID) for _ in range(envs)])
    aggregation_state = aggregation.new_state(SwarmSettings(models=models, envs=envs))  # the swarm's defaults
    message = environment.start_run({NR_OF_EPISODE: 10**9, DETERMINISTIC: False, ROOT_ID: "bench"},
                                    cartpole)
    done_steps, started = 0, None
    while done_steps < warmup + steps:
        if done_steps >= warmup and started is None:
            started, counted_from = time.perf_counter(), done_steps
        action = None
        for state in model_states:
            (reply,) = model.forward(message, state)
            reply[ROOT_ID] = "bench"
            action = aggregation.aggregate(reply, aggregation_state) or action
        message = environment.step({**action, ROOT_ID: "bench"}, cartpole)[0]  # the observation; then any report
        done_steps += envs
    return (done_steps - counted_from) / (time.perf_counter() - started)


class PeakPSS:
    """Samples the total PSS of a set of processes every `interval` seconds, in a thread, and
    whenever `sample()` is called. A sample reads /proc/<pid>/smaps_rollup of every process, about
    5 ms per torch process: sampled rarely, so the measurement does not slow the swarm."""

    def __init__(self, pids: callable, interval: float = 5.0) -> None:
        self.pids, self.interval, self.peak_mb = pids, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/smaps_rollup") as rollup:
                    total += next(int(line.split()[1]) for line in rollup if line.startswith("Pss:")) * 1024
            except (OSError, StopIteration):  # gone meanwhile
                pass
        self.peak_mb = max(self.peak_mb, total / 2**20)
        return total / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakPSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def swarm_processes(swarm: ManagedSwarm) -> dict[int, str]:
    """Every process of the swarm, by pid, with its kind (server, aggregation, environment,
    evolution, model): the components and whatever they started (forked models)."""
    kinds = {}
    for name, pid in swarm.pids().items():
        kinds[pid] = "model" if name.startswith("model") else name
        with contextlib.suppress(psutil.Error):
            kinds.update({child.pid: "model" for child in psutil.Process(pid).children(recursive=True)})
    return kinds


def cpu_seconds(kinds: dict[int, str]) -> dict[str, float]:
    """CPU seconds (user + system) used so far, summed by kind, and `machine` for all CPUs."""
    used = collections.defaultdict(float)
    for pid, kind in kinds.items():
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            used[kind] += times.user + times.system
    machine = psutil.cpu_times()
    used["machine"] = machine.user + machine.nice + machine.system
    return used


def measure_swarm(settings: SwarmSettings, steps: int, warmup: int) -> dict:
    """Launch the swarm as 06_control.py does (SWARM_LAUNCHER, SWARM_MODELS_PER_PROCESS from
    `settings`), and time readiness, training steps and evolution."""
    swarm = ManagedSwarm(PROJECT_DIR / "swarm.yaml", settings)
    results: dict = {}
    launched = time.monotonic()
    try:
        with PeakPSS(lambda: list(swarm_processes(swarm))) as memory:
            swarm.start()
            swarm.start_models()
            control = ControlClient(swarm, name="bench")
            swarm.wait_ready(control, ["aggregation", "environment", "evolution"], settings.models)
            results["ready_s"] = time.monotonic() - launched
            memory.sample()

            # A training run longer than we need; progress messages (one per finished episode)
            # carry the step count. The clock starts at the first report past the warm-up.
            marks: list[tuple[float, int]] = []

            kinds, cpu = swarm_processes(swarm), []

            def measured(message: dict) -> bool:
                now, done = time.monotonic(), message[STEPS]
                if not marks and done >= warmup:
                    marks.append((now, done))
                    cpu.append(cpu_seconds(kinds))
                elif marks and done >= marks[0][1] + steps:
                    marks.append((now, done))
                    cpu.append(cpu_seconds(kinds))
                    return True  # measured: stop waiting for this run
                return False

            control.request({NR_OF_EPISODE: 10**9, DETERMINISTIC: False}, until=ENV_DONE,
                            timeout=60, progress=measured)
            memory.sample()
            (t0, s0), (t1, s1) = marks
            results["swarm_sps"] = (s1 - s0) / (t1 - t0)
            results["measured_steps"] = s1 - s0
            # Where the CPU went while the clock ran: per kind of process, per batched step.
            batched_steps = (s1 - s0) / settings.envs
            results["profile"] = {kind: ((cpu[1][kind] - cpu[0][kind]) / (t1 - t0),
                                         (cpu[1][kind] - cpu[0][kind]) / batched_steps * 1e3) for kind in cpu[1]}
            # End the endless run with a short one, so the evolution is timed on a quiet swarm.
            control.request({NR_OF_EPISODE: 1, DETERMINISTIC: True}, until=ENV_DONE)
            evolution_times = []
            for _ in range(3):
                began = time.monotonic()
                control.request({EVOLUTION: True}, until=EVO_DONE)
                evolution_times.append(time.monotonic() - began)
            results["evolution_s"] = statistics.median(evolution_times)
            results["evolution_runs_s"] = evolution_times
            memory.sample()
        results["pss_mb"] = memory.peak_mb
        control.close()
    finally:
        swarm.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, help="models (default 20; 4 with --quick)")
    parser.add_argument("--per-process", type=int, default=1,
                        help="SWARM_MODELS_PER_PROCESS: models hosted in each model process (default 1)")
    parser.add_argument("--envs", type=int, default=1, help="SWARM_ENVS: CartPole copies stepped together")
    parser.add_argument("--steps", type=int, help="measured environment steps (default 1500 per environment)")
    parser.add_argument("--warmup", type=int, help="environment steps before the clock starts (default 300 per env)")
    parser.add_argument("--quick", action="store_true", help="4 models and short runs: under a minute")
    parser.add_argument("--skip-compute", action="store_true", help="measure the swarm only")
    parser.add_argument("--launcher", choices=["swarm", "fork"], default="swarm",
                        help="SWARM_LAUNCHER: swarm, one interpreter per model process, the tutorial's way "
                             "(default); fork: swarm_rl/fork.py, forks of one process that imported torch once")
    parser.add_argument("--log-dir", type=Path, help="the components' logs (default: a new temporary folder)")
    args = parser.parse_args()
    args.models = args.models or (4 if args.quick else 20)
    steps = args.steps or (300 if args.quick else 1500) * args.envs
    warmup = args.warmup or (100 if args.quick else 300) * args.envs

    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="swarm-bench-"))
    settings = SwarmSettings(port=free_port(), models=args.models, envs=args.envs, log_dir=log_dir,
                             models_per_process=args.per_process, launcher=args.launcher,
                             start_timeout=180.0, reply_timeout=60.0)
    print(f"benchmark: {args.models} models ({args.per_process} per process), {args.envs} environment(s), "
          f"{steps} measured steps after {warmup} warm-up steps, launcher {args.launcher}, {os.cpu_count()} CPUs; "
          f"logs in {log_dir}", flush=True)

    compute = None
    if not args.skip_compute:
        compute = compute_only_sps(args.models, args.envs, steps, warmup)
        print(f"compute only (one process):  {compute:9.1f} env steps/s", flush=True)
    swarm = measure_swarm(settings, steps, warmup)
    ratio = swarm["swarm_sps"] / compute if compute else None

    rows = [("compute_only_sps", compute, "env steps/s, one process, no messaging"),
            ("swarm_sps", swarm["swarm_sps"], f"env steps/s, {swarm['measured_steps']} steps after warm-up"),
            ("ratio", ratio, "swarm / compute only"),
            ("ready_s", swarm["ready_s"], "launch until all answer"),
            ("evolution_s", swarm["evolution_s"],
             "median of " + ", ".join(f"{t:.2f}" for t in swarm["evolution_runs_s"]) + " s"),
            ("pss_mb", swarm["pss_mb"], "peak total PSS of the swarm's processes")]
    print(f"\nwhere the CPU went while the swarm was measured ({os.cpu_count()} CPUs):")
    print(f"{'process':<14}{'cores busy':>11}{'CPU ms per step':>17}")
    for kind, (cores, ms) in sorted(swarm["profile"].items(), key=lambda item: -item[1][0]):
        print(f"{kind:<14}{cores:>11.2f}{ms:>17.2f}")
    print(f"\n{'figure':<18}{'value':>10}  note")
    for name, value, note in rows:
        print(f"{name:<18}{'n/a' if value is None else f'{value:10.2f}':>10}  {note}")
    summary = {"models": args.models, "per_process": args.per_process, "envs": args.envs, "launcher": args.launcher,
               "steps": swarm["measured_steps"],
               **{name: None if value is None else round(value, 3) for name, value, _ in rows}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""bench/healing.py: does a run go on when its model processes are killed, and what does it cost?

Runs `06_control.py` over sockets (the defaults: CartPole-v1, 20 models, one process each) and
SIGKILLs `--kills` model processes, each a random model at a random moment of a round of its own
(from round 2 on; a second death in one round stops a run by design). Per kill it prints the
seconds from the kill to the control's "restarted" line (the swarm ready again, every member
back to the last checkpoint) and the training steps it lost against the steps of the round it
interrupted; per run whether it solved, its steps and its wall time. The last line is one JSON object with every figure.

    python bench/healing.py                      # 3 runs, 5 kills each
    python bench/healing.py --runs 1 --kills 2 --set SWARM_MODELS=4
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from swarm_rl.launcher import free_port
from swarm_rl.scripts import PROJECT_DIR


def model_pids(control: psutil.Process) -> dict[str, int]:
    """The control's model processes, by name."""
    pids = {}
    for child in control.children():
        try:
            name = child.environ().get("SWARM_COMPONENT_NAME", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if name.startswith("model"):
            pids[name] = child.pid
    return pids


def one_run(run: int, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed * 1000 + run)
    with tempfile.TemporaryDirectory(prefix="healing-") as folder:
        log_dir = Path(folder) / "logs"
        env = {**os.environ, **dict(args.set), "SWERGIO_PORT": str(free_port()), "SWARM_LOG_DIR": str(log_dir),
               "PYTHONUNBUFFERED": "1"}
        control = subprocess.Popen([sys.executable, str(PROJECT_DIR / "06_control.py")], cwd=folder, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines: list[tuple[float, str]] = []
        new_line = threading.Condition()

        def read() -> None:
            for line in control.stdout:
                with new_line:
                    lines.append((time.monotonic(), line))
                    new_line.notify_all()

        def wait_for(text: str, after: int, timeout: float) -> int | None:
            """The index of the first line from `after` on that holds `text`."""
            deadline = time.monotonic() + timeout
            with new_line:
                while True:
                    found = next((i for i in range(after, len(lines)) if text in lines[i][1]), None)
                    if found is not None or control.poll() is not None or time.monotonic() > deadline:
                        return found
                    new_line.wait(timeout=0.2)

        threading.Thread(target=read, daemon=True).start()
        began, kills = time.monotonic(), []
        try:
            at = wait_for("ROUND 2", 0, 600)
            while at is not None and len(kills) < args.kills:
                time.sleep(rng.uniform(0.0, args.within))
                pids = model_pids(psutil.Process(control.pid))
                if control.poll() is not None or not pids:
                    break
                victim = rng.choice(sorted(pids))
                os.kill(pids[victim], signal.SIGKILL)
                killed_at, index = time.monotonic(), len(lines)
                round_nr = next(int(text.split()[1].split("/")[0]) for _, text in reversed(lines[:index])
                                if text.startswith("ROUND "))
                healed = wait_for(f"restarted {victim} in", index, 120)
                kills.append(dict(round=round_nr, model=victim,
                                  seconds=None if healed is None else lines[healed][0] - killed_at))
                if healed is None:
                    break
                at = wait_for("ROUND ", healed, 600)  # the next kill in a later round
            code = control.wait(timeout=args.timeout)
        finally:
            if control.poll() is None:
                os.killpg(control.pid, signal.SIGTERM)
                try:
                    control.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(control.pid, signal.SIGKILL)
                    control.wait()
        seconds = time.monotonic() - began
        if code != 0:
            raise SystemExit(f"run {run}: 06_control.py exited with {code}:\n" + "".join(t for _, t in lines[-30:]))
        history = json.loads((log_dir / "result.json").read_text())["history"]
    return dict(run=run, solved=history[-1]["confirmed"] is True, steps=history[-1]["steps"], rounds=len(history),
                seconds=seconds, kills=kills, restarts=restart_costs(history))


def restart_costs(history: list[dict]) -> list[dict]:
    """Per round with restarts: the steps lost and the steps the round itself trained on."""
    costs, before = [], 0
    for row in history:
        if row.get("restarted"):
            costs.append(dict(round=row["round"], restarted=row["restarted"], lost_steps=row["lost_steps"],
                              round_steps=row["steps"] - before - row["lost_steps"]))
        before = row["steps"]
    return costs


def setting(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    if not name.startswith(("SWARM_", "SWERGIO_")) or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SWARM_NAME=VALUE")
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5, help="kills per run, each in a round of its own")
    parser.add_argument("--within", type=float, default=4.0, help="a kill comes up to this many seconds into its round")
    parser.add_argument("--seed", type=int, default=0, help="of the kills' moments and victims")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a run may take")
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="SWARM_NAME=VALUE")
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        result = one_run(run, args)
        runs.append(result)
        print(f"run {run}: {'solved' if result['solved'] else 'NOT solved'} at {result['steps']:,} steps, "
              f"{result['rounds']} rounds, {result['seconds']:.0f} s", flush=True)
        for kill in result["kills"]:
            healed = "never" if kill["seconds"] is None else f"{kill['seconds']:.1f} s"
            print(f"  round {kill['round']}: {kill['model']} killed, going on after {healed}", flush=True)
        for cost in result["restarts"]:
            print(f"  round {cost['round']}: restarted {cost['restarted']}, {cost['lost_steps']:,} steps lost "
                  f"(the round trained on {cost['round_steps']:,})", flush=True)
    times = [k["seconds"] for r in runs for k in r["kills"] if k["seconds"] is not None]
    kills = sum(len(r["kills"]) for r in runs)
    print(f"{sum(r['solved'] for r in runs)}/{len(runs)} solved; {len(times)}/{kills} kills healed; "
          f"death to going on: median {np.median(times):.1f} s, max {max(times):.1f} s" if times else "no kill healed")
    print(json.dumps(dict(settings=dict(args.set), runs=runs)))


if __name__ == "__main__":
    main()

"""bench/scale.py: the swarm at 20, 100, 200 and 1,000 models, with one and with 32 CartPole copies.

For every size it launches the swarm as 06_control.py does, with the models hosted in
`--processes` model processes (SWARM_MODELS_PER_PROCESS = models / processes, rounded up) and
started by `--launcher`, and measures what bench/throughput.py measures of a swarm: ready_s,
env steps/s while training, evolution_s (median of three) and peak PSS. Writes scale.json,
scale.md (the table) and scale.png (the plot) to `--out`.

    python bench/scale.py --out docs/scale                       # about 4 minutes
    python bench/scale.py --models 20 100 --envs 1 --out /tmp/s  # a part of it
    python bench/scale.py --models 1000 --envs 1 --operators genetic --out docs/scale/genetic
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from swarm_rl.launcher import free_port
from swarm_rl.scripts import load_script
from swarm_rl.settings import SwarmSettings


def measure(models: int, envs: int, processes: int, launcher: str, operators: str, log_dir: Path) -> dict:
    per_process = math.ceil(models / processes)
    settings = SwarmSettings(port=free_port(), models=models, envs=envs, models_per_process=per_process,
                             launcher=launcher, operators=operators, log_dir=log_dir,
                             start_timeout=300.0, reply_timeout=120.0)
    # the same number of batched steps at every size: 300 measured after 100 of warm-up
    throughput = load_script("bench/throughput.py")  # a sibling script, not a package
    result = throughput.measure_swarm(settings, steps=300 * envs, warmup=100 * envs)
    return {"models": models, "per_process": per_process, "envs": envs, "launcher": launcher, "operators": operators,
            **{key: round(result[key], 3) for key in ("ready_s", "swarm_sps", "evolution_s", "pss_mb")},
            "evolution_runs_s": [round(t, 3) for t in result["evolution_runs_s"]]}


def table(rows: list[dict]) -> str:
    lines = ["| models | per process | envs | ready s | env steps/s | model steps/s | evolution s | peak PSS MB |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['models']:,} | {r['per_process']} | {r['envs']} | {r['ready_s']:.1f} | {r['swarm_sps']:,.0f} | "
              f"{r['swarm_sps'] * r['models']:,.0f} | {r['evolution_s']:.2f} | {r['pss_mb']:,.0f} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [("swarm_sps", "env steps/s"), ("ready_s", "ready (s)"), ("evolution_s", "evolution (s)"),
               ("pss_mb", "peak PSS (MB)")]
    fig, axes = plt.subplots(1, len(figures), figsize=(16, 3.8))
    for axis, (key, label) in zip(axes, figures):
        for envs in sorted({r["envs"] for r in rows}):
            mine = [r for r in rows if r["envs"] == envs]
            axis.plot([r["models"] for r in mine], [r[key] for r in mine], marker="o", label=f"{envs} env(s)")
        axis.set_xscale("log")
        if key == "swarm_sps":
            axis.set_yscale("log")
        axis.set_xlabel("models")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    axes[0].legend()
    processes = math.ceil(rows[0]["models"] / rows[0]["per_process"])
    fig.suptitle(f"swarm size: {rows[0]['launcher']} launcher, the models in {processes} processes, "
                 f"{rows[0]['operators']} evolution")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, nargs="+", default=[20, 100, 200, 1000])
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--processes", type=int, default=2, help="model processes (default 2: one per core)")
    parser.add_argument("--launcher", choices=["swarm", "fork"], default="swarm", help="SWARM_LAUNCHER")
    parser.add_argument("--operators", choices=["pbt", "genetic"], default="pbt",
                        help="SWARM_OPERATORS: pbt sends new weights to a quarter of the models, genetic to all")
    parser.add_argument("--out", type=Path, required=True, help="folder for scale.json, scale.md and scale.png")
    parser.add_argument("--log-dir", type=Path, help="the components' logs (default: a new temporary folder)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="swarm-scale-"))
    rows = []
    for envs in args.envs:
        for models in args.models:
            rows.append(measure(models, envs, args.processes, args.launcher, args.operators, log_dir))
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "scale.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "scale.md").write_text(table(rows))
    plot(rows, args.out / "scale.png")
    print(table(rows))


if __name__ == "__main__":
    main()

"""bench/records_figure.py: a run's TensorBoard scalars drawn with matplotlib, for the docs (the
same curves TensorBoard shows for `runs/`; this machine has no browser to show its own page).

    python bench/records_figure.py runs/latest docs/runs-tensorboard.png
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run's folder (it holds tensorboard/)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(args.run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]

    def series(tag: str) -> tuple[list[int], list[float]]:
        points = events.Scalars(tag)
        return [p.step for p in points], [p.value for p in points]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for tag in ("round/train_mean", "round/eval_mean", "round/after_mean"):
        if tag in tags:
            axes[0].plot(*series(tag), "o-", ms=3, label=tag)
    axes[0].set(title="per round", xlabel="training steps", ylabel="score")
    axes[0].legend()
    for panel, name in ((axes[1], "learning_rate"), (axes[2], "fitness")):
        for tag in sorted(t for t in tags if t.startswith("member/") and t.endswith(f"/{name}")):
            panel.plot(*series(tag), lw=1, alpha=0.7)
        panel.set(title=f"member/<id>/{name}, every member", xlabel="training steps")
    axes[1].set_yscale("log")
    fig.suptitle(f"{args.run.resolve().name}: TensorBoard's scalars")
    fig.savefig(args.out, dpi=90, bbox_inches="tight")
    print(f"{len(tags)} scalar tags; written to {args.out}")


if __name__ == "__main__":
    main()

"""A folder per run: `runs/<env>-<date>-<time>[-seed<N>]/` holds everything a run of the control
writes (logs, checkpoint, results, plot, animation), and `runs/latest` points to the newest."""
from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path

from swarm_rl.settings import SwarmSettings

RUNS = Path("runs")
LATEST = "latest"


def new_run_folder(settings: SwarmSettings, runs: Path = RUNS, now: datetime.datetime | None = None) -> Path:
    """A new, empty folder for a run of `settings`, which `runs/latest` then points to; never one
    that another run holds."""
    now = now or datetime.datetime.now()
    name = f"{settings.env_id}-{now:%Y%m%d-%H%M%S}" + (f"-seed{settings.seed}" if settings.seed is not None else "")
    runs.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        folder = runs / (name if attempt == 1 else f"{name}-{attempt}")
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            point_latest(runs, folder)
            return folder
    raise FileExistsError(f"no free run folder named {name} in {runs}")


def point_latest(runs: Path, folder: Path) -> None:
    """`runs/latest` -> `folder`, replaced in one step (a reader never finds it missing)."""
    link = runs / LATEST
    temporary = runs / f".{LATEST}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(folder.name)
    os.replace(temporary, link)


def latest_checkpoint(runs: Path = RUNS, file_name: str = "swarm.pt") -> Path:
    """The newest run's checkpoint (it may not exist yet)."""
    return runs / LATEST / file_name

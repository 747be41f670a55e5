"""The trebuchet example's settings: the project's runtime settings (server, logs, seed, timeouts)
and the trainer's number of steps, each declared once (see swarm/settings.py).

    python -m trebuchet.settings           # the settings as a Markdown table
    python -m trebuchet.settings --readme  # write that table into trebuchet/README.md
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from swarm.settings import README_END, README_START, RuntimeSettings, setting, whole

README = Path(__file__).resolve().parent / "README.md"


@dataclass(frozen=True)
class TrebuchetSettings(RuntimeSettings):
    """What the trebuchet's components and its run script read from the environment."""

    train_steps: int = setting("TRAIN_STEPS", 1000, whole(1),
                               "training steps (batches of 100 pairs) the trainer runs before it reports and exits")


def readme_with_table(readme: str) -> str:
    """The trebuchet README with the generated settings table between its two markers."""
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{TrebuchetSettings.markdown_table()}\n{README_END}{tail}"


if __name__ == "__main__":
    if "--readme" in sys.argv:
        README.write_text(readme_with_table(README.read_text()))
        print(f"settings table written to {README}")
    else:
        print(TrebuchetSettings.markdown_table())

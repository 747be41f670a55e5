"""The trebuchet example's settings: the project's runtime settings (server, logs, seed, timeouts)
and the trainer's number of steps, each declared once (see swarm_rl/settings.py).

    python -m trebuchet.settings           # the settings as a Markdown table
    python -m trebuchet.settings --readme  # write that table into trebuchet/README.md
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from swarm_rl.settings import RuntimeSettings, readme_with_table, setting, whole

README = Path(__file__).resolve().parent / "README.md"


@dataclass(frozen=True)
class TrebuchetSettings(RuntimeSettings):
    """What the trebuchet's components and its run script read from the environment."""

    train_steps: int = setting("TRAIN_STEPS", 1000, whole(1),
                               "training steps (batches of 100 pairs) the trainer runs before it reports and exits")


if __name__ == "__main__":
    if "--readme" in sys.argv:
        README.write_text(readme_with_table(README.read_text(), TrebuchetSettings))
        print(f"settings table written to {README}")
    else:
        print(TrebuchetSettings.markdown_table())

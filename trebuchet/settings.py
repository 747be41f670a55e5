"""The trebuchet example's settings: the project's runtime settings (server, logs, seed, timeouts)
and the trainer's number of steps, each declared once (see swarm/settings.py).

    python -m trebuchet.settings        # the settings as a Markdown table (the README's)
"""
from __future__ import annotations

from dataclasses import dataclass

from swarm.settings import RuntimeSettings, setting, whole


@dataclass(frozen=True)
class TrebuchetSettings(RuntimeSettings):
    """What the trebuchet's components and its run script read from the environment."""

    train_steps: int = setting("TRAIN_STEPS", 1000, whole(1),
                               "training steps (batches of 100 pairs) the trainer runs before it reports and exits")


if __name__ == "__main__":
    print(TrebuchetSettings.markdown_table())

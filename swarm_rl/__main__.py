"""`python -m swarm_rl [options]` (or `swarm-rl`) runs the swarm as `python 06_control.py` does;
`python -m swarm_rl watch [options]` runs `07_watch.py`. The scripts come with the package."""
from __future__ import annotations

import runpy
import sys

from swarm_rl.scripts import PROJECT_DIR

COMMANDS = {"watch": "07_watch.py"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    script = "06_control.py"
    if argv and argv[0] in COMMANDS:
        script, argv = COMMANDS[argv[0]], argv[1:]
    path = PROJECT_DIR / script
    # The script reads its options from sys.argv, as when it is run by path (and its --help
    # names it: runpy sets argv[0] to the script).
    sys.argv = [str(path), *argv]
    runpy.run_path(str(path), run_name="__main__")


if __name__ == "__main__":
    main()

"""bench/checkpoint_size.py: how big a checkpoint of the default swarm is, and how long saving it takes.

    python bench/checkpoint_size.py          # 20 models, after one training round, in process

Saving is asking every model for its state (STATE; here through the in-memory hub) and writing
the file; over sockets the answers travel through the server as well.
"""
import tempfile
import time
from pathlib import Path

import numpy as np

from swarm_rl import checkpoint
from swarm_rl.local import LocalSwarm
from swarm_rl.settings import SwarmSettings


def main() -> None:
    settings = SwarmSettings(seed=0)
    runner = LocalSwarm(settings)
    runner.start(settings.episodes)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / checkpoint.FILE_NAME
        seconds = []
        for _ in range(10):
            began = time.perf_counter()
            size = checkpoint.save(path, runner.state(), settings, [])
            seconds.append(time.perf_counter() - began)
        began = time.perf_counter()
        checkpoint.load(path)
        load_seconds = time.perf_counter() - began
    print(f"{settings.models} models: checkpoint {size / 1024:.0f} KiB; save (STATE + write) "
          f"median {np.median(seconds) * 1000:.0f} ms over 10; load {load_seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()

"""07_watch.py: a trained swarm, playing.

    python 07_watch.py                                 # the newest run's (runs/latest/swarm.pt), 10 episodes
    python 07_watch.py path/to/swarm.pt --episodes 100
    python 07_watch.py path/to/swarm.pt --render cartpole.gif
    python 07_watch.py path/to/swarm.pt --render cartpole.mp4

The checkpoint's swarm is built in this one process, without a server (`swarm_rl.local`: the scripts'
own handlers), given the checkpoint's members, and plays deterministic episodes with the swarm's
own aggregation, by the checkpoint's SWARM_VOTE (by default the argmax of the members' summed
probabilities). It prints their mean and standard deviation; with --render it also saves one
episode as an animated GIF or an mp4 video (H.264, by the ffmpeg that imageio-ffmpeg bundles).
"""
import argparse
import os
import sys
from pathlib import Path

import gymnasium
import numpy as np

from swarm_rl import checkpoint
from swarm_rl.local import LocalSwarm
from swarm_rl.protocol import SCORES
from swarm_rl.runs import latest_checkpoint
from swarm_rl.settings import RuntimeSettings, SettingsError, SwarmSettings, given_settings

FRAME_EVERY = 2  # every other frame (CartPole: 25 a second) is smooth enough, in half the file


def load_swarm(saved: dict, seed: int | None) -> LocalSwarm:
    """A loaded checkpoint's swarm, in this process (built from the checkpoint's own settings, so
    its size and environment fit): its models hold the checkpoint's weights."""
    settings = SwarmSettings.from_env(saved["settings"]).replace(seed=seed, envs=1, evolution=False)
    swarm = LocalSwarm(settings)
    swarm.restore(saved)
    return swarm


VIDEO_SUFFIXES = (".gif", ".mp4")


def render(swarm: LocalSwarm, path: Path, seed: int | None) -> float:
    """Play one episode on a rendering copy of the environment and save it as a GIF or an mp4
    (by the file's suffix); its score."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # no screen needed: pygame draws into memory
    from PIL import Image

    env = gymnasium.make(swarm.settings.env_id, render_mode="rgb_array")
    observation, _ = env.reset(seed=seed)
    frames, score, done = [env.render()], 0.0, False
    while not done:
        observation, reward, terminated, truncated, _ = env.step(int(swarm.actions([observation.tolist()])[0]))
        score += float(reward)
        done = terminated or truncated
        frames.append(env.render())
    env.close()
    images = [Image.fromarray(frame).reduce(2) for frame in frames[::FRAME_EVERY]]
    fps = env.metadata.get("render_fps", 50) / FRAME_EVERY
    if path.suffix.lower() == ".mp4":
        import imageio.v2 as imageio

        # H.264 wants even sides; yuv420p is what every player plays
        imageio.mimwrite(path, [np.asarray(image) for image in images], fps=fps, codec="libx264",
                         macro_block_size=2, pixelformat="yuv420p")
    else:
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return score


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    log_dir_given = "SWARM_LOG_DIR" in given_settings(RuntimeSettings, [])
    parser.add_argument("checkpoint", type=Path, nargs="?",
                        default=(RuntimeSettings.from_env().log_dir / checkpoint.FILE_NAME if log_dir_given
                                 else latest_checkpoint(file_name=checkpoint.FILE_NAME)),
                        help="a swarm.pt written by 06_control.py (default: the newest run's, runs/latest/swarm.pt, "
                             "or swarm.pt in SWARM_LOG_DIR if it is set)")
    parser.add_argument("--episodes", type=int, default=10, help="deterministic episodes to play (default 10)")
    parser.add_argument("--render", type=Path, metavar="FILE.gif|FILE.mp4",
                        help="also save one episode as an animated GIF or an mp4 video")
    parser.add_argument("--seed", type=int, help="the episodes' starting states (default: fresh ones)")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    if args.render and args.render.suffix.lower() not in VIDEO_SUFFIXES:
        parser.error(f"--render {args.render}: the file must end in .gif or .mp4")
    if not args.checkpoint.is_file():
        parser.error(f"no checkpoint at {args.checkpoint}: train one with `python 06_control.py` first")
    try:
        saved = checkpoint.load(args.checkpoint)
    except SettingsError as error:  # one line, status 2, as any bad argument
        print(f"{parser.prog}: {'; '.join(error.problems)}", file=sys.stderr)
        sys.exit(2)
    swarm, history = load_swarm(saved, args.seed), saved["history"]
    trained = f"after {len(history)} rounds, {history[-1]['steps']:,} training steps" if history else "untrained"
    scores = np.array(swarm.play(args.episodes)[SCORES])
    print(f"{swarm.settings.env_id}, {swarm.settings.models} models ({trained}): {scores.mean():.1f} ± {scores.std():.1f} "
          f"over {args.episodes} episodes (min {scores.min():g}, max {scores.max():g})")
    if args.render:
        score = render(swarm, args.render, args.seed)
        print(f"one episode (score {score:g}) saved to {args.render}")


if __name__ == "__main__":
    main()

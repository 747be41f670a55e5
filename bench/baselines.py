"""The study's single-agent arms: stable-baselines3's A2C with its defaults, and A2C and PPO with
the RL Zoo's published hyperparameters, each trained in one process and judged as the swarm is.

The Zoo's values are from DLR-RM/rl-baselines3-zoo, `hyperparams/a2c.yml` (commit c6c209e) and
`hyperparams/ppo.yml` (commit 208b6fd); its LunarLander-v2 entries serve LunarLander-v3, the
same game. `lin_x` is a schedule from x down to 0 over the run's budget (the Zoo's over its own
`n_timesteps`); `normalize` is VecNormalize of observations and rewards, whose observation
statistics the evaluation uses too.
"""
from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np

from swarm_rl.rounds import CONFIRM_EPISODES

# arm -> env id -> (algorithm, n_envs, normalize, keyword arguments)
ZOO: dict[str, dict[str, tuple[str, int, bool, dict[str, Any]]]] = {
    "sb3-a2c-zoo": {
        "CartPole-v1": ("A2C", 8, False, dict(ent_coef=0.0)),
        "Acrobot-v1": ("A2C", 16, True, dict(ent_coef=0.0)),
        "LunarLander-v3": ("A2C", 8, False, dict(gamma=0.995, n_steps=5, learning_rate="lin_0.00083", ent_coef=1e-5)),
    },
    "sb3-ppo-zoo": {
        "CartPole-v1": ("PPO", 8, False, dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                                               ent_coef=0.0, learning_rate="lin_0.001", clip_range="lin_0.2")),
        "Acrobot-v1": ("PPO", 16, True, dict(n_steps=256, gae_lambda=0.94, gamma=0.99, n_epochs=4, ent_coef=0.0)),
        "LunarLander-v3": ("PPO", 16, False, dict(n_steps=1024, batch_size=64, gae_lambda=0.98, gamma=0.999,
                                                  n_epochs=4, ent_coef=0.01)),
    },
}
ARMS = ["sb3-a2c", *ZOO]


class Recipe(NamedTuple):
    algorithm: str
    n_envs: int
    normalize: bool
    kwargs: dict[str, Any]


def recipe(arm: str, env_id: str) -> Recipe:
    """What an arm trains on `env_id`; a ValueError for an environment the Zoo has no entry for."""
    if arm == "sb3-a2c":
        return Recipe("A2C", 1, False, {})
    if env_id not in ZOO[arm]:
        raise ValueError(f"{arm} has no RL Zoo hyperparameters for {env_id} (it has {', '.join(ZOO[arm])})")
    return Recipe(*ZOO[arm][env_id])


def describe(arm: str, env_id: str) -> str:
    made = recipe(arm, env_id)
    if arm == "sb3-a2c":
        return "stable-baselines3 A2C, its defaults"
    return f"stable-baselines3 {made.algorithm}, RL Zoo: {made.n_envs} envs{', normalized' if made.normalize else ''}, " \
           + ", ".join(f"{key}={value}" for key, value in made.kwargs.items())


def schedules(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Zoo's `lin_x` values as SB3 schedules (x times the progress remaining)."""
    def linear(start: float):
        return lambda progress_remaining: progress_remaining * start
    return {key: linear(float(value[4:])) if isinstance(value, str) and value.startswith("lin_") else value
            for key, value in kwargs.items()}


def run(arm: str, seed: int, env_id: str, threshold: float, budget: int, eval_every: int, eval_episodes: int,
        max_seconds: float) -> dict:
    """Train until a `eval_episodes` deterministic evaluation every `eval_every` steps reaches
    `threshold` and 100 more confirm it, or the budget runs out."""
    import gymnasium
    import stable_baselines3
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)  # one process, one core: as each swarm model
    made = recipe(arm, env_id)
    # SB3's defaults as a user calls them: the id, which SB3 makes and seeds itself
    env = env_id if arm == "sb3-a2c" else make_vec_env(env_id, n_envs=made.n_envs, seed=seed)
    if made.normalize:
        env = VecNormalize(env, gamma=made.kwargs.get("gamma", 0.99))
    eval_env = gymnasium.make(env_id)
    eval_env.reset(seed=seed + 10_000)  # the evaluation episodes: their own seed

    def mean_score(model, episodes: int) -> float:
        normalizer = model.get_vec_normalize_env()
        scores = []
        for _ in range(episodes):
            obs, _ = eval_env.reset()
            score, done = 0.0, False
            while not done:
                seen = normalizer.normalize_obs(obs) if normalizer is not None else obs
                action, _ = model.predict(seen, deterministic=True)
                obs, reward, terminated, truncated, _ = eval_env.step(action)
                score, done = score + float(reward), terminated or truncated
            scores.append(score)
        return float(np.mean(scores))

    class EvaluateUntilSolved(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.curve: list[tuple[int, float]] = []
            self.solved_at: int | None = None
            self.next_evaluation = eval_every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_evaluation:  # n_envs steps at a time
                self.next_evaluation += eval_every
                score = mean_score(self.model, eval_episodes)
                self.curve.append((self.num_timesteps, score))
                if score >= threshold and mean_score(self.model, CONFIRM_EPISODES) >= threshold:
                    self.solved_at = self.num_timesteps
            return (self.solved_at is None and self.num_timesteps < budget
                    and (max_seconds <= 0 or time.monotonic() - began < max_seconds))

    began = time.monotonic()
    algorithm = getattr(stable_baselines3, made.algorithm)
    model = algorithm("MlpPolicy", env, seed=seed, device="cpu", **schedules(made.kwargs))
    callback = EvaluateUntilSolved()
    model.learn(total_timesteps=budget, callback=callback)
    return dict(arm=arm, seed=seed, solved=callback.solved_at is not None,
                steps=callback.solved_at or model.num_timesteps, seconds=time.monotonic() - began, spread=None,
                curve=callback.curve)

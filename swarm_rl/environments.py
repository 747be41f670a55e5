"""The swarm's environment (SWARM_ENV_ID, default the tutorial's CartPole-v1): any gymnasium
environment with a flat Box observation and Discrete actions; "solved" is its own reward threshold."""
from __future__ import annotations

import gymnasium

DEFAULT_ENV_ID = "CartPole-v1"


def spaces(env_id: str = DEFAULT_ENV_ID) -> tuple[gymnasium.spaces.Box, gymnasium.spaces.Discrete]:
    """The observation and action spaces, from the environment itself."""
    env = gymnasium.make(env_id)
    env.close()
    return env.observation_space, env.action_space


def environment_problem(env_id: str) -> str | None:
    """None for an environment the swarm can play; else why it cannot."""
    try:
        observation_space, action_space = spaces(env_id)
    except Exception as error:  # gymnasium raises several kinds for an id it cannot make
        return f"gymnasium cannot make it ({type(error).__name__}: {error})"
    if not isinstance(observation_space, gymnasium.spaces.Box) or len(observation_space.shape) != 1:
        return f"its observations are {observation_space}; the models need a flat Box"
    if not isinstance(action_space, gymnasium.spaces.Discrete):
        return f"its actions are {action_space}; the aggregation needs Discrete actions"
    return None


# The most an episode can return, where it is known: a confirmation stops once even that could
# not bring the mean to the threshold.
BEST_RETURNS = {"CartPole-v1": 500.0, "Acrobot-v1": 0.0}


def solved_at(env_id: str) -> float | None:
    """The environment's reward threshold (CartPole-v1: 475), or None where it has none."""
    threshold = gymnasium.spec(env_id).reward_threshold
    return None if threshold is None else float(threshold)

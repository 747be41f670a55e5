"""04_environment.py: the game (CartPole-v1, or SWARM_ENV_ID), stepped with the swarm's aggregated action.

The control asks for a number of episodes (a "run"). The environment resets, sends the first
observation, and then answers every ACTION with the next observation, the reward and whether
the episode is done, until the requested episodes are over; then it reports the average score.
With SWARM_ENVS > 1 it steps that many copies at once, and every copy's episodes count.
"""
import time
import uuid
from dataclasses import dataclass, field

import gymnasium
import numpy as np

from swarm_rl.checks import get_actions, get_bool, get_int, get_per_env, unbatch
from swarm_rl.client import Handlers, Reply, SwarmClient
from swarm_rl.component import setup_component
from swarm_rl.protocol import (ACTION, AVG_SCORE, BEHAVIOUR, DETERMINISTIC, DONE, ENDED_AT, ENV_DONE, ENV_PROGRESS, EPISODE,
                               FINAL_OBSERVATION, LENGTHS, NR_OF_EPISODE, OBSERVATION, REWARD, ROOM_ACTION, ROOM_CONTROL,
                               ROOM_OBSERVATION, ROOT_ID, SCORE, SCORES, STATUS, STEPS, TRUNCATED)
from swarm_rl.settings import SwarmSettings

COMPONENT_NAME = "environment"
handlers = Handlers()


@dataclass
class Run:
    """The episodes the control asked for; ROOT_ID tells this run's messages from older ones.

    With several copies the episodes are shared out before the run starts (7 over 3 copies:
    3, 2, 2) and each copy's first episodes are the ones that count. Counting whichever episodes
    end first would favour short ones: an evaluation would report the failures first.
    """
    root_id: str
    episodes: int
    deterministic: bool
    episode_returns: list[float]  # of the episode in progress, one per environment copy
    scores: list[float] = field(default_factory=list)  # the counted episodes, in the order they ended
    lengths: list[int] = field(default_factory=list)  # their lengths, in steps
    ended_at: list[float] = field(default_factory=list)  # when they ended, in seconds from the run's start
    episode_lengths: list[int] = field(default_factory=list)  # of the episode in progress, per copy
    began: float = field(default_factory=time.monotonic)
    steps: int = 0  # environment steps: a step of N copies counts N
    quota: list[int] = field(default_factory=list)  # episodes still to count, per copy
    done_report: dict | None = None  # ENV_DONE, held until the action for the last observation

    def __post_init__(self) -> None:
        copies = len(self.episode_returns)
        self.quota = self.quota or [self.episodes // copies + (i < self.episodes % copies) for i in range(copies)]
        self.episode_lengths = self.episode_lengths or [0] * copies

    @property
    def finished(self) -> bool:
        return len(self.scores) >= self.episodes


@dataclass
class EnvironmentCopies:
    """SWARM_ENVS copies of the environment, stepped together. With one, messages carry a single
    observation, reward and done flag, exactly as in the tutorial; with more, one per copy."""
    envs: list[gymnasium.Env]
    run: Run | None = None
    seed: int | None = None  # of the first reset (copy i: seed + i); later resets follow from it

    def reset(self) -> list:
        seeds = [None] * len(self.envs) if self.seed is None else [self.seed + i for i in range(len(self.envs))]
        self.seed = None
        return unbatch(np.stack([env.reset(seed=seed)[0] for env, seed in zip(self.envs, seeds)]))

    def per_copy(self, values: list):
        """One value per copy; with one copy the value itself (the tutorial's format)."""
        return values[0] if len(self.envs) == 1 else values


@handlers.on(ROOM_CONTROL, reply_to=ROOM_OBSERVATION)
def start_run(msg: dict, state: EnvironmentCopies) -> dict | None:
    """NR_OF_EPISODE from the control: (re)start a run, abandoning any run in progress."""
    if NR_OF_EPISODE not in msg:
        return None  # other control traffic (EVOLUTION, replies) is not ours
    episodes = get_int(msg, NR_OF_EPISODE, minimum=1)
    deterministic = get_bool(msg, DETERMINISTIC)
    root_id = msg.get(ROOT_ID) or uuid.uuid4().hex
    state.run = Run(root_id, episodes, deterministic, [0.0] * len(state.envs))
    return {OBSERVATION: state.reset(), DETERMINISTIC: deterministic, ROOT_ID: root_id}


@handlers.on(ROOM_ACTION, reply_to=ROOM_OBSERVATION)
def step(msg: dict, state: EnvironmentCopies) -> list[dict | Reply] | None:
    """ACTION from the aggregation: step every copy and send what happened to the models; after a
    step that ended an episode, progress to the control, and after the run's last action, ENV_DONE
    with the average score."""
    run = state.run
    if run is None or msg.get(ROOT_ID, run.root_id) != run.root_id:
        return None  # no run, or an action that belongs to an abandoned run
    if run.finished:
        # The action for the run's last observation is taken by no one; but with it every
        # component has finished the run, so ENV_DONE goes out now and the control's next request
        # cannot overtake the run's last step (the same contributions every time, for a seed).
        done_report, run.done_report = run.done_report, None
        return [Reply(ROOM_CONTROL, done_report)] if done_report is not None else None
    action = get_actions(msg, ACTION, len(state.envs), state.envs[0].action_space.n).tolist()
    # where each action was drawn: the models' updates correct for it
    behaviour = get_per_env(msg, BEHAVIOUR, len(state.envs), float).tolist() if BEHAVIOUR in msg else None
    observations, rewards, dones, truncations, final_observations, finished = [], [], [], [], [], []
    for i, env in enumerate(state.envs):
        observation, reward, terminated, truncated, _info = env.step(action[i])
        done = bool(terminated or truncated)
        final_observations.append(observation)
        run.episode_returns[i] += float(reward)
        run.episode_lengths[i] += 1
        if done:
            if run.quota[i] > 0:
                run.quota[i] -= 1
                finished.append(run.episode_returns[i])
                run.lengths.append(run.episode_lengths[i])
                run.ended_at.append(time.monotonic() - run.began)
            run.episode_returns[i], run.episode_lengths[i] = 0.0, 0
            observation, _info = env.reset()  # after DONE: the next episode's first observation
        observations.append(observation)
        rewards.append(float(reward))
        dones.append(done)
        truncations.append(bool(truncated and not terminated))
    run.steps += len(state.envs)
    message = {OBSERVATION: unbatch(np.stack(observations)), REWARD: state.per_copy(rewards),
               DONE: state.per_copy(dones), DETERMINISTIC: run.deterministic, ACTION: action,
               ROOT_ID: run.root_id}
    if behaviour is not None:
        message[BEHAVIOUR] = state.per_copy(behaviour)
    if any(truncations):  # the time limit, not a fall: the models bootstrap from where the pole was
        message.update({TRUNCATED: state.per_copy(truncations),
                        FINAL_OBSERVATION: unbatch(np.stack(final_observations))})
    replies: list[dict | Reply] = [message]
    if finished:
        run.scores.extend(finished)
        report = {STATUS: ENV_DONE if run.finished else ENV_PROGRESS, EPISODE: len(run.scores),
                  SCORE: finished[-1], STEPS: run.steps, AVG_SCORE: float(np.mean(run.scores)), ROOT_ID: run.root_id}
        if run.finished:
            run.done_report = {**report, SCORES: run.scores, LENGTHS: run.lengths, ENDED_AT: run.ended_at}
        else:
            replies.append(Reply(ROOM_CONTROL, report))
    return replies


def new_state(settings: SwarmSettings, name: str = COMPONENT_NAME) -> EnvironmentCopies:
    """The environment copies, which its handlers receive as `state`."""
    return EnvironmentCopies([gymnasium.make(settings.env_id) for _ in range(settings.envs)],
                             seed=settings.component_seed(name))


def main() -> None:
    settings = setup_component(COMPONENT_NAME, description=__doc__)
    handlers.wire(SwarmClient(COMPONENT_NAME, settings, state=new_state(settings))).listen()


if __name__ == "__main__":
    main()

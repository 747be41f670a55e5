"""04_environment.py: CartPole-v1, stepped with the swarm's aggregated action.

The control asks for a number of episodes (a "run"). The environment resets, sends the first
observation, and then answers every ACTION with the next observation, the reward and whether
the episode is done, until the requested episodes are over; then it reports the average score.
"""
import uuid
from dataclasses import dataclass, field

import gymnasium
import numpy as np
from swergio import Trigger

import swarm_common as sc

COMPONENT_NAME = "environment"


@dataclass
class Run:
    """The episodes the control asked for; ROOT_ID tells this run's messages from older ones."""
    root_id: str
    episodes: int
    deterministic: bool
    scores: list[float] = field(default_factory=list)
    episode_return: float = 0.0
    steps: int = 0

    @property
    def finished(self) -> bool:
        return len(self.scores) >= self.episodes


@dataclass
class CartPole:
    env: gymnasium.Env
    run: Run | None = None
    report: dict | None = None  # what the control should hear after the step just taken

    def reset(self) -> list[float]:
        observation, _info = self.env.reset()
        return observation.tolist()


def start_run(msg, cartpole):
    """NR_OF_EPISODE from the control: (re)start a run, abandoning any run in progress."""
    if sc.NR_OF_EPISODE not in msg:
        return None  # other control traffic (EVOLUTION, replies) is not ours
    episodes = sc.get_int(msg, sc.NR_OF_EPISODE, minimum=1)
    deterministic = sc.get_bool(msg, sc.DETERMINISTIC)
    root_id = msg.get(sc.ROOT_ID) or uuid.uuid4().hex
    cartpole.run, cartpole.report = Run(root_id, episodes, deterministic), None
    return {sc.OBSERVATION: cartpole.reset(), sc.DETERMINISTIC: deterministic, sc.ROOT_ID: root_id}


def step(msg, cartpole):
    """ACTION from the aggregation: step, and send what happened to the models."""
    run = cartpole.run
    if run is None or run.finished or msg.get(sc.ROOT_ID, run.root_id) != run.root_id:
        return None  # no run, or an action that belongs to an abandoned run
    action = sc.require(msg, sc.ACTION)
    if not (isinstance(action, list) and len(action) == 1 and type(action[0]) is int
            and cartpole.env.action_space.contains(action[0])):
        raise sc.BadMessage(f"ACTION must be a list with one valid action, got {action!r}")
    observation, reward, terminated, truncated, _info = cartpole.env.step(action[0])
    done = bool(terminated or truncated)
    run.steps += 1
    run.episode_return += float(reward)
    if done:
        run.scores.append(run.episode_return)
        run.episode_return = 0.0
        observation, _info = cartpole.env.reset()  # after DONE: the next episode's first observation
        cartpole.report = {sc.STATUS: sc.ENV_DONE if run.finished else sc.ENV_PROGRESS,
                           sc.EPISODE: len(run.scores), sc.SCORE: run.scores[-1], sc.STEPS: run.steps,
                           sc.AVG_SCORE: float(np.mean(run.scores)), sc.ROOT_ID: run.root_id}
    return {sc.OBSERVATION: observation.tolist(), sc.REWARD: float(reward), sc.DONE: done,
            sc.DETERMINISTIC: run.deterministic, sc.ACTION: action, sc.ROOT_ID: run.root_id}


def report(msg, cartpole):
    """After a step that ended an episode: progress, or ENV_DONE with the average score."""
    message, cartpole.report = cartpole.report, None
    return message


if __name__ == "__main__":
    config = sc.setup_component(COMPONENT_NAME)
    client = sc.SwarmClient(COMPONENT_NAME, config, cartpole=CartPole(gymnasium.make(sc.ENV_ID)))
    client.add_eventHandler(start_run, sc.CUSTOM, responseRooms=sc.ROOM_OBSERVATION,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_CONTROL))
    # step, then report: SwarmClient runs handlers in the order they are added.
    client.add_eventHandler(step, sc.CUSTOM, responseRooms=sc.ROOM_OBSERVATION,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_ACTION))
    client.add_eventHandler(report, sc.CUSTOM, responseRooms=sc.ROOM_CONTROL,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_ACTION))
    client.listen()

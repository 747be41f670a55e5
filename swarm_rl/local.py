"""The whole swarm in one process: the scripts' own handlers and states on an in-memory hub
that does what swergio's server does, every message through JSON once as on the wire, and every
model in one learner. A seeded swarm plays the same rounds here as over sockets with its models
in one process (with a process per model they compute the same numbers batched otherwise, and
a long run may part after some twenty rounds). Evaluations skip the messages (`play`): they
train nothing, so the scores are the same (a test holds them to it).

    result = LocalSwarm(settings).train_until_solved()
"""
from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from swergio import MESSAGE_TYPE

from swarm_rl import checkpoint, rounds
from swarm_rl.client import Reply, SwarmClient
from swarm_rl.environments import BEST_RETURNS
from swarm_rl.launcher import SwarmError, model_processes
from swarm_rl.learner import Members
from swarm_rl.protocol import (ACTION, CMD, DETERMINISTIC, ENV_DONE, ERROR, EVO_DONE, EVOLUTION,
                               FITNESS_SPREAD, NR_OF_EPISODE, OBSERVATION, PING, ROOM_CONTROL, ROOM_EVOLUTION, ROOM_PING,
                               ROOT_ID, SCORES, STATE, STATUS, WEIGHTS, custom_message)
from swarm_rl.scripts import load_script
from swarm_rl.settings import SwarmSettings

log = logging.getLogger("swarm")
JOIN, LEAVE = MESSAGE_TYPE.COMMAND.JOINROOM.id, MESSAGE_TYPE.COMMAND.LEAVEROOM.id
COMMANDS = {MESSAGE_TYPE.COMMAND.REGISTER.id, JOIN, LEAVE, MESSAGE_TYPE.COMMAND.DISCONNECT.id}


class LocalHub:
    """swergio's server without sockets: rooms, and delivery to every other member of a room."""

    def __init__(self) -> None:
        self.rooms: defaultdict[str, list[LocalClient]] = defaultdict(list)
        self.members: list[LocalClient] = []

    def deliver(self, sender: LocalClient, message: dict[str, Any]) -> None:
        kind = message.get("TYPE")
        if kind in COMMANDS:
            room = message.get("ROOM")
            if kind == JOIN and sender not in self.rooms[room]:
                self.rooms[room].append(sender)
            elif kind == LEAVE and sender in self.rooms[room]:
                self.rooms[room].remove(sender)
            return
        message.setdefault("SENT_BY", sender.name)
        wire = json.loads(json.dumps(message))  # what a recipient would decode
        for member in self.rooms.get(message.get("TO_ROOM"), ()):
            if member is not sender:
                member.inbox.append(wire)

    def pump(self) -> None:
        """Let every serving member handle its messages, until none is left to handle."""
        while True:
            busy = False
            for member in self.members:
                while member.inbox:
                    busy = True
                    member.dispatch(member.inbox.popleft())
            if not busy:
                return


class LocalClient(SwarmClient):
    """A SwarmClient whose connection is a LocalHub: the same handlers, dispatch and replies."""

    def __init__(self, hub: LocalHub, name: str, settings: SwarmSettings, serve: bool = True, **kwargs: Any) -> None:
        self.hub, self.inbox = hub, deque()
        super().__init__(name, settings, **kwargs)
        if serve:  # the hub's pump dispatches its messages; the control reads its own
            hub.members.append(self)

    def connect(self, server: str, port: int) -> None:  # type: ignore[override]
        return None

    def send(self, message: dict[str, Any]) -> None:
        self.hub.deliver(self, message)

    def receive(self, timeout: float | None = None) -> dict[str, Any] | None:
        return self.inbox.popleft() if self.inbox else None

    def close(self) -> None:
        return None


class LocalSwarm:
    """The aggregation, the environment, the evolution and `settings.models` models, each built
    and wired by its own script, and a control client in the `control` room."""

    def __init__(self, settings: SwarmSettings) -> None:
        torch.set_num_threads(1)  # as every model process
        self.settings, self.hub = settings, LocalHub()
        self.components = {}
        for script in ("03_aggregation.py", "04_environment.py", "05_evolution.py"):
            module = load_script(script)
            self.components[script] = module.handlers.wire(LocalClient(
                self.hub, module.COMPONENT_NAME, settings, state=module.new_state(settings, module.COMPONENT_NAME)))
        model = load_script("02_model.py")
        # Every model in one learner, computed together: the models the launcher would start, with
        # the same names and seeds, several times faster than one learner each.
        names = [name for group in model_processes(settings.models, settings.models_per_process).values()
                 for name in group]
        state = model.new_state(settings, names)
        self.models = [model.handlers.wire(LocalClient(self.hub, model.COMPONENT_NAME, settings, state=state,
                                                       member_ids=state.ids))]
        self.observation_width = self.models[0].state.width
        self.control = LocalClient(self.hub, "control", settings, serve=False)
        self.control.join_room(ROOM_CONTROL)
        self.control.join_room(ROOM_EVOLUTION)  # the models' answers to STATE
        self.control.send(custom_message(ROOM_PING, {PING: uuid.uuid4().hex}))  # the models introduce themselves
        self.hub.pump()
        self.control.inbox.clear()

    def request(self, payload: dict[str, Any], until: str) -> dict[str, Any]:
        """Send `payload` to `control`, let the swarm work, and return the reply whose STATUS is `until`."""
        root_id = uuid.uuid4().hex
        self.control.send(custom_message(ROOM_CONTROL, payload, root_id))
        self.hub.pump()
        replies = [m for m in self.control.inbox if m.get(ROOT_ID) == root_id]
        self.control.inbox.clear()
        for reply in replies:
            if reply.get(STATUS) == ERROR:
                raise SwarmError(f"{reply.get('SENT_BY', 'a component')}: {reply.get(ERROR)}")
            if reply.get(STATUS) == until:
                return reply
        raise SwarmError(f"no {until} after {sorted(payload)}: the swarm fell silent")

    def start(self, nr_of_episodes: int = 1, deterministic: bool = False) -> dict[str, Any]:
        if deterministic:
            return self.play(nr_of_episodes)
        return self.request({NR_OF_EPISODE: nr_of_episodes, DETERMINISTIC: deterministic}, until=ENV_DONE)

    def start_evo(self) -> float:
        return self.request({EVOLUTION: True}, until=EVO_DONE)[FITNESS_SPREAD]

    def actions(self, observations: list, vote: str | None = None) -> np.ndarray:
        """The swarm's deterministic action for each row of `observations`, as the messages would
        choose it: every model's logits (as floats, as they arrive from JSON), combined by
        the aggregation's `vote` (default: SWARM_VOTE) in the order of the model ids."""
        aggregation = load_script("03_aggregation.py")
        rows = torch.as_tensor(np.asarray(observations, dtype=np.float64).reshape(-1, self.observation_width),
                               dtype=torch.float32)
        logits = {}
        for client in self.models:
            logits.update(zip(client.state.ids, client.state.logits(rows).numpy().astype(np.float64)))
        return aggregation.decide(np.stack([logits[model_id] for model_id in sorted(logits)]), vote or self.settings.vote)

    def members(self) -> list[tuple[str, Members, int]]:
        """(model id, the learner that holds it, its index there) of every model, in the order of the ids."""
        return sorted((model_id, client.state, j) for client in self.models for j, model_id in enumerate(client.state.ids))

    def play(self, nr_of_episodes: int) -> dict[str, Any]:
        """A deterministic run without messages; its ENV_DONE report.

        What each component does with a deterministic step, done directly: the models forget their
        previous step, the swarm chooses its actions (`actions`), and the environment's handlers
        step the copies and count the episodes.
        """
        environment = load_script("04_environment.py")
        copies = self.components["04_environment.py"].state
        for client in self.models:
            client.state.remembers[:] = False  # an evaluation step is no one's next step
        root_id = uuid.uuid4().hex
        observation = environment.start_run({NR_OF_EPISODE: nr_of_episodes, DETERMINISTIC: True, ROOT_ID: root_id},
                                            copies)[OBSERVATION]
        while True:
            replies = environment.step({ACTION: self.actions(observation).tolist(), ROOT_ID: root_id}, copies) or []
            for reply in replies:
                if isinstance(reply, Reply) and reply.message[STATUS] == ENV_DONE:
                    return reply.message
                if not isinstance(reply, Reply):
                    observation = reply[OBSERVATION]

    def state(self) -> list[dict[str, Any]]:
        """Every model's answer to STATE: its weights, learning rate and Adam state."""
        root_id = uuid.uuid4().hex
        self.control.send(custom_message(ROOM_EVOLUTION, {CMD: STATE}, root_id))
        self.hub.pump()
        answers = [m for m in self.control.inbox if m.get(ROOT_ID) == root_id and WEIGHTS in m]
        self.control.inbox.clear()
        if len(answers) != self.settings.models:
            raise SwarmError(f"{len(answers)} of {self.settings.models} models answered STATE")
        return answers

    def restore(self, saved: dict[str, Any]) -> None:
        """Give the models a checkpoint's members (the same SET the control sends over sockets)."""
        model_ids = [model_id for model_id, _, _ in self.members()]
        self.control.send(custom_message(ROOM_EVOLUTION, checkpoint.restore_message(saved, model_ids)))
        self.hub.pump()
        self.control.inbox.clear()

    def confirm(self, threshold: float, round_nr: int) -> tuple[float, int]:
        """A round's confirmation, played from the members' state as the control over sockets plays it."""
        return confirm_from_state(self.state(), self.settings, threshold, round_nr)

    def train_until_solved(self, report: Callable[[str], None] = print, checkpoint_path: Path | None = None,
                           after_round: Callable[[list[dict[str, Any]]], None] | None = None) -> dict[str, Any]:
        """The control's loop; with `checkpoint_path`, the swarm is saved there after every round,
        and `after_round` is given the history after every round."""
        def each_round(history: list[dict[str, Any]]) -> None:
            if checkpoint_path is not None:
                checkpoint.save(checkpoint_path, self.state(), self.settings, history)
            if after_round is not None:
                after_round(history)
        return rounds.train_until_solved(self.start, self.start_evo, self.confirm, self.settings, report,
                                         after_round=each_round)


CONFIRM_COPIES = 10


def confirm_from_state(answers: list[dict[str, Any]], settings: SwarmSettings, threshold: float,
                       round_nr: int) -> tuple[float, int]:
    """The confirmation of a round, played in this process by the members of `answers` (every
    model's answer to STATE) with the swarm's own vote, 10 copies at a time, on starting states of
    its own (from SWARM_SEED and the round): the mean and the episodes played. It stops as soon
    as the 100-episode mean could no longer reach `threshold`, where the best return is known."""
    saved = {"members": sorted((checkpoint.member(answer) for answer in answers), key=lambda m: m["model_id"])}
    seed = None if settings.seed is None else settings.seed * 1_000 + round_nr
    swarm = LocalSwarm(settings.replace(envs=CONFIRM_COPIES, evolution=False, seed=seed))
    swarm.restore(saved)
    best, scores = BEST_RETURNS.get(settings.env_id), []
    while len(scores) < rounds.CONFIRM_EPISODES:
        scores += swarm.play(CONFIRM_COPIES)[SCORES]
        left = rounds.CONFIRM_EPISODES - len(scores)
        if best is not None and (sum(scores) + left * best) / rounds.CONFIRM_EPISODES < threshold:
            break
    return float(np.mean(scores)), len(scores)

"""Bad input sent into every room of a live swarm: each message is logged with its reason and
skipped, the components keep serving, and their state is unchanged."""
import math
import time

import numpy as np

from swarm_rl.client import SwarmClient
from swarm_rl.protocol import (ACTION, CMD, COMPONENT_ID, CONTRIBUTION, DETERMINISTIC, DONE, ENV_DONE, EPISODE, EVO_DONE,
                               EVOLUTION, LOGITS, NR_OF_EPISODE, OBSERVATION, REWARD, ROOM_ACTION, ROOM_CONTROL,
                               ROOM_EVOLUTION, ROOM_LOGITS, ROOM_OBSERVATION, ROOT_ID, SET, WEIGHTS, custom_message)
from swarm_rl.wire import frame
from tests.helpers import drain, get_weights, ready_swarm, set_weights

BAD_MESSAGES = {
    ROOM_CONTROL: [
        {NR_OF_EPISODE: "3", DETERMINISTIC: False},
        {NR_OF_EPISODE: 0, DETERMINISTIC: False},
        {NR_OF_EPISODE: 2},
        {EVOLUTION: "yes"},
    ],
    ROOM_OBSERVATION: [
        {OBSERVATION: [0.0, 0.0, 0.0], DETERMINISTIC: False},
        {OBSERVATION: [0.0, 0.0, math.nan, 0.0], DETERMINISTIC: False},
        {OBSERVATION: ["a", "b", "c", "d"], DETERMINISTIC: False},
        {OBSERVATION: [0.0] * 4, DETERMINISTIC: False, REWARD: 1.0, DONE: "no", ACTION: [0]},
    ],
    ROOM_LOGITS: [
        {LOGITS: [0.1], COMPONENT_ID: "model0-x", DETERMINISTIC: True},
        {LOGITS: [math.inf, 0.0], COMPONENT_ID: "model0-x", DETERMINISTIC: True},
        {LOGITS: [0.1, 0.2], DETERMINISTIC: True},
        {LOGITS: [5.0, -5.0], COMPONENT_ID: "intruder", DETERMINISTIC: True},  # not a model of ours
    ],
    ROOM_ACTION: [{ACTION: [5]}, {ACTION: "left"}, {ACTION: [0, 1]}],
    ROOM_EVOLUTION: [  # (answers to a GET that is not the evolution's are not even looked at)
        {CMD: SET, WEIGHTS: "all of them"},
        {WEIGHTS: [0.0] * 755, COMPONENT_ID: "intruder"},
        {CONTRIBUTION: {"intruder": "a lot"}},
    ],
}


def started(watcher, root_id, timeout=30.0):
    """Wait until the environment has sent the first observation of run `root_id`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = watcher.receive(timeout=left)
        if message is not None and message.get(ROOT_ID) == root_id and OBSERVATION in message:
            return
    raise AssertionError(f"the environment sent no observation of run {root_id} within {timeout:g} s")


def test_every_component_skips_bad_input_and_keeps_serving(swarm_env):
    with ready_swarm(swarm_env, 2) as (_swarm, control, _pids):
        probe = SwarmClient("probe", swarm_env)
        probe.join_room(ROOM_EVOLUTION)
        reply = control.request({NR_OF_EPISODE: 2, DETERMINISTIC: False}, until=ENV_DONE)
        before = get_weights(probe, 2)  # also pauses training, so the weights stay put

        # In the middle of a run: the environment waits for the aggregation's action.
        run = custom_message(ROOM_CONTROL, {NR_OF_EPISODE: 1000, DETERMINISTIC: True})
        watcher = SwarmClient("watcher", swarm_env)
        watcher.join_room(ROOM_OBSERVATION)
        control.send(run)
        started(watcher, run[ROOT_ID])  # bad messages that came before the run would be for no run
        watcher.close()
        for room, messages in BAD_MESSAGES.items():
            for payload in messages:  # as part of the run in progress, so no check is skipped
                probe.send(custom_message(room, payload, root_id=run[ROOT_ID]))
        wrong_size = {model_id: vector[:-1].tolist() for model_id, vector in before.items()}
        probe.send(custom_message(ROOM_EVOLUTION, {CMD: SET, WEIGHTS: wrong_size}))
        # Raw bytes that are not JSON, on a connection of their own.
        raw = SwarmClient("raw", swarm_env)
        body = b"\xff not json {"
        raw.client.sendall(frame(body))
        drain(probe, 1.0)

        after = get_weights(probe, 2)  # the bad SETs changed nothing
        for model_id, vector in before.items():
            assert np.array_equal(after[model_id], vector)
        set_weights(probe, after)  # resume training

        reply = control.request({NR_OF_EPISODE: 2, DETERMINISTIC: False}, until=ENV_DONE)
        assert reply[EPISODE] == 2
        control.request({EVOLUTION: True}, until=EVO_DONE)
        contributions = [m[CONTRIBUTION] for m in drain(probe, 1.0, ROOM_EVOLUTION) if CONTRIBUTION in m]
        assert contributions and set(contributions[-1]) == set(before), "a bogus model was credited"

        logs = {name: (swarm_env.log_dir / f"{name}.log").read_text() for name in
                ["server", "aggregation", "environment", "evolution", "model0", "model1"]}
        assert "not JSON" in logs["server"]
        assert "NR_OF_EPISODE must be a whole number" in logs["environment"]
        assert "ACTION must be a list of 1 action(s)" in logs["environment"]
        assert "unknown model 'intruder'" in logs["aggregation"] and "LOGITS" in logs["aggregation"]
        for model in ("model0", "model1"):
            assert "OBSERVATION contains NaN" in logs[model] and "DONE must be true or false" in logs[model]
            assert "shape (755,), got shape (754,) of float64; weights unchanged" in logs[model]
        raw.close(), probe.close()

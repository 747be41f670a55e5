"""Bad input sent into every room of a live swarm: each message is logged with its reason and
skipped, the components keep serving, and their state is unchanged."""
import math

import numpy as np

import swarm_common as sc
from conftest import drain, get_weights, ready_swarm, set_weights

BAD_MESSAGES = {
    sc.ROOM_CONTROL: [
        {sc.NR_OF_EPISODE: "3", sc.DETERMINISTIC: False},
        {sc.NR_OF_EPISODE: 0, sc.DETERMINISTIC: False},
        {sc.NR_OF_EPISODE: 2},
        {sc.EVOLUTION: "yes"},
    ],
    sc.ROOM_OBSERVATION: [
        {sc.OBSERVATION: [0.0, 0.0, 0.0], sc.DETERMINISTIC: False},
        {sc.OBSERVATION: [0.0, 0.0, math.nan, 0.0], sc.DETERMINISTIC: False},
        {sc.OBSERVATION: ["a", "b", "c", "d"], sc.DETERMINISTIC: False},
        {sc.OBSERVATION: [0.0] * 4, sc.DETERMINISTIC: False, sc.REWARD: 1.0, sc.DONE: "no", sc.ACTION: [0]},
    ],
    sc.ROOM_LOGITS: [
        {sc.LOGITS: [0.1], sc.COMPONENT_ID: "model0-x", sc.DETERMINISTIC: True},
        {sc.LOGITS: [math.inf, 0.0], sc.COMPONENT_ID: "model0-x", sc.DETERMINISTIC: True},
        {sc.LOGITS: [0.1, 0.2], sc.DETERMINISTIC: True},
        {sc.LOGITS: [5.0, -5.0], sc.COMPONENT_ID: "intruder", sc.DETERMINISTIC: True},  # not a model of ours
    ],
    sc.ROOM_ACTION: [{sc.ACTION: [5]}, {sc.ACTION: "left"}, {sc.ACTION: [0, 1]}],
    sc.ROOM_EVOLUTION: [  # (answers to a GET that is not the evolution's are not even looked at)
        {sc.CMD: sc.SET, sc.WEIGHTS: "all of them"},
        {sc.WEIGHTS: [0.0] * 755, sc.COMPONENT_ID: "intruder"},
        {sc.CONTRIBUTION: {"intruder": "a lot"}},
    ],
}


def test_every_component_skips_bad_input_and_keeps_serving(swarm_env):
    with ready_swarm(swarm_env, 2) as (swarm, control, pids):
        probe = sc.SwarmClient("probe", swarm_env)
        probe.join_room(sc.ROOM_EVOLUTION)
        reply = control.request({sc.NR_OF_EPISODE: 2, sc.DETERMINISTIC: False}, until=sc.ENV_DONE)
        before = get_weights(probe, 2)  # also pauses training, so the weights stay put

        # In the middle of a run: the environment waits for the aggregation's action.
        run = sc.custom_message(sc.ROOM_CONTROL, {sc.NR_OF_EPISODE: 1000, sc.DETERMINISTIC: True})
        control.send(run)
        for room, messages in BAD_MESSAGES.items():
            for payload in messages:  # as part of the run in progress, so no check is skipped
                probe.send(sc.custom_message(room, payload, root_id=run[sc.ROOT_ID]))
        wrong_size = {model_id: vector[:-1].tolist() for model_id, vector in before.items()}
        probe.send(sc.custom_message(sc.ROOM_EVOLUTION, {sc.CMD: sc.SET, sc.WEIGHTS: wrong_size}))
        # Raw bytes that are not JSON, on a connection of their own.
        raw = sc.SwarmClient("raw", swarm_env)
        body = b"\xff not json {"
        raw.client.sendall(sc.frame(body))
        drain(probe, 1.0)

        after = get_weights(probe, 2)  # the bad SETs changed nothing
        for model_id, vector in before.items():
            assert np.array_equal(after[model_id], vector)
        set_weights(probe, after)  # resume training

        reply = control.request({sc.NR_OF_EPISODE: 2, sc.DETERMINISTIC: False}, until=sc.ENV_DONE)
        assert reply[sc.EPISODE] == 2
        control.request({sc.EVOLUTION: True}, until=sc.EVO_DONE)
        contributions = [m[sc.CONTRIBUTION] for m in drain(probe, 1.0, sc.ROOM_EVOLUTION) if sc.CONTRIBUTION in m]
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

"""Hosted models (SWARM_MODELS_PER_PROCESS): k models in one process behave as k model processes.

The reference is 02_model.py's handlers with one model each (the learner with k = 1, which
computes without vmap); the hosted models get the same messages and must answer, learn and
take SETs as those do.
"""
import dataclasses
import os
import signal

import numpy as np
import psutil
import pytest

from swarm_rl.checks import BadMessage
from swarm_rl.client import SwarmClient
from swarm_rl.control import ControlClient
from swarm_rl.component import hosted_names
from swarm_rl.launcher import SwarmError
from swarm_rl.protocol import (ACTION, CMD, COMPONENT_ID, DETERMINISTIC, DONE, ENV_DONE, EPISODE, EVO_DONE, EVOLUTION,
                               EXP_AVG, EXP_AVG_SQ, FINAL_OBSERVATION, FITNESS_SPREAD, GET, HYPERPARAMETERS, LEARNING_RATE,
                               LOGITS, NR_OF_EPISODE, OBSERVATION, OPTIMIZER, REWARD, ROOM_EVOLUTION, SET, STATE, STEP,
                               TRUNCATED, WEIGHTS)
from swarm_rl.settings import SwarmSettings
from tests.helpers import COMPONENTS, assert_all_gone, get_weights, set_weights, start_swarm
from tests.test_model import model

NAMES = ["model3", "model4", "model5"]


def make_pair(envs=2, seed=5, **changes):
    """The same seeded models twice: one per state, and hosted together in one."""
    settings = SwarmSettings(seed=seed, envs=envs, **changes)
    separate = [model.new_state(settings, [name]) for name in NAMES]
    together = model.new_state(settings, NAMES)
    return separate, together


def step_message(rng, envs, step, deterministic=False, truncate=False):
    msg = {OBSERVATION: rng.normal(0, 0.1, (envs, 4)).tolist(), DETERMINISTIC: deterministic}
    if step:
        done = [bool(x) for x in rng.random(envs) < 0.15]
        msg.update({REWARD: [1.0] * envs, DONE: done, ACTION: rng.integers(0, 2, envs).tolist()})
        if truncate:
            msg.update({TRUNCATED: [True] + [False] * (envs - 1), FINAL_OBSERVATION: rng.normal(0, 0.1, (envs, 4)).tolist()})
    return msg


def both(handler_name, msg, separate, together):
    """Each separate model's reply, and the hosted models' replies."""
    handler = getattr(model, handler_name)
    alone = [(handler(msg, state) or [None])[0] for state in separate]
    return alone, handler(msg, together)


def assert_same_logits(alone, hosted_replies, atol=1e-5):
    assert [r[COMPONENT_ID] for r in hosted_replies] == [r[COMPONENT_ID] for r in alone]
    for a, h in zip(alone, hosted_replies):
        assert set(a) == set(h) and a[DETERMINISTIC] == h[DETERMINISTIC]
        np.testing.assert_allclose(h[LOGITS], a[LOGITS], atol=atol)


def run_steps(separate, together, steps, envs=2, seed=0, every=None):
    rng = np.random.default_rng(seed)
    for step in range(steps):
        msg = step_message(rng, envs, step, deterministic=every is not None and step % every == every - 1,
                           truncate=step % 7 == 3)
        assert_same_logits(*both("forward", msg, separate, together))


def vectors(separate):
    return [np.array(state.vector(0), dtype=np.float32) for state in separate]


def test_hosted_names_count_from_the_process_name():
    assert hosted_names("model10", 3) == ["model10", "model11", "model12"]
    assert hosted_names("model", 2) == ["model0", "model1"]
    assert hosted_names("model7", 1) == ["model7"]


def test_the_same_seed_gives_the_same_ids_and_initial_weights():
    separate, together = make_pair()
    assert together.ids == [state.ids[0] for state in separate]
    for j, vector in enumerate(vectors(separate)):
        np.testing.assert_array_equal(together.vector(j), vector)


@pytest.mark.parametrize("normalize", [False, True])
def test_hosted_models_answer_and_learn_as_separate_ones(normalize):
    """40 training steps (8 updates, truncations among them) and evaluations in between."""
    separate, together = make_pair(normalize_advantage=normalize)
    initial = [together.vector(j) for j in range(3)]
    run_steps(separate, together, 40, every=9)
    for j, vector in enumerate(vectors(separate)):
        assert not np.allclose(together.vector(j), initial[j])  # each model's own weights changed
        np.testing.assert_allclose(together.vector(j), vector, atol=2e-5)
    alone, hosted_replies = both("send_weights", {CMD: STATE}, separate, together)
    for a, h in zip(alone, hosted_replies):
        assert h[OPTIMIZER][STEP] == a[OPTIMIZER][STEP] >= 5
        np.testing.assert_allclose(h[OPTIMIZER][EXP_AVG_SQ], a[OPTIMIZER][EXP_AVG_SQ], rtol=1e-3, atol=1e-9)


def test_models_differ_from_each_other():
    _, together = make_pair()
    logits = together.step(model_observed(step_message(np.random.default_rng(1), 2, 0)))
    assert not np.allclose(logits[0], logits[1])


def model_observed(msg, envs=2):
    from swarm_rl.protocol import read_observation
    return read_observation(msg, envs, 4, 2)


def test_get_pauses_and_set_gives_each_model_its_own_vector_rate_and_adam_state():
    separate, together = make_pair()
    run_steps(separate, together, 12)
    alone, hosted_replies = both("send_weights", {CMD: GET}, separate, together)
    assert [h[COMPONENT_ID] for h in hosted_replies] == together.ids and not together.training_enabled.any()
    for a, h in zip(alone, hosted_replies):
        np.testing.assert_allclose(h[WEIGHTS], a[WEIGHTS], atol=1e-6)
        assert h[HYPERPARAMETERS] == a[HYPERPARAMETERS]
    rng = np.random.default_rng(3)
    size = together.size
    ids = together.ids
    set_msg = {CMD: SET, WEIGHTS: {ids[0]: rng.normal(0, 0.3, size).tolist(), ids[2]: rng.normal(0, 0.3, size).tolist()},
               HYPERPARAMETERS: {ids[1]: {LEARNING_RATE: 0.01}},
               OPTIMIZER: {ids[2]: {STEP: 4.0, EXP_AVG: rng.normal(0, 1e-3, size).tolist(),
                                    EXP_AVG_SQ: rng.uniform(0, 1e-5, size).tolist()}}}
    both("set_weights", set_msg, separate, together)
    assert together.training_enabled.all()
    np.testing.assert_allclose(together.vector(0), set_msg[WEIGHTS][ids[0]], atol=1e-6)
    np.testing.assert_allclose(together.vector(2), set_msg[WEIGHTS][ids[2]], atol=1e-6)
    assert together.optimizer_state(0) is None and together.optimizer_state(2)[STEP] == 4.0
    assert together.learning_rate(1) == pytest.approx(0.01)
    # and they go on learning as the separate models do, each from where its SET left it
    run_steps(separate, together, 16, seed=4)
    for j, vector in enumerate(vectors(separate)):
        np.testing.assert_allclose(together.vector(j), vector, atol=5e-5)


def test_a_set_bad_for_one_model_changes_that_one_only():
    _, together = make_pair()
    model.send_weights({CMD: GET}, together)
    ids, size = together.ids, together.size
    before = together.vector(1)
    good = np.full(size, 0.01).tolist()
    with pytest.raises(BadMessage, match=ids[1]):
        model.set_weights({CMD: SET, WEIGHTS: {ids[0]: good, ids[1]: [0.0, 1.0]}}, together)
    assert together.vector(1) == before and not together.training_enabled[1]
    np.testing.assert_allclose(together.vector(0), good)
    assert together.training_enabled[0] and together.training_enabled[2]


def test_a_bad_observation_changes_nothing():
    _, together = make_pair()
    together.step(model_observed(step_message(np.random.default_rng(1), 2, 0)))
    positions, memory = together.positions.copy(), dict(together.memory)
    with pytest.raises(BadMessage):
        model.forward({OBSERVATION: [[0.0] * 4], DETERMINISTIC: False, REWARD: [1.0, 1.0]}, together)
    assert (together.positions == positions).all() and together.memory["obs"] is memory["obs"]


# --------------------------------------------------------------------------- whole swarms
def hosted_swarm(settings, models, per_process, launcher="swarm"):
    """A started swarm of `models` models, `per_process` in each model process."""
    return start_swarm(settings.replace(models_per_process=per_process, launcher=launcher), models)


def model_pids(swarm):
    """The processes that run models: the launcher's components, or the forks of `models`."""
    pids = {name: pid for name, pid in swarm.pids().items() if name.startswith("model")}
    if "models" in pids:
        return {f"fork{i}": child.pid for i, child in enumerate(psutil.Process(pids["models"]).children())}
    return pids


@pytest.mark.parametrize("launcher", ["swarm", "fork"])
def test_a_hosted_swarm_trains_and_evolves_each_model_on_its_own(swarm_env, launcher):
    """7 models, 3 per process (3, 3 and 1): the control, aggregation and evolution see 7 models."""
    swarm = hosted_swarm(swarm_env, 7, 3, launcher)
    launched = list(swarm.pids().values())
    try:
        control = ControlClient(swarm)
        probe = SwarmClient("probe", swarm_env)
        probe.join_room(ROOM_EVOLUTION)
        swarm.wait_ready(control, COMPONENTS, 7)
        hosts = model_pids(swarm)
        launched += list(hosts.values())
        assert len(hosts) == 3, hosts
        before = get_weights(probe, 7)
        set_weights(probe, before)  # GET paused them; the SET lets them train again
        assert sorted(k.split("-")[0] for k in before) == [f"model{i}" for i in range(7)]
        reply = control.request({NR_OF_EPISODE: 3, DETERMINISTIC: False}, until=ENV_DONE)
        assert reply[EPISODE] == 3
        trained = get_weights(probe, 7)
        set_weights(probe, trained)
        for model_id, vector in trained.items():  # each model learned on its own
            assert not np.allclose(vector, before[model_id]), model_id
        vectors = list(trained.values())
        assert not any(np.allclose(vectors[i], vectors[j]) for i in range(7) for j in range(i))
        control.request({EVOLUTION: True}, until=EVO_DONE)
        evolved = get_weights(probe, 7)
        assert sum(not np.allclose(evolved[m], trained[m]) for m in trained) >= 1  # the worst quarter replaced
    finally:
        swarm.stop()
    assert_all_gone(launched, within=5)


def test_a_dead_hosting_process_is_reported_with_the_models_it_held(swarm_env):
    swarm = hosted_swarm(swarm_env, 6, 3)
    launched = list(swarm.pids().values())
    try:
        control = ControlClient(swarm)
        swarm.wait_ready(control, COMPONENTS, 6)
        os.kill(swarm.pids()["model3"], signal.SIGKILL)
        with pytest.raises(SwarmError, match=r"model3 \(hosting model3-model5, exit code -9"):
            control.request({NR_OF_EPISODE: 1000, DETERMINISTIC: False}, until=ENV_DONE)
    finally:
        swarm.stop()
    assert_all_gone(launched, within=5)


def test_a_swarm_of_200_models_runs_a_round(swarm_env):
    """Two processes of 100 models: a training run, an evaluation and an evolution."""
    swarm = hosted_swarm(dataclasses.replace(swarm_env, reply_timeout=120), 200, 100)
    launched = list(swarm.pids().values())
    try:
        control = ControlClient(swarm)
        swarm.wait_ready(control, COMPONENTS, 200)
        assert control.request({NR_OF_EPISODE: 2, DETERMINISTIC: False}, until=ENV_DONE)[EPISODE] == 2
        assert control.request({NR_OF_EPISODE: 1, DETERMINISTIC: True}, until=ENV_DONE)[EPISODE] == 1
        done = control.request({EVOLUTION: True}, until=EVO_DONE)
        assert done[FITNESS_SPREAD] >= 0
    finally:
        swarm.stop()
    assert_all_gone(launched, within=5)


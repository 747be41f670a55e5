"""Hosted models (SWARM_MODELS_PER_PROCESS): k models in one process behave as k model processes.

The reference is 02_model.py's own handlers, one set of arguments per model; the hosted models
get the same messages and must answer, learn and take SETs as those do.
"""
import numpy as np
import pytest

from swarm import hosted
from swarm.checks import BadMessage
from swarm.hosted import hosted_names
from swarm.protocol import (ACTION, CMD, COMPONENT_ID, DETERMINISTIC, DONE, EXP_AVG, EXP_AVG_SQ, FINAL_OBSERVATION, GET,
                            HYPERPARAMETERS, LEARNING_RATE, LOGITS, OBSERVATION, OPTIMIZER, REWARD, SET, STATE, STEP,
                            TRUNCATED, WEIGHTS)
from swarm.settings import SwarmSettings
from tests.test_model import handle, model

NAMES = ["model3", "model4", "model5"]


def make_pair(envs=2, seed=5, **changes):
    """The same seeded models twice: as separate models (02_model.arguments) and hosted together."""
    settings = SwarmSettings(seed=seed, envs=envs, **changes)
    separate = [model.arguments(settings, name) for name in NAMES]
    together = model.hosted_arguments(settings, NAMES)["hosted"]
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
    alone = [handle(getattr(model, handler_name), msg, parts) for parts in separate]
    return alone, hosted.__dict__[handler_name](msg, together)


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
    return [p["policy"].parameters_to_vector() for p in separate]


def test_hosted_names_count_from_the_process_name():
    assert hosted_names("model10", 3) == ["model10", "model11", "model12"]
    assert hosted_names("model", 2) == ["model0", "model1"]
    assert hosted_names("model7", 1) == ["model7"]


def test_the_same_seed_gives_the_same_ids_and_initial_weights():
    separate, together = make_pair()
    assert together.ids == [p["component_id"] for p in separate]
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
    from swarm.protocol import read_observation
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
    assert float(together.learning_rates[1]) == pytest.approx(0.01)
    # and they go on learning as the separate models do, each from where its SET left it
    run_steps(separate, together, 16, seed=4)
    for j, vector in enumerate(vectors(separate)):
        np.testing.assert_allclose(together.vector(j), vector, atol=5e-5)


def test_a_set_bad_for_one_model_changes_that_one_only():
    _, together = make_pair()
    hosted.send_weights({CMD: GET}, together)
    ids, size = together.ids, together.size
    before = together.vector(1)
    good = np.full(size, 0.01).tolist()
    with pytest.raises(BadMessage, match=ids[1]):
        hosted.set_weights({CMD: SET, WEIGHTS: {ids[0]: good, ids[1]: [0.0, 1.0]}}, together)
    assert together.vector(1) == before and not together.training_enabled[1]
    np.testing.assert_allclose(together.vector(0), good)
    assert together.training_enabled[0] and together.training_enabled[2]


def test_a_bad_observation_changes_nothing():
    _, together = make_pair()
    together.step(model_observed(step_message(np.random.default_rng(1), 2, 0)))
    positions, memory = together.positions.copy(), dict(together.memory)
    with pytest.raises(BadMessage):
        hosted.forward({OBSERVATION: [[0.0] * 4], DETERMINISTIC: False, REWARD: [1.0, 1.0]}, together)
    assert (together.positions == positions).all() and together.memory["obs"] is memory["obs"]

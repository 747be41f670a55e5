"""02_model.py handlers, without sockets."""
import inspect
import textwrap

import numpy as np
import pytest
from swergio_toolbox.objects import MutableBool

from swarm.checks import BadMessage
from swarm.protocol import (ACTION, CMD, COMPONENT_ID, DETERMINISTIC, DONE, EXP_AVG, EXP_AVG_SQ, FINAL_OBSERVATION, GET,
                            HYPERPARAMETERS, LEARNING_RATE, LOGITS, OBSERVATION, OPTIMIZER, REWARD, SET, STATE, STEP,
                            TRUNCATED, WEIGHTS)
from swarm.scripts import load_script

model = load_script("02_model.py")
SPACES = model.spaces()
MODEL_ID = "model0-test"


def new_parts(envs=1, policy=None, learning_rate=7e-4):
    """A model's handler arguments, as main() gives them to its client."""
    policy = policy or model.make_policy(*SPACES, learning_rate)
    return dict(policy=policy, rollout_buffer=model.make_rollout_buffer(policy, envs), memory={},
                training_enabled=MutableBool(True), component_id=MODEL_ID, normalize_advantage=False)


def handle(handler, msg, parts):
    """Call a handler with the arguments it names, as the client does."""
    names = inspect.signature(handler).parameters
    return handler(msg, **{k: v for k, v in parts.items() if k in names})


@pytest.fixture
def parts():
    return new_parts()


def observation_message(step=None, deterministic=False):
    rng = np.random.default_rng(step or 0)
    msg = {OBSERVATION: rng.normal(0, 0.05, 4).tolist(), DETERMINISTIC: deterministic}
    if step is not None:
        msg.update({REWARD: 1.0, DONE: False, ACTION: [step % 2]})
    return msg


def test_forward_answers_with_two_logits_and_its_id(parts):
    reply = model.forward(observation_message(deterministic=True), **parts)
    assert len(reply[LOGITS]) == 2 and all(np.isfinite(reply[LOGITS]))
    assert reply[COMPONENT_ID] == MODEL_ID
    assert reply[DETERMINISTIC] is True


def test_forward_logits_are_the_policys_action_logits(parts):
    msg = observation_message()
    reply = model.forward(msg, **parts)
    import torch
    obs = torch.tensor([msg[OBSERVATION]], dtype=torch.float32)
    expected = parts["policy"].get_distribution(obs).distribution.logits[0]
    # The categorical distribution normalises logits; compare as probabilities.
    assert np.allclose(np.exp(reply[LOGITS]) / np.exp(reply[LOGITS]).sum(), expected.exp().detach().numpy(), atol=1e-6)


def test_training_happens_every_five_steps_and_changes_the_weights(parts):
    initial = parts["policy"].parameters_to_vector().copy()
    model.forward(observation_message(), **parts)
    for step in range(1, 5):
        model.forward(observation_message(step), **parts)
    assert parts["rollout_buffer"].pos == 4
    assert np.array_equal(parts["policy"].parameters_to_vector(), initial), "trained before the buffer was full"
    model.forward(observation_message(5), **parts)  # the fifth step fills the buffer: train on it
    assert not np.array_equal(parts["policy"].parameters_to_vector(), initial)
    assert parts["rollout_buffer"].pos == 0  # emptied by training


def values_of(policy, observations):
    import torch
    return policy.predict_values(torch.as_tensor(np.array(observations), dtype=torch.float32)).detach().numpy().flatten()


@pytest.fixture
def trained_on(monkeypatch):
    """What each A2C update was given: the buffer's rewards, returns and values, copied."""
    updates = []
    real_train = model.train

    def recording_train(policy, rollout_buffer, normalize_advantage):
        updates.append({name: getattr(rollout_buffer, name).copy() for name in ("rewards", "returns", "values")})
        real_train(policy, rollout_buffer, normalize_advantage)
    monkeypatch.setattr(model, "train", recording_train)
    return updates


@pytest.mark.parametrize("last_done", [False, True])
def test_a_full_buffer_bootstraps_from_the_next_observation_with_its_own_done(parts, trained_on, last_done):
    model.forward(observation_message(), **parts)
    for step in range(1, 5):  # the fourth step ends an episode: the fifth is a new one's first
        model.forward({**observation_message(step), DONE: step == 4}, **parts)
    last = {**observation_message(5), DONE: last_done}
    expected_bootstrap = values_of(parts["policy"], [last[OBSERVATION]])[0]  # before the update
    model.forward(last, **parts)
    (update,) = trained_on
    gamma, lam = parts["rollout_buffer"].gamma, parts["rollout_buffer"].gae_lambda
    # The last step's advantage: its reward, plus the next observation's value unless DONE ended it.
    delta = 1.0 + (0.0 if last_done else gamma * expected_bootstrap) - update["values"][-1, 0]
    assert update["returns"][-1, 0] == pytest.approx(delta + update["values"][-1, 0], abs=1e-5)
    # ... and the DONE of the fourth message ends the fourth step, not the fifth: nothing after it
    # flows back into it, and the steps before it see its return.
    assert lam == 1.0 and update["returns"][-2, 0] == pytest.approx(1.0)
    assert update["returns"][-3, 0] == pytest.approx(1.0 + gamma * 1.0, abs=1e-5)


def test_a_truncated_episode_is_bootstrapped_not_treated_as_a_fall(parts, trained_on):
    model.forward(observation_message(), **parts)
    for step in range(1, 5):
        model.forward(observation_message(step), **parts)
    final_observation = [0.1, 0.2, 0.01, -0.1]  # where the pole was at step 500, before the reset
    truncated = {**observation_message(5), DONE: True, TRUNCATED: True, FINAL_OBSERVATION: final_observation}
    final_value = values_of(parts["policy"], [final_observation])[0]
    model.forward(truncated, **parts)
    (update,) = trained_on
    gamma = parts["rollout_buffer"].gamma
    assert update["rewards"][-1, 0] == pytest.approx(1.0 + gamma * final_value, abs=1e-5)
    assert update["returns"][-1, 0] == pytest.approx(1.0 + gamma * final_value, abs=1e-5)
    assert update["rewards"][:-1, 0].tolist() == [1.0] * 4


def test_deterministic_steps_are_neither_stored_nor_learned_from(parts, trained_on):
    initial = parts["policy"].parameters_to_vector().copy()
    model.forward(observation_message(deterministic=True), **parts)
    for step in range(1, 12):
        msg = observation_message(step, deterministic=True)
        assert len(model.forward(msg, **parts)[LOGITS]) == 2
    assert parts["rollout_buffer"].pos == 0 and trained_on == []
    assert np.array_equal(parts["policy"].parameters_to_vector(), initial)
    # A training run after it starts from its own first observation.
    model.forward(observation_message(), **parts)
    model.forward(observation_message(1), **parts)
    assert parts["rollout_buffer"].pos == 1


def test_an_evaluation_in_the_middle_of_a_rollout_leaves_it_intact(parts):
    model.forward(observation_message(), **parts)
    model.forward(observation_message(1), **parts)
    stored = parts["rollout_buffer"].observations[0].copy()
    for step in [None, 1, 2, 3, 4, 5, 6]:
        model.forward(observation_message(step, deterministic=True), **parts)
    assert parts["rollout_buffer"].pos == 1 and np.array_equal(parts["rollout_buffer"].observations[0], stored)


def test_get_returns_the_weight_vector_and_pauses_training(parts):
    reply = model.send_weights({CMD: GET}, parts["policy"], parts["training_enabled"], MODEL_ID)
    assert len(reply[WEIGHTS]) == 755  # CartPole: 4 inputs, 2 actions, pi/vf [16, 16]
    assert np.allclose(reply[WEIGHTS], parts["policy"].parameters_to_vector())
    assert reply[COMPONENT_ID] == MODEL_ID
    assert parts["training_enabled"].value is False
    # Paused: a full buffer is thrown away instead of trained on.
    initial = parts["policy"].parameters_to_vector().copy()
    for step in [None, 1, 2, 3, 4, 5, 6]:
        model.forward(observation_message(step), **parts)
    assert np.array_equal(parts["policy"].parameters_to_vector(), initial)


def test_get_ignores_other_commands(parts):
    assert model.send_weights({CMD: SET}, parts["policy"], parts["training_enabled"], MODEL_ID) is None
    assert parts["training_enabled"].value is True


def test_set_loads_exactly_that_vector_and_resumes_training(parts):
    parts["training_enabled"].set(False)
    vector = np.random.default_rng(1).normal(size=755).astype(np.float32)
    msg = {CMD: SET, WEIGHTS: {MODEL_ID: vector.tolist(), "another-model": [0.0] * 755}}
    handle(model.set_weights, msg, parts)
    assert np.array_equal(parts["policy"].parameters_to_vector(), vector)
    assert parts["training_enabled"].value is True


def test_set_starts_the_optimizer_and_the_rollout_afresh(parts):
    model.forward(observation_message(), **parts)
    for step in range(1, 8):  # one update, and two steps stored after it
        model.forward(observation_message(step), **parts)
    assert parts["policy"].optimizer.state and parts["rollout_buffer"].pos == 2
    vector = parts["policy"].parameters_to_vector()
    handle(model.set_weights, {CMD: SET, WEIGHTS: {MODEL_ID: vector.tolist()}}, parts)
    assert not parts["policy"].optimizer.state, "Adam's moments of the old weights survived the SET"
    assert parts["rollout_buffer"].pos == 0 and parts["memory"] == {}
    # and it learns on: the next full buffer is an ordinary update from fresh moments
    model.forward(observation_message(), **parts)
    for step in range(1, 6):
        model.forward(observation_message(step), **parts)
    assert not np.array_equal(parts["policy"].parameters_to_vector(), vector)
    assert all(state["step"].item() == 1 for state in parts["policy"].optimizer.state.values())


def train_steps(parts, steps):
    model.forward(observation_message(), **parts)
    for step in range(1, steps + 1):
        model.forward(observation_message(step), **parts)


def test_weights_with_their_adam_state_make_a_twin_that_learns_alike(parts):
    """STATE carries Adam's state; a SET that brings it along makes another model a twin: the same
    steps then give both exactly the same weights (with fresh moments they would differ). The
    buffer hands out its samples in a random order: the same order for each, or sums round apart."""
    train_steps(parts, 10)  # two updates
    reply = model.send_weights({CMD: STATE}, parts["policy"], parts["training_enabled"], MODEL_ID)
    assert parts["training_enabled"].value is True, "STATE does not pause training"
    assert OPTIMIZER not in model.send_weights({CMD: GET}, parts["policy"], parts["training_enabled"], MODEL_ID)
    assert reply[OPTIMIZER][STEP] == 2 and len(reply[OPTIMIZER][EXP_AVG]) == len(reply[OPTIMIZER][EXP_AVG_SQ]) == 755
    parts["training_enabled"].set(True)
    twin, fresh = new_parts(), new_parts()
    handle(model.set_weights, {CMD: SET, WEIGHTS: {MODEL_ID: reply[WEIGHTS]}, OPTIMIZER: {MODEL_ID: reply[OPTIMIZER]}}, twin)
    handle(model.set_weights, {CMD: SET, WEIGHTS: {MODEL_ID: reply[WEIGHTS]}}, fresh)
    for each in (parts, twin, fresh):
        np.random.seed(0)
        train_steps(each, 5)
    assert np.array_equal(twin["policy"].parameters_to_vector(), parts["policy"].parameters_to_vector())
    assert not np.array_equal(fresh["policy"].parameters_to_vector(), parts["policy"].parameters_to_vector())


def test_an_untrained_model_has_no_adam_state_to_give(parts):
    assert model.send_weights({CMD: STATE}, parts["policy"], parts["training_enabled"], MODEL_ID)[OPTIMIZER] is None


@pytest.mark.parametrize("adam", ["not a dict", {STEP: 1, EXP_AVG: [0.0] * 755},
                                  {STEP: 0, EXP_AVG: [0.0] * 755, EXP_AVG_SQ: [0.0] * 755},
                                  {STEP: 1, EXP_AVG: [0.0] * 755, EXP_AVG_SQ: [-1.0] * 755},
                                  {STEP: 1, EXP_AVG: [0.0] * 754, EXP_AVG_SQ: [0.0] * 755}])
def test_a_bad_adam_state_leaves_the_weights_as_they_were(parts, adam):
    before = parts["policy"].parameters_to_vector().copy()
    with pytest.raises(BadMessage, match="weights unchanged"):
        handle(model.set_weights, {CMD: SET, WEIGHTS: {MODEL_ID: [0.0] * 755}, OPTIMIZER: {MODEL_ID: adam}}, parts)
    assert np.array_equal(parts["policy"].parameters_to_vector(), before)


@pytest.mark.parametrize("weights", [
    "not a dict",
    {"ME": [0.0] * 754},
    {"ME": [0.0] * 754 + [float("nan")]},
    {"ME": [0.0] * 754 + ["x"]},
])
def test_a_bad_set_leaves_the_weights_as_they_were(parts, weights):
    if isinstance(weights, dict) and "ME" in weights:
        weights = {MODEL_ID: weights["ME"]}
    before = parts["policy"].parameters_to_vector().copy()
    parts["training_enabled"].set(False)  # paused by a GET
    with pytest.raises(BadMessage):
        handle(model.set_weights, {CMD: SET, WEIGHTS: weights}, parts)
    assert np.array_equal(parts["policy"].parameters_to_vector(), before)
    assert parts["training_enabled"].value is False, "a bad SET must not resume training either"


def test_a_set_for_other_models_resumes_training_and_changes_nothing_else(parts):
    """Population-based training copies weights into a few members only; the rest keep theirs,
    their Adam moments and their rollout."""
    model.forward(observation_message(), **parts)
    for step in range(1, 7):
        model.forward(observation_message(step), **parts)
    before, moments = parts["policy"].parameters_to_vector().copy(), len(parts["policy"].optimizer.state)
    stored = parts["rollout_buffer"].pos
    parts["training_enabled"].set(False)
    handle(model.set_weights, {CMD: SET, WEIGHTS: {"someone-else": [0.0] * 755}}, parts)
    assert parts["training_enabled"].value is True
    assert np.array_equal(parts["policy"].parameters_to_vector(), before)
    assert len(parts["policy"].optimizer.state) == moments > 0 and parts["rollout_buffer"].pos == stored > 0


def test_get_reports_and_set_changes_the_learning_rate(parts):
    reply = model.send_weights({CMD: GET}, parts["policy"], parts["training_enabled"], MODEL_ID)
    assert reply[HYPERPARAMETERS] == {LEARNING_RATE: pytest.approx(7e-4)}
    handle(model.set_weights, {CMD: SET, WEIGHTS: {}, HYPERPARAMETERS: {MODEL_ID: {LEARNING_RATE: 0.003}}}, parts)
    assert [group["lr"] for group in parts["policy"].optimizer.param_groups] == [0.003]
    assert parts["training_enabled"].value is True


@pytest.mark.parametrize("hyper", [{LEARNING_RATE: -1.0}, {LEARNING_RATE: "fast"}, {}, "0.1"])
def test_a_bad_learning_rate_changes_nothing(parts, hyper):
    vector = np.zeros(755, dtype=np.float32)
    parts["training_enabled"].set(False)
    with pytest.raises(BadMessage):
        handle(model.set_weights, {CMD: SET, WEIGHTS: {MODEL_ID: vector.tolist()},
                                   HYPERPARAMETERS: {MODEL_ID: hyper}}, parts)
    assert not np.array_equal(parts["policy"].parameters_to_vector(), vector)
    assert parts["policy"].optimizer.param_groups[0]["lr"] == pytest.approx(7e-4)
    assert parts["training_enabled"].value is False


def test_population_based_training_spreads_the_initial_learning_rates():
    from swarm.settings import SwarmSettings
    settings = SwarmSettings(learning_rate=0.002, operators="pbt")
    rates = [model.initial_learning_rate(settings, seed) for seed in range(50)]
    assert all(0.001 <= rate <= 0.004 for rate in rates) and np.std(np.log2(rates)) > 0.4
    assert model.initial_learning_rate(settings.replace(operators="genetic"), 3) == 0.002


@pytest.mark.parametrize("broken", [
    {OBSERVATION: [0.0, 0.0, 0.0], DETERMINISTIC: False},
    {OBSERVATION: [0.0, 0.0, float("inf"), 0.0], DETERMINISTIC: False},
    {OBSERVATION: [0.0] * 4},
    {DETERMINISTIC: False},
    {OBSERVATION: [0.0] * 4, DETERMINISTIC: False, REWARD: 1.0, DONE: False, ACTION: [7]},
    {OBSERVATION: [0.0] * 4, DETERMINISTIC: False, REWARD: "1", DONE: False, ACTION: [0]},
])
def test_a_bad_observation_is_rejected_without_touching_the_state(parts, broken):
    model.forward(observation_message(), **parts)
    memory_before = dict(parts["memory"])
    with pytest.raises(BadMessage):
        model.forward(broken, **parts)
    assert parts["rollout_buffer"].pos == 0
    assert parts["memory"]["obs"] is memory_before["obs"]


# --------------------------------------------------------------------------- SWARM_ENVS > 1
def batch_message(envs, step=None, seed=0):
    rng = np.random.default_rng(seed)
    msg = {OBSERVATION: rng.normal(0, 0.05, (envs, 4)).tolist(), DETERMINISTIC: False}
    if step is not None:
        msg.update({REWARD: [1.0] * envs, DONE: [False] * (envs - 1) + [step % 3 == 0],
                    ACTION: [(step + i) % 2 for i in range(envs)]})
    return msg


def test_a_batch_goes_through_the_network_in_one_pass_row_by_row_equal():
    batched = new_parts(4)
    policy = batched["policy"]
    msg = batch_message(4)
    logits = np.array(model.forward(msg, **batched)[LOGITS])
    assert logits.shape == (4, 2)
    for row, observation in zip(logits, msg[OBSERVATION]):
        single = new_parts(1, policy)
        alone = model.forward({OBSERVATION: observation, DETERMINISTIC: False}, **single)[LOGITS]
        assert np.allclose(row, alone, atol=1e-6)


def test_a_batch_fills_the_buffer_per_environment_and_trains_every_five_steps():
    parts = new_parts(3)
    initial = parts["policy"].parameters_to_vector().copy()
    model.forward(batch_message(3), **parts)
    for step in range(1, 5):
        model.forward(batch_message(3, step, seed=step), **parts)
    buffer = parts["rollout_buffer"]
    assert buffer.pos == 4 and buffer.rewards.shape == (5, 3)
    assert buffer.actions[:4, :, 0].tolist() == [[(s + i) % 2 for i in range(3)] for s in range(1, 5)]
    assert np.array_equal(parts["policy"].parameters_to_vector(), initial)
    model.forward(batch_message(3, 5, seed=5), **parts)
    assert not np.array_equal(parts["policy"].parameters_to_vector(), initial) and buffer.pos == 0


@pytest.mark.parametrize("broken", [
    {OBSERVATION: [[0.0] * 4] * 2, DETERMINISTIC: False},  # 2 rows for 3 environments
    {OBSERVATION: [0.0] * 4, DETERMINISTIC: False},  # one environment's format
    {OBSERVATION: [[0.0] * 4, [0.0] * 4, [0.0] * 3], DETERMINISTIC: False},
    {**batch_message(3, 1), REWARD: 1.0},
    {**batch_message(3, 1), DONE: [False, "no", False]},
    {**batch_message(3, 1), ACTION: [0, 1]},
])
def test_a_bad_batch_is_rejected(broken):
    parts = new_parts(3)
    with pytest.raises(BadMessage):
        model.forward(broken, **parts)
    assert parts["memory"] == {}


# --------------------------------------------------------------------------- start-up cost
def test_our_adam_makes_the_same_updates_as_torchs():
    import torch

    from swarm.adam import Adam

    torch.manual_seed(0)
    reference = torch.nn.Linear(4, 3)
    ours = torch.nn.Linear(4, 3)
    ours.load_state_dict(reference.state_dict())
    optimizers = [torch.optim.Adam(reference.parameters(), lr=0.01),
                  Adam(ours.parameters(), lr=0.01, fused=True)]
    for _step in range(20):
        data = torch.randn(8, 4)
        for network, optimizer in zip([reference, ours], optimizers):
            optimizer.zero_grad()
            network(data).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(reference.parameters(), ours.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.equal(reference.weight, torch.nn.Linear(4, 3).weight)


def test_a_model_process_never_imports_the_torch_compiler():
    """torch._dynamo costs 1.2-1.5 CPU-s per process; twenty models start at once."""
    import subprocess
    import sys

    from tests.helpers import ROOT
    code = textwrap.dedent("""
        import sys
        from swergio_toolbox.objects import MutableBool
        from swarm.scripts import load_script
        m = load_script("02_model.py")
        policy = m.make_policy(*m.spaces(), 7e-4)
        p = dict(policy=policy, rollout_buffer=m.make_rollout_buffer(policy), memory={},
                 training_enabled=MutableBool(True), component_id="m")
        for i in range(8):
            step = {"REWARD": 1.0, "DONE": False, "ACTION": [0]} if i else {}
            m.forward({"OBSERVATION": [0.01] * 4, "DETERMINISTIC": False, **step}, **p, normalize_advantage=False)
        pos = p["rollout_buffer"].pos
        weights = m.send_weights({"CMD": "GET"}, p["policy"], p["training_enabled"], "m")["WEIGHTS"]
        m.set_weights({"CMD": "SET", "WEIGHTS": {"m": weights}}, **p)
        print("trained", pos, "dynamo", "torch._dynamo" in sys.modules)
    """)
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert output.stdout.strip() == "trained 2 dynamo False", output.stderr


def test_logits_carry_what_came_of_the_last_action(parts):
    """The echo that SWARM_FITNESS=return credits; a run's first answer and evaluations have none."""
    first = model.forward(observation_message(), **parts)
    step = model.forward({**observation_message(1), DONE: True}, **parts)
    evaluation = model.forward(observation_message(2, deterministic=True), **parts)
    assert DONE not in first and DONE not in evaluation
    assert step[REWARD] == 1.0 and step[DONE] is True

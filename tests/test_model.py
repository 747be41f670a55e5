"""02_model.py handlers, without sockets."""
import numpy as np
import pytest
from swergio_toolbox.objects import MutableBool

import swarm_common as sc
from conftest import load_script

model = load_script("02_model.py")


@pytest.fixture
def parts():
    return dict(policy=model.make_policy(), rollout_buffer=model.make_rollout_buffer(), memory={},
                training_enabled=MutableBool(True))


def observation_message(step=None, deterministic=False):
    rng = np.random.default_rng(step or 0)
    msg = {sc.OBSERVATION: rng.normal(0, 0.05, 4).tolist(), sc.DETERMINISTIC: deterministic}
    if step is not None:
        msg.update({sc.REWARD: 1.0, sc.DONE: False, sc.ACTION: [step % 2]})
    return msg


def test_forward_answers_with_two_logits_and_its_id(parts):
    reply = model.forward(observation_message(deterministic=True), **parts)
    assert len(reply[sc.LOGITS]) == 2 and all(np.isfinite(reply[sc.LOGITS]))
    assert reply[sc.COMPONENT_ID] == model.COMPONENT_ID
    assert reply[sc.DETERMINISTIC] is True


def test_forward_logits_are_the_policys_action_logits(parts):
    msg = observation_message()
    reply = model.forward(msg, **parts)
    import torch
    obs = torch.tensor([msg[sc.OBSERVATION]], dtype=torch.float32)
    expected = parts["policy"].get_distribution(obs).distribution.logits[0]
    # The categorical distribution normalises logits; compare as probabilities.
    assert np.allclose(np.exp(reply[sc.LOGITS]) / np.exp(reply[sc.LOGITS]).sum(), expected.exp().detach().numpy(), atol=1e-6)


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

    def recording_train(policy, rollout_buffer):
        updates.append({name: getattr(rollout_buffer, name).copy() for name in ("rewards", "returns", "values")})
        real_train(policy, rollout_buffer)
    monkeypatch.setattr(model, "train", recording_train)
    return updates


@pytest.mark.parametrize("last_done", [False, True])
def test_a_full_buffer_bootstraps_from_the_next_observation_with_its_own_done(parts, trained_on, last_done):
    model.forward(observation_message(), **parts)
    for step in range(1, 5):  # the fourth step ends an episode: the fifth is a new one's first
        model.forward({**observation_message(step), sc.DONE: step == 4}, **parts)
    last = {**observation_message(5), sc.DONE: last_done}
    expected_bootstrap = values_of(parts["policy"], [last[sc.OBSERVATION]])[0]  # before the update
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
    truncated = {**observation_message(5), sc.DONE: True, sc.TRUNCATED: True, sc.FINAL_OBSERVATION: final_observation}
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
        assert len(model.forward(msg, **parts)[sc.LOGITS]) == 2
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
    reply = model.send_weights({sc.CMD: sc.GET}, parts["policy"], parts["training_enabled"])
    assert len(reply[sc.WEIGHTS]) == 755  # CartPole: 4 inputs, 2 actions, pi/vf [16, 16]
    assert np.allclose(reply[sc.WEIGHTS], parts["policy"].parameters_to_vector())
    assert reply[sc.COMPONENT_ID] == model.COMPONENT_ID
    assert parts["training_enabled"].value is False
    # Paused: a full buffer is thrown away instead of trained on.
    initial = parts["policy"].parameters_to_vector().copy()
    for step in [None, 1, 2, 3, 4, 5, 6]:
        model.forward(observation_message(step), **parts)
    assert np.array_equal(parts["policy"].parameters_to_vector(), initial)


def test_get_ignores_other_commands(parts):
    assert model.send_weights({sc.CMD: sc.SET}, parts["policy"], parts["training_enabled"]) is None
    assert parts["training_enabled"].value is True


def test_set_loads_exactly_that_vector_and_resumes_training(parts):
    parts["training_enabled"].set(False)
    vector = np.random.default_rng(1).normal(size=755).astype(np.float32)
    msg = {sc.CMD: sc.SET, sc.WEIGHTS: {model.COMPONENT_ID: vector.tolist(), "another-model": [0.0] * 755}}
    model.set_weights(msg, **parts)
    assert np.array_equal(parts["policy"].parameters_to_vector(), vector)
    assert parts["training_enabled"].value is True


def test_set_starts_the_optimizer_and_the_rollout_afresh(parts):
    model.forward(observation_message(), **parts)
    for step in range(1, 8):  # one update, and two steps stored after it
        model.forward(observation_message(step), **parts)
    assert parts["policy"].optimizer.state and parts["rollout_buffer"].pos == 2
    vector = parts["policy"].parameters_to_vector()
    model.set_weights({sc.CMD: sc.SET, sc.WEIGHTS: {model.COMPONENT_ID: vector.tolist()}}, **parts)
    assert not parts["policy"].optimizer.state, "Adam's moments of the old weights survived the SET"
    assert parts["rollout_buffer"].pos == 0 and parts["memory"] == {}
    # and it learns on: the next full buffer is an ordinary update from fresh moments
    model.forward(observation_message(), **parts)
    for step in range(1, 6):
        model.forward(observation_message(step), **parts)
    assert not np.array_equal(parts["policy"].parameters_to_vector(), vector)
    assert all(state["step"].item() == 1 for state in parts["policy"].optimizer.state.values())


@pytest.mark.parametrize("weights", [
    "not a dict",
    {"someone-else": [0.0] * 755},
    {"ME": [0.0] * 754},
    {"ME": [0.0] * 754 + [float("nan")]},
    {"ME": [0.0] * 754 + ["x"]},
])
def test_a_bad_set_leaves_the_weights_as_they_were(parts, weights):
    if isinstance(weights, dict) and "ME" in weights:
        weights = {model.COMPONENT_ID: weights["ME"]}
    before = parts["policy"].parameters_to_vector().copy()
    parts["training_enabled"].set(False)  # paused by a GET
    with pytest.raises(sc.BadMessage):
        model.set_weights({sc.CMD: sc.SET, sc.WEIGHTS: weights}, **parts)
    assert np.array_equal(parts["policy"].parameters_to_vector(), before)
    assert parts["training_enabled"].value is False, "a bad SET must not resume training either"


@pytest.mark.parametrize("broken", [
    {sc.OBSERVATION: [0.0, 0.0, 0.0], sc.DETERMINISTIC: False},
    {sc.OBSERVATION: [0.0, 0.0, float("inf"), 0.0], sc.DETERMINISTIC: False},
    {sc.OBSERVATION: [0.0] * 4},
    {sc.DETERMINISTIC: False},
    {sc.OBSERVATION: [0.0] * 4, sc.DETERMINISTIC: False, sc.REWARD: 1.0, sc.DONE: False, sc.ACTION: [7]},
    {sc.OBSERVATION: [0.0] * 4, sc.DETERMINISTIC: False, sc.REWARD: "1", sc.DONE: False, sc.ACTION: [0]},
])
def test_a_bad_observation_is_rejected_without_touching_the_state(parts, broken):
    model.forward(observation_message(), **parts)
    memory_before = dict(parts["memory"])
    with pytest.raises(sc.BadMessage):
        model.forward(broken, **parts)
    assert parts["rollout_buffer"].pos == 0
    assert parts["memory"]["obs"] is memory_before["obs"]


# --------------------------------------------------------------------------- SWARM_ENVS > 1
def batch_message(envs, step=None, seed=0):
    rng = np.random.default_rng(seed)
    msg = {sc.OBSERVATION: rng.normal(0, 0.05, (envs, 4)).tolist(), sc.DETERMINISTIC: False}
    if step is not None:
        msg.update({sc.REWARD: [1.0] * envs, sc.DONE: [False] * (envs - 1) + [step % 3 == 0],
                    sc.ACTION: [(step + i) % 2 for i in range(envs)]})
    return msg


def test_a_batch_goes_through_the_network_in_one_pass_row_by_row_equal():
    policy = model.make_policy()
    batched = dict(policy=policy, rollout_buffer=model.make_rollout_buffer(4), memory={},
                   training_enabled=MutableBool(True))
    msg = batch_message(4)
    logits = np.array(model.forward(msg, **batched)[sc.LOGITS])
    assert logits.shape == (4, 2)
    for row, observation in zip(logits, msg[sc.OBSERVATION]):
        single = dict(policy=policy, rollout_buffer=model.make_rollout_buffer(1), memory={},
                      training_enabled=MutableBool(True))
        alone = model.forward({sc.OBSERVATION: observation, sc.DETERMINISTIC: False}, **single)[sc.LOGITS]
        assert np.allclose(row, alone, atol=1e-6)


def test_a_batch_fills_the_buffer_per_environment_and_trains_every_five_steps():
    parts = dict(policy=model.make_policy(), rollout_buffer=model.make_rollout_buffer(3), memory={},
                 training_enabled=MutableBool(True))
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
    {sc.OBSERVATION: [[0.0] * 4] * 2, sc.DETERMINISTIC: False},  # 2 rows for 3 environments
    {sc.OBSERVATION: [0.0] * 4, sc.DETERMINISTIC: False},  # one environment's format
    {sc.OBSERVATION: [[0.0] * 4, [0.0] * 4, [0.0] * 3], sc.DETERMINISTIC: False},
    {**batch_message(3, 1), sc.REWARD: 1.0},
    {**batch_message(3, 1), sc.DONE: [False, "no", False]},
    {**batch_message(3, 1), sc.ACTION: [0, 1]},
])
def test_a_bad_batch_is_rejected(broken):
    parts = dict(policy=model.make_policy(), rollout_buffer=model.make_rollout_buffer(3), memory={},
                 training_enabled=MutableBool(True))
    with pytest.raises(sc.BadMessage):
        model.forward(broken, **parts)
    assert parts["memory"] == {}


# --------------------------------------------------------------------------- start-up cost
def test_our_adam_makes_the_same_updates_as_torchs():
    import torch
    import swarm_torch

    torch.manual_seed(0)
    reference = torch.nn.Linear(4, 3)
    ours = torch.nn.Linear(4, 3)
    ours.load_state_dict(reference.state_dict())
    optimizers = [torch.optim.Adam(reference.parameters(), lr=0.01),
                  swarm_torch.Adam(ours.parameters(), lr=0.01, fused=True)]
    for step in range(20):
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
    from conftest import ROOT
    code = ("import sys; sys.path.insert(0, '.'); import swarm_common as sc; from swergio_toolbox.objects import MutableBool; "
            "m = sc.load_script('02_model.py'); p = dict(policy=m.make_policy(), rollout_buffer=m.make_rollout_buffer(), "
            "memory={}, training_enabled=MutableBool(True)); "
            "[m.forward({'OBSERVATION': [0.01] * 4, 'DETERMINISTIC': False, **({'REWARD': 1.0, 'DONE': False, 'ACTION': [0]} if i else {})}, **p) for i in range(8)]; "
            "pos = p['rollout_buffer'].pos; "
            "m.set_weights({'CMD': 'SET', 'WEIGHTS': {m.COMPONENT_ID: m.send_weights({'CMD': 'GET'}, p['policy'], p['training_enabled'])['WEIGHTS']}}, **p); "
            "print('trained', pos, 'dynamo', 'torch._dynamo' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert output.stdout.strip() == "trained 2 dynamo False", output.stderr


def test_logits_carry_what_came_of_the_last_action(parts):
    """The echo that SWARM_FITNESS=return credits; a run's first answer and evaluations have none."""
    first = model.forward(observation_message(), **parts)
    step = model.forward({**observation_message(1), sc.DONE: True}, **parts)
    evaluation = model.forward(observation_message(2, deterministic=True), **parts)
    assert sc.DONE not in first and sc.DONE not in evaluation
    assert step[sc.REWARD] == 1.0 and step[sc.DONE] is True

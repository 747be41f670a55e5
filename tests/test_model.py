"""02_model.py handlers, without sockets: one model (the tutorial's one per process)."""
import numpy as np
import pytest
import torch

from swarm_rl.checks import BadMessage
from swarm_rl.environments import spaces
from swarm_rl.learner import Members, make_policy
from swarm_rl.protocol import (ACTION, BEHAVIOUR, CMD, COMPONENT_ID, DETERMINISTIC, DONE, ENT_COEF, EXP_AVG, EXP_AVG_SQ,
                               FINAL_OBSERVATION, GAMMA, GET,
                               HYPERPARAMETERS, LEARNING_RATE, LOGITS, OBSERVATION, OPTIMIZER, REWARD, SET, STATE, STEP,
                               TRUNCATED, WEIGHTS)
from swarm_rl.scripts import load_script
from swarm_rl.settings import SwarmSettings

model = load_script("02_model.py")


def new_model(envs=1, learning_rate=7e-4, name="model0") -> Members:
    """A model's state, as main() gives it to its client (seeded: the same weights every time)."""
    settings = SwarmSettings(envs=envs, learning_rate=learning_rate, operators="genetic", seed=0)
    return model.new_state(settings, [name])


@pytest.fixture
def parts():
    return new_model()


def forward(msg, state):
    """The model's one LOGITS reply."""
    (reply,) = model.forward(msg, state)
    return reply


def send_weights(msg, state):
    replies = model.send_weights(msg, state)
    return None if replies is None else replies[0]


def vector(state):
    return np.array(state.vector(0), dtype=np.float32)


def as_policy(state):
    """The model as a stable-baselines3 ActorCriticPolicy of its weights."""
    policy = make_policy(*spaces(), model.NET_ARCH)
    policy.load_from_vector(vector(state))
    return policy


def observation_message(step=None, deterministic=False):
    rng = np.random.default_rng(step or 0)
    msg = {OBSERVATION: rng.normal(0, 0.05, 4).tolist(), DETERMINISTIC: deterministic}
    if step is not None:
        msg.update({REWARD: 1.0, DONE: False, ACTION: [step % 2]})
    return msg


def test_forward_answers_with_two_logits_and_its_id(parts):
    reply = forward(observation_message(deterministic=True), parts)
    assert len(reply[LOGITS]) == 2 and all(np.isfinite(reply[LOGITS]))
    assert reply[COMPONENT_ID] == parts.ids[0]
    assert reply[DETERMINISTIC] is True


def test_forward_logits_are_the_policys_action_logits(parts):
    msg = observation_message()
    reply = forward(msg, parts)
    obs = torch.tensor([msg[OBSERVATION]], dtype=torch.float32)
    expected = as_policy(parts).get_distribution(obs).distribution.logits[0]
    # The categorical distribution normalises logits; compare as probabilities.
    assert np.allclose(np.exp(reply[LOGITS]) / np.exp(reply[LOGITS]).sum(), expected.exp().detach().numpy(), atol=1e-6)


def test_training_happens_every_five_steps_and_changes_the_weights(parts):
    initial = vector(parts).copy()
    forward(observation_message(), parts)
    for step in range(1, 5):
        forward(observation_message(step), parts)
    assert parts.positions[0] == 4
    assert np.array_equal(vector(parts), initial), "trained before the buffer was full"
    forward(observation_message(5), parts)  # the fifth step fills the buffer: train on it
    assert not np.array_equal(vector(parts), initial)
    assert parts.positions[0] == 0  # emptied by training


def values_of(state, observations):
    observations = torch.as_tensor(np.array(observations), dtype=torch.float32)
    return as_policy(state).predict_values(observations).detach().numpy().flatten()


@pytest.fixture
def trained_on(monkeypatch):
    """What each A2C update was given: the buffer's rewards, returns and values, copied."""
    updates = []
    real_update = Members._update

    def recording_update(self, who, last_values, dones):
        real_update(self, who, last_values, dones)
        updates.append({name: getattr(self.buffer, name).copy() for name in ("rewards", "returns", "values")})
    monkeypatch.setattr(Members, "_update", recording_update)
    return updates


@pytest.mark.parametrize("last_done", [False, True])
def test_a_full_buffer_bootstraps_from_the_next_observation_with_its_own_done(parts, trained_on, last_done):
    forward(observation_message(), parts)
    for step in range(1, 5):  # the fourth step ends an episode: the fifth is a new one's first
        forward({**observation_message(step), DONE: step == 4}, parts)
    last = {**observation_message(5), DONE: last_done}
    expected_bootstrap = values_of(parts, [last[OBSERVATION]])[0]  # before the update
    forward(last, parts)
    (update,) = trained_on
    gamma, lam = parts.config.gamma, parts.config.gae_lambda
    # The last step's advantage: its reward, plus the next observation's value unless DONE ended it.
    delta = 1.0 + (0.0 if last_done else gamma * expected_bootstrap) - update["values"][-1, 0]
    assert update["returns"][-1, 0] == pytest.approx(delta + update["values"][-1, 0], abs=1e-5)
    # ... and the DONE of the fourth message ends the fourth step, not the fifth: nothing after it
    # flows back into it, and the steps before it see its return.
    assert lam == 1.0 and update["returns"][-2, 0] == pytest.approx(1.0)
    assert update["returns"][-3, 0] == pytest.approx(1.0 + gamma * 1.0, abs=1e-5)


def test_a_truncated_episode_is_bootstrapped_not_treated_as_a_fall(parts, trained_on):
    forward(observation_message(), parts)
    for step in range(1, 5):
        forward(observation_message(step), parts)
    final_observation = [0.1, 0.2, 0.01, -0.1]  # where the pole was at step 500, before the reset
    truncated = {**observation_message(5), DONE: True, TRUNCATED: True, FINAL_OBSERVATION: final_observation}
    final_value = values_of(parts, [final_observation])[0]
    forward(truncated, parts)
    (update,) = trained_on
    gamma = parts.config.gamma
    assert update["rewards"][-1, 0] == pytest.approx(1.0 + gamma * final_value, abs=1e-5)
    assert update["returns"][-1, 0] == pytest.approx(1.0 + gamma * final_value, abs=1e-5)
    assert update["rewards"][:-1, 0].tolist() == [1.0] * 4


def test_deterministic_steps_are_neither_stored_nor_learned_from(parts, trained_on):
    initial = vector(parts).copy()
    forward(observation_message(deterministic=True), parts)
    for step in range(1, 12):
        msg = observation_message(step, deterministic=True)
        assert len(forward(msg, parts)[LOGITS]) == 2
    assert parts.positions[0] == 0 and trained_on == []
    assert np.array_equal(vector(parts), initial)
    # A training run after it starts from its own first observation.
    forward(observation_message(), parts)
    forward(observation_message(1), parts)
    assert parts.positions[0] == 1


def test_an_evaluation_in_the_middle_of_a_rollout_leaves_it_intact(parts):
    forward(observation_message(), parts)
    forward(observation_message(1), parts)
    stored = parts.buffer.observations[0].copy()
    for step in [None, 1, 2, 3, 4, 5, 6]:
        forward(observation_message(step, deterministic=True), parts)
    assert parts.positions[0] == 1 and np.array_equal(parts.buffer.observations[0], stored)


def test_get_returns_the_weight_vector_and_pauses_training(parts):
    reply = send_weights({CMD: GET}, parts)
    assert len(reply[WEIGHTS]) == 755  # CartPole: 4 inputs, 2 actions, pi/vf [16, 16]
    assert np.allclose(reply[WEIGHTS], vector(parts))
    assert reply[COMPONENT_ID] == parts.ids[0]
    assert not parts.training_enabled[0]
    # Paused: a full buffer is thrown away instead of trained on.
    initial = vector(parts).copy()
    for step in [None, 1, 2, 3, 4, 5, 6]:
        forward(observation_message(step), parts)
    assert np.array_equal(vector(parts), initial)


def test_get_ignores_other_commands(parts):
    assert send_weights({CMD: SET}, parts) is None
    assert parts.training_enabled[0]


def test_set_loads_exactly_that_vector_and_resumes_training(parts):
    parts.training_enabled[0] = False
    new = np.random.default_rng(1).normal(size=755).astype(np.float32)
    msg = {CMD: SET, WEIGHTS: {parts.ids[0]: new.tolist(), "another-model": [0.0] * 755}}
    model.set_weights(msg, parts)
    assert np.array_equal(vector(parts), new)
    assert parts.training_enabled[0]


def test_set_starts_the_optimizer_and_the_rollout_afresh(parts):
    forward(observation_message(), parts)
    for step in range(1, 8):  # one update, and two steps stored after it
        forward(observation_message(step), parts)
    assert parts.optimizer_state(0) is not None and parts.positions[0] == 2
    before = vector(parts)
    model.set_weights({CMD: SET, WEIGHTS: {parts.ids[0]: before.tolist()}}, parts)
    assert parts.optimizer_state(0) is None, "Adam's moments of the old weights survived the SET"
    assert parts.positions[0] == 0 and not parts.remembers[0]
    # and it learns on: the next full buffer is an ordinary update from fresh moments
    forward(observation_message(), parts)
    for step in range(1, 6):
        forward(observation_message(step), parts)
    assert not np.array_equal(vector(parts), before)
    assert parts.optimizer_state(0)[STEP] == 1


def train_steps(parts, steps):
    forward(observation_message(), parts)
    for step in range(1, steps + 1):
        forward(observation_message(step), parts)


def test_weights_with_their_adam_state_make_a_twin_that_learns_alike(parts):
    """STATE carries Adam's state; a SET that brings it along makes another model a twin: the same
    steps then give both exactly the same weights (with fresh moments they would differ)."""
    train_steps(parts, 10)  # two updates
    reply = send_weights({CMD: STATE}, parts)
    assert parts.training_enabled[0], "STATE does not pause training"
    assert OPTIMIZER not in send_weights({CMD: GET}, parts)
    assert reply[OPTIMIZER][STEP] == 2 and len(reply[OPTIMIZER][EXP_AVG]) == len(reply[OPTIMIZER][EXP_AVG_SQ]) == 755
    parts.training_enabled[0] = True
    twin, fresh = new_model(), new_model()
    model.set_weights({CMD: SET, WEIGHTS: {parts.ids[0]: reply[WEIGHTS]}, OPTIMIZER: {parts.ids[0]: reply[OPTIMIZER]}}, twin)
    model.set_weights({CMD: SET, WEIGHTS: {parts.ids[0]: reply[WEIGHTS]}}, fresh)
    for each in (parts, twin, fresh):
        train_steps(each, 5)
    assert np.array_equal(vector(twin), vector(parts))
    assert not np.array_equal(vector(fresh), vector(parts))


def test_an_untrained_model_has_no_adam_state_to_give(parts):
    assert send_weights({CMD: STATE}, parts)[OPTIMIZER] is None


@pytest.mark.parametrize("adam", ["not a dict", {STEP: 1, EXP_AVG: [0.0] * 755},
                                  {STEP: 0, EXP_AVG: [0.0] * 755, EXP_AVG_SQ: [0.0] * 755},
                                  {STEP: 1, EXP_AVG: [0.0] * 755, EXP_AVG_SQ: [-1.0] * 755},
                                  {STEP: 1, EXP_AVG: [0.0] * 754, EXP_AVG_SQ: [0.0] * 755}])
def test_a_bad_adam_state_leaves_the_weights_as_they_were(parts, adam):
    before = vector(parts).copy()
    with pytest.raises(BadMessage, match="weights unchanged"):
        model.set_weights({CMD: SET, WEIGHTS: {parts.ids[0]: [0.0] * 755}, OPTIMIZER: {parts.ids[0]: adam}}, parts)
    assert np.array_equal(vector(parts), before)


@pytest.mark.parametrize("weights", [
    "not a dict",
    {"ME": [0.0] * 754},
    {"ME": [0.0] * 754 + [float("nan")]},
    {"ME": [0.0] * 754 + ["x"]},
])
def test_a_bad_set_leaves_the_weights_as_they_were(parts, weights):
    if isinstance(weights, dict) and "ME" in weights:
        weights = {parts.ids[0]: weights["ME"]}
    before = vector(parts).copy()
    parts.training_enabled[0] = False  # paused by a GET
    with pytest.raises(BadMessage):
        model.set_weights({CMD: SET, WEIGHTS: weights}, parts)
    assert np.array_equal(vector(parts), before)
    assert not parts.training_enabled[0], "a bad SET must not resume training either"


def test_a_set_for_other_models_resumes_training_and_changes_nothing_else(parts):
    """Population-based training copies weights into a few members only; the rest keep theirs,
    their Adam moments and their rollout."""
    forward(observation_message(), parts)
    for step in range(1, 7):
        forward(observation_message(step), parts)
    before, moments = vector(parts).copy(), parts.optimizer_state(0)[STEP]
    stored = parts.positions[0]
    parts.training_enabled[0] = False
    model.set_weights({CMD: SET, WEIGHTS: {"someone-else": [0.0] * 755}}, parts)
    assert parts.training_enabled[0]
    assert np.array_equal(vector(parts), before)
    assert parts.optimizer_state(0)[STEP] == moments > 0 and parts.positions[0] == stored > 0


def test_get_reports_and_set_changes_the_learning_rate(parts):
    reply = send_weights({CMD: GET}, parts)
    assert reply[HYPERPARAMETERS] == {LEARNING_RATE: pytest.approx(7e-4), ENT_COEF: 0.0, GAMMA: 0.99}
    model.set_weights({CMD: SET, WEIGHTS: {}, HYPERPARAMETERS: {parts.ids[0]: {LEARNING_RATE: 0.003}}}, parts)
    assert parts.learning_rate(0) == pytest.approx(0.003)
    assert parts.training_enabled[0]


@pytest.mark.parametrize("hyper", [{LEARNING_RATE: -1.0}, {LEARNING_RATE: "fast"}, {}, "0.1"])
def test_a_bad_learning_rate_changes_nothing(parts, hyper):
    zeros = np.zeros(755, dtype=np.float32)
    parts.training_enabled[0] = False
    with pytest.raises(BadMessage):
        model.set_weights({CMD: SET, WEIGHTS: {parts.ids[0]: zeros.tolist()}, HYPERPARAMETERS: {parts.ids[0]: hyper}},
                          parts)
    assert not np.array_equal(vector(parts), zeros)
    assert parts.learning_rate(0) == pytest.approx(7e-4)
    assert not parts.training_enabled[0]


def test_population_based_training_spreads_the_initial_hyperparameters():
    settings = SwarmSettings(learning_rate=0.002, operators="pbt", evolved="learning-rate")
    starts = [model.initial_hyperparameters(settings, seed) for seed in range(50)]
    rates = [start[LEARNING_RATE] for start in starts]
    assert all(0.001 <= rate <= 0.004 for rate in rates) and np.std(np.log2(rates)) > 0.4
    assert all(start[ENT_COEF] == 0.0 and start[GAMMA] == 0.99 for start in starts)
    assert model.initial_hyperparameters(settings.replace(operators="genetic"), 3)[LEARNING_RATE] == 0.002
    every = [model.initial_hyperparameters(settings.replace(evolved="all"), seed) for seed in range(50)]
    assert all(1e-4 <= start[ENT_COEF] <= 1e-2 and 0.95 <= start[GAMMA] <= 0.995 for start in every)
    assert len({start[GAMMA] for start in every}) == 50


def test_a_set_gives_a_model_its_hyperparameters(parts):
    model.set_weights({CMD: SET, WEIGHTS: {}, HYPERPARAMETERS: {parts.ids[0]: {ENT_COEF: 0.01, GAMMA: 0.95}}}, parts)
    assert parts.hyperparameters(0) == {LEARNING_RATE: pytest.approx(7e-4), ENT_COEF: 0.01, GAMMA: 0.95}
    with pytest.raises(BadMessage, match="GAMMA must be in"):
        model.set_weights({CMD: SET, WEIGHTS: {}, HYPERPARAMETERS: {parts.ids[0]: {GAMMA: 1.5}}}, parts)
    assert parts.hyperparameters(0)[GAMMA] == 0.95


@pytest.mark.parametrize("broken", [
    {OBSERVATION: [0.0, 0.0, 0.0], DETERMINISTIC: False},
    {OBSERVATION: [0.0, 0.0, float("inf"), 0.0], DETERMINISTIC: False},
    {OBSERVATION: [0.0] * 4},
    {DETERMINISTIC: False},
    {OBSERVATION: [0.0] * 4, DETERMINISTIC: False, REWARD: 1.0, DONE: False, ACTION: [7]},
    {OBSERVATION: [0.0] * 4, DETERMINISTIC: False, REWARD: "1", DONE: False, ACTION: [0]},
    {OBSERVATION: [0.0] * 4, DETERMINISTIC: False, REWARD: 1.0, DONE: False, ACTION: [0], BEHAVIOUR: 0.0},
    {OBSERVATION: [0.0] * 4, DETERMINISTIC: False, REWARD: 1.0, DONE: False, ACTION: [0], BEHAVIOUR: 1.5},
    {OBSERVATION: [0.0] * 4, DETERMINISTIC: False, REWARD: 1.0, DONE: False, ACTION: [0], BEHAVIOUR: "half"},
])
def test_a_bad_observation_is_rejected_without_touching_the_state(parts, broken):
    forward(observation_message(), parts)
    memory_before = dict(parts.memory)
    with pytest.raises(BadMessage):
        forward(broken, parts)
    assert parts.positions[0] == 0
    assert parts.memory["obs"] is memory_before["obs"]


# --------------------------------------------------------------------------- SWARM_ENVS > 1
def batch_message(envs, step=None, seed=0):
    rng = np.random.default_rng(seed)
    msg = {OBSERVATION: rng.normal(0, 0.05, (envs, 4)).tolist(), DETERMINISTIC: False}
    if step is not None:
        msg.update({REWARD: [1.0] * envs, DONE: [False] * (envs - 1) + [step % 3 == 0],
                    ACTION: [(step + i) % 2 for i in range(envs)]})
    return msg


def test_a_batch_goes_through_the_network_in_one_pass_row_by_row_equal():
    batched = new_model(4)
    msg = batch_message(4)
    logits = np.array(forward(msg, batched)[LOGITS])
    assert logits.shape == (4, 2)
    for row, observation in zip(logits, msg[OBSERVATION]):
        single = new_model(1)
        alone = forward({OBSERVATION: observation, DETERMINISTIC: False}, single)[LOGITS]
        assert np.allclose(row, alone, atol=1e-6)


def test_a_batch_fills_the_buffer_per_environment_and_trains_every_five_steps():
    parts = new_model(3)
    initial = vector(parts).copy()
    forward(batch_message(3), parts)
    for step in range(1, 5):
        forward(batch_message(3, step, seed=step), parts)
    buffer = parts.buffer
    assert parts.positions[0] == 4 and buffer.rewards.shape == (5, 3)
    assert buffer.actions[:4, :, 0].tolist() == [[(s + i) % 2 for i in range(3)] for s in range(1, 5)]
    assert np.array_equal(vector(parts), initial)
    forward(batch_message(3, 5, seed=5), parts)
    assert not np.array_equal(vector(parts), initial) and parts.positions[0] == 0


@pytest.mark.parametrize("broken", [
    {OBSERVATION: [[0.0] * 4] * 2, DETERMINISTIC: False},  # 2 rows for 3 environments
    {OBSERVATION: [0.0] * 4, DETERMINISTIC: False},  # one environment's format
    {OBSERVATION: [[0.0] * 4, [0.0] * 4, [0.0] * 3], DETERMINISTIC: False},
    {**batch_message(3, 1), REWARD: 1.0},
    {**batch_message(3, 1), DONE: [False, "no", False]},
    {**batch_message(3, 1), ACTION: [0, 1]},
])
def test_a_bad_batch_is_rejected(broken):
    parts = new_model(3)
    with pytest.raises(BadMessage):
        forward(broken, parts)
    assert not parts.remembers.any()


def test_logits_carry_what_came_of_the_last_action(parts):
    """The echo that SWARM_FITNESS=return credits; a run's first answer and evaluations have none."""
    first = forward(observation_message(), parts)
    step = forward({**observation_message(1), DONE: True}, parts)
    evaluation = forward(observation_message(2, deterministic=True), parts)
    assert DONE not in first and DONE not in evaluation
    assert step[REWARD] == 1.0 and step[DONE] is True


def test_adam_epsilon_is_the_settings_the_tutorials_is_actor_critic_policys():
    assert new_model().adam.eps == 1e-8
    assert model.new_state(SwarmSettings.from_env({"SWARM_PRESET": "tutorial"}), ["model0"]).adam.eps == 1e-5

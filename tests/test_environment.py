"""04_environment.py handlers, without sockets: episode accounting and AVG_SCORE."""
import gymnasium
import numpy as np
import pytest

from swarm_rl.checks import BadMessage
from swarm_rl.client import Reply
from swarm_rl.environments import DEFAULT_ENV_ID as ENV_ID
from swarm_rl.protocol import (ACTION, AVG_SCORE, DETERMINISTIC, DONE, ENV_DONE, ENV_PROGRESS, EPISODE, EVOLUTION,
                               FINAL_OBSERVATION, NR_OF_EPISODE, OBSERVATION, REWARD, ROOM_CONTROL, ROOT_ID, SCORES,
                               STATUS, STEPS, TRUNCATED)
from swarm_rl.settings import SwarmSettings
from tests.helpers import load_script

environment = load_script("04_environment.py")


@pytest.fixture
def cartpole():
    return environment.EnvironmentCopies([gymnasium.make(ENV_ID)])


def request(episodes, deterministic=False, root_id="run-1"):
    return {NR_OF_EPISODE: episodes, DETERMINISTIC: deterministic, ROOT_ID: root_id}


def step(copies, action, root_id="run-1"):
    """What the environment sends for one ACTION: (to the models, to the control), each None if
    nothing; the observation always goes out before the report."""
    replies = environment.step({ACTION: action, ROOT_ID: root_id}, copies) or []
    to_models = [reply for reply in replies if not isinstance(reply, Reply)]
    to_control = [reply for reply in replies if isinstance(reply, Reply)]
    assert replies == to_models + to_control and len(to_models) <= 1 and len(to_control) <= 1
    assert all(reply.room == ROOM_CONTROL for reply in to_control)
    return (to_models[0] if to_models else None), (to_control[0].message if to_control else None)


def play(cartpole, root_id="run-1", policy=lambda obs: int(obs[2] > 0), max_steps=10_000):
    """Answer observations like the swarm would, until ENV_DONE; every message the env sent."""
    sent_to_models, sent_to_control = [], []
    observation = None
    for _ in range(max_steps):
        action = [policy(observation) if observation is not None else 0]
        reply, report = step(cartpole, action, root_id)
        if reply is not None:
            sent_to_models.append(reply)
            observation = reply[OBSERVATION]
        if report is not None:
            sent_to_control.append(report)
            if report[STATUS] == ENV_DONE:
                return sent_to_models, sent_to_control
    raise AssertionError("no ENV_DONE")


def test_a_run_starts_with_a_first_observation(cartpole):
    reply = environment.start_run(request(3, deterministic=True), cartpole)
    assert len(reply[OBSERVATION]) == 4
    assert reply[DETERMINISTIC] is True and reply[ROOT_ID] == "run-1"
    assert REWARD not in reply


def test_episode_accounting_and_avg_score(cartpole):
    environment.start_run(request(3), cartpole)
    to_models, to_control = play(cartpole)
    dones = [i for i, m in enumerate(to_models) if m[DONE]]
    assert len(dones) == 3, "exactly the requested number of episodes"
    lengths = np.diff([-1, *dones])  # CartPole pays 1 per step: an episode's score is its length
    assert [r[STATUS] for r in to_control] == [ENV_PROGRESS, ENV_PROGRESS, ENV_DONE]
    assert to_control[-1][AVG_SCORE] == pytest.approx(lengths.mean())
    assert to_control[-1][STEPS] == len(to_models)
    assert all(m[REWARD] == 1.0 and m[ROOT_ID] == "run-1" for m in to_models)
    # After the run, further actions are ignored, and ENV_DONE is not sent again.
    assert environment.step({ACTION: [0], ROOT_ID: "run-1"}, cartpole) is None


def test_env_done_waits_for_the_action_for_the_last_observation(cartpole):
    """Every component has then finished the run: the control's next request cannot overtake it."""
    environment.start_run(request(1), cartpole)
    while True:
        reply, done = step(cartpole, [0])
        if reply is None:
            break
        last = reply
        assert done is None, "ENV_DONE before the last action came back"
    assert last[DONE] is True
    assert done[STATUS] == ENV_DONE and done[STEPS] == done[SCORES][0]


def test_after_done_the_observation_is_the_next_episodes_first(cartpole):
    environment.start_run(request(2), cartpole)
    to_models, _ = play(cartpole, policy=lambda obs: 0)  # always push left: short episodes
    first_done = next(m for m in to_models if m[DONE])
    assert max(abs(x) for x in first_done[OBSERVATION]) <= 0.05  # reset draws from ±0.05


def test_a_new_request_abandons_the_run_in_progress(cartpole):
    environment.start_run(request(5, root_id="old"), cartpole)
    environment.step({ACTION: [0], ROOT_ID: "old"}, cartpole)
    environment.start_run(request(1, root_id="new"), cartpole)
    assert environment.step({ACTION: [0], ROOT_ID: "old"}, cartpole) is None
    _, to_control = play(cartpole, root_id="new")
    assert [r[ROOT_ID] for r in to_control] == ["new"]


def test_other_control_messages_are_not_runs(cartpole):
    assert environment.start_run({EVOLUTION: True}, cartpole) is None
    assert cartpole.run is None
    assert environment.step({ACTION: [0]}, cartpole) is None  # no run: nothing to step


@pytest.mark.parametrize("broken", [
    {NR_OF_EPISODE: 0, DETERMINISTIC: False},
    {NR_OF_EPISODE: "3", DETERMINISTIC: False},
    {NR_OF_EPISODE: True, DETERMINISTIC: False},
    {NR_OF_EPISODE: 2},
])
def test_bad_requests_are_rejected(cartpole, broken):
    with pytest.raises(BadMessage):
        environment.start_run(broken, cartpole)
    assert cartpole.run is None


@pytest.mark.parametrize("action", [[2], [0, 1], 1, ["0"], [True], [0.0]])
def test_bad_actions_are_rejected_and_do_not_step(cartpole, action):
    environment.start_run(request(1), cartpole)
    with pytest.raises(BadMessage):
        environment.step({ACTION: action, ROOT_ID: "run-1"}, cartpole)
    assert cartpole.run.steps == 0


# --------------------------------------------------------------------------- SWARM_ENVS > 1
@pytest.fixture
def three_cartpoles():
    return environment.EnvironmentCopies([gymnasium.make(ENV_ID) for _ in range(3)])


def test_with_one_environment_the_messages_are_the_tutorials(cartpole):
    first = environment.start_run(request(1), cartpole)
    reply, _ = step(cartpole, [1])
    assert len(first[OBSERVATION]) == 4 and all(isinstance(x, float) for x in first[OBSERVATION])
    assert isinstance(reply[REWARD], float) and isinstance(reply[DONE], bool) and reply[ACTION] == [1]


def test_copies_step_together_and_every_copys_episodes_count(three_cartpoles):
    first = environment.start_run(request(7), three_cartpoles)
    assert np.array(first[OBSERVATION]).shape == (3, 4)
    ended, reports, steps = 0, [], 0
    while True:
        reply, report = step(three_cartpoles, [0, 1, 0])
        if reply is None:  # the action for the last observation: the run is over
            reports.append(report)
            break
        steps += 1
        assert np.array(reply[OBSERVATION]).shape == (3, 4)
        assert reply[REWARD] == [1.0] * 3 and len(reply[DONE]) == 3
        ended += sum(reply[DONE])
        if report is not None:
            reports.append(report)
    done = reports[-1]
    assert done[STATUS] == ENV_DONE and all(r[STATUS] == ENV_PROGRESS for r in reports[:-1])
    assert done[EPISODE] == len(done[SCORES]) == 7 and ended >= 7
    assert done[STEPS] == 3 * steps  # a step of three copies is three environment steps
    assert done[AVG_SCORE] == pytest.approx(np.mean(done[SCORES]))


@pytest.mark.parametrize("action", [[0, 1], [0, 1, 2], [0, 1, True], 0])
def test_a_batch_action_needs_one_valid_action_per_copy(three_cartpoles, action):
    environment.start_run(request(1), three_cartpoles)
    with pytest.raises(BadMessage):
        environment.step({ACTION: action, ROOT_ID: "run-1"}, three_cartpoles)
    assert three_cartpoles.run.steps == 0


def test_each_copy_counts_its_first_episodes_so_short_ones_are_not_favoured(three_cartpoles):
    # Copy 0 falls fast (always left); copies 1 and 2 balance longer. 6 episodes are 2 per copy:
    # counting whichever end first would report mostly copy 0's short episodes.
    environment.start_run(request(6), three_cartpoles)
    lengths, current, observation = [[], [], []], [0, 0, 0], None
    while True:
        actions = [0] + ([int(o[2] > 0) for o in observation[1:]] if observation else [0, 0])
        reply, report = step(three_cartpoles, actions)
        if reply is None:
            break
        observation = reply[OBSERVATION]
        for i, done in enumerate(reply[DONE]):
            current[i] += 1
            if done:
                lengths[i].append(current[i])
                current[i] = 0
    assert report[STATUS] == ENV_DONE
    counted = sorted(lengths[0][:2] + lengths[1][:2] + lengths[2][:2])
    assert sorted(report[SCORES]) == counted
    assert len(lengths[0]) > 2, "copy 0 played on (its further episodes train, but are not scored)"


def test_a_truncated_episode_sends_where_the_pole_was(cartpole):
    cartpole.envs[0] = gymnasium.make(ENV_ID, max_episode_steps=3)  # a short time limit
    environment.start_run(request(1), cartpole)
    replies = [step(cartpole, [index % 2])[0] for index in range(3)]
    assert all(TRUNCATED not in reply for reply in replies[:2]), "only a time limit adds the keys"
    last = replies[-1]
    assert last[DONE] is True and last[TRUNCATED] is True
    final, first = np.array(last[FINAL_OBSERVATION]), np.array(last[OBSERVATION])
    assert final.shape == (4,) and not np.allclose(final, first)  # the last state, and the new episode's first
    assert max(abs(first)) <= 0.05


def test_a_fall_is_not_a_truncation(cartpole):
    environment.start_run(request(1), cartpole)
    to_models, _ = play(cartpole, policy=lambda obs: 0)  # falls long before 500 steps
    assert to_models[-1][DONE] is True and TRUNCATED not in to_models[-1]


def test_a_seeded_environment_repeats_its_episodes():
    runs = []
    for _ in range(2):
        cartpole = environment.EnvironmentCopies([gymnasium.make(ENV_ID) for _ in range(2)], seed=7)
        runs.append(environment.start_run(request(1), cartpole)[OBSERVATION])
    assert runs[0] == runs[1] and runs[0][0] != runs[0][1]


def test_the_state_comes_from_the_settings():
    copies = environment.new_state(SwarmSettings(envs=3, seed=4))
    assert len(copies.envs) == 3 and copies.run is None
    assert copies.seed == SwarmSettings(seed=4).component_seed(environment.COMPONENT_NAME)

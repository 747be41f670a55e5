"""The in-process runner: the real handlers without sockets, driven by the control's own loop."""
import json

import pytest

from swarm_rl import rounds
from swarm_rl.local import LocalSwarm, confirm_from_state
from swarm_rl.settings import SwarmSettings
from tests.helpers import run_control

EXACT = ("round", "steps", "train_mean", "eval_mean", "eval_std", "confirm_mean", "after_mean", "after_std")


def test_in_process_and_over_sockets_a_seeded_swarm_plays_the_same_rounds(swarm_env):
    """Same seed, same settings: the same actions, so the same steps and scores in every round,
    and the same evolution. The fitness spread is a sum of float shares of the models' outputs, and
    a matrix product may round its last bit differently in another process: it agrees to 1e-6
    (1e-9 absolute: identical members differ by rounding alone)."""
    env = {"SWARM_PRESET": "swarm", "SWARM_SEED": "5", "SWARM_MODELS": "4", "SWARM_ENVS": "2", "SWARM_EPISODES": "4",
           "SWARM_ROUNDS": "4", "SWARM_EVAL_EPISODES": "2"}
    process = run_control(env)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    over_sockets = json.loads((swarm_env.log_dir / "result.json").read_text())["history"]

    in_process = LocalSwarm(SwarmSettings.from_env(env)).train_until_solved(report=lambda line: None)["history"]
    assert len(in_process) == len(over_sockets) == 4
    for here, there in zip(in_process, over_sockets):
        assert {k: here[k] for k in EXACT} == {k: there[k] for k in EXACT}
        if there["fitness_spread"] is None:  # the last round does not evolve
            assert here["fitness_spread"] is None
        else:
            assert here["fitness_spread"] == pytest.approx(there["fitness_spread"], rel=1e-6, abs=1e-9)
    assert any(row["fitness_spread"] for row in in_process), "no evolution ranked the members"
    assert in_process[-1]["steps"] > in_process[0]["steps"]


def test_the_same_seed_plays_the_same_rounds():
    """SWARM_SEED reproduces a run: every round's steps and scores, and the evolution's ranking."""
    settings = SwarmSettings(models=3, envs=2, episodes=3, rounds=3, seed=8)
    first, second = (LocalSwarm(settings).train_until_solved(report=lambda line: None)["history"] for _ in range(2))
    assert [{k: row[k] for k in (*EXACT, "fitness_spread")} for row in first] == [
        {k: row[k] for k in (*EXACT, "fitness_spread")} for row in second]


def test_different_seeds_play_different_rounds():
    """The agreement above is not a runner that ignores its models: another seed plays otherwise."""
    histories = [LocalSwarm(SwarmSettings(models=3, envs=2, episodes=3, rounds=2, seed=seed))
                 .train_until_solved(report=lambda line: None)["history"] for seed in (5, 6)]
    assert [row["steps"] for row in histories[0]] != [row["steps"] for row in histories[1]]


def test_a_silent_swarm_is_an_error_naming_the_request():
    runner = LocalSwarm(SwarmSettings(models=2, seed=1))
    with pytest.raises(Exception, match=r"no ENV_DONE after \['DETERMINISTIC', 'NR_OF_EPISODE'\]"):
        runner.request({"NR_OF_EPISODE": 0, "DETERMINISTIC": False}, until="ENV_DONE")  # refused: 0 episodes


def test_an_evaluation_without_messages_scores_as_the_messages_do():
    """`play` (the in-process runner's evaluations) against the same deterministic run through the
    hub, on two swarms of one seed after the same training: the same scores and steps, and the
    training after it goes on the same way (an evaluation leaves no state behind)."""
    settings = SwarmSettings(models=3, envs=2, episodes=4, seed=5, learning_rate=0.01)
    direct, messages = LocalSwarm(settings), LocalSwarm(settings)
    for runner in (direct, messages):
        runner.start(8)
    played = direct.play(6)
    sent = messages.request({"NR_OF_EPISODE": 6, "DETERMINISTIC": True}, until="ENV_DONE")
    assert played["SCORES"] == sent["SCORES"] and played["STEPS"] == sent["STEPS"]
    assert min(played["SCORES"]) > 50, "episodes that end at once: not a test of the actions"
    assert direct.start(4)["SCORES"] == messages.start(4)["SCORES"]


def test_another_gymnasium_environment_plays_a_round():
    """Acrobot-v1: six observations, three actions, -1 a step and a threshold of -100."""
    settings = SwarmSettings(env_id="Acrobot-v1", models=2, envs=2, episodes=2, rounds=2, eval_episodes=2, seed=0)
    runner = LocalSwarm(settings)
    history = runner.train_until_solved(report=lambda line: None)["history"]
    assert [row["round"] for row in history] == [1, 2]
    assert all(-500 <= row["train_mean"] < 0 and -500 <= row["eval_mean"] < 0 for row in history)
    assert history[0]["steps"] >= -2 * history[0]["train_mean"]  # each counted step paid -1 (the last one 0)
    assert set(runner.actions([[0.0] * 6] * 50).tolist()) <= {0, 1, 2}


def test_the_confirmation_is_played_from_the_members_state_and_stops_when_out_of_reach():
    settings = SwarmSettings(models=3, envs=2, episodes=2, seed=1)
    swarm = LocalSwarm(settings)
    swarm.start(2)
    answers = swarm.state()
    mean, played = confirm_from_state(answers, settings, 475.0, round_nr=1)
    assert played == 10 and mean < 250, "below 250, even 90 perfect episodes could not make 475"
    full = confirm_from_state(answers, settings, 5.0, round_nr=1)
    assert full[1] == 100 and full == confirm_from_state(answers, settings, 5.0, round_nr=1), "seeded: repeatable"
    assert confirm_from_state(answers, settings, 5.0, round_nr=2) != full, "each round's starting states of its own"
    # The members' own weights play: zeroed, every member pushes the same way and the pole falls at once.
    zeroed = [{**answer, "WEIGHTS": [0.0] * len(answer["WEIGHTS"])} for answer in answers]
    assert confirm_from_state(zeroed, settings, 5.0, round_nr=1)[0] < 11


def test_a_round_is_solved_only_by_a_whole_confirmation_at_the_threshold():
    def start(episodes, deterministic):
        return {"SCORES": [500.0] * episodes, "STEPS": 500 * episodes}

    lines = []
    settings = SwarmSettings(envs=2, episodes=2, rounds=3, evolution=False, max_seconds=0)
    outcomes = iter([(470.0, 40), (480.0, 100)])
    result = rounds.train_until_solved(start, lambda: 0.0, lambda threshold, round_nr: next(outcomes), settings,
                                       report=lines.append)
    assert result["solved"] and [row["confirmed"] for row in result["history"]] == [False, True]
    assert "not confirmed:  470.0 over 40" in lines[2] and "  confirmed  480.0 over 100" in lines[4]

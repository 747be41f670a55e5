"""03_aggregation.py handlers, without sockets."""
import numpy as np
import pytest

from swarm_rl.checks import BadMessage
from swarm_rl.fitness import AdvantageCredit, Contribution, LeadReturn, Outcome, ReturnCredit
from swarm_rl.protocol import (ACTION, BEHAVIOUR, CMD, COMPONENT, COMPONENT_ID, CONTRIBUTION, DETERMINISTIC, DONE, ERROR,
                               GET, LOGITS, MISSING, PONG, REWARD, ROOT_ID, SET, STATUS, WEIGHTS)
from swarm_rl.settings import SwarmSettings
from tests.helpers import load_script

aggregation = load_script("03_aggregation.py")


class Draws:
    """The generator the aggregation samples actions with (shared by the states a test makes)."""
    rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def fresh_draws():
    Draws.rng = np.random.default_rng(0)


def new_state(models, envs=1, fitness="contribution", training_actions="summed", vote="probabilities"):
    """The aggregation's state for `models` models (by default the tutorial's action choice and
    fitness), drawing from `Draws.rng`."""
    state = aggregation.new_state(SwarmSettings(models=models, envs=envs, fitness=fitness,
                                                training_actions=training_actions, vote=vote))
    state.rng = Draws.rng
    return state


def aggregate(msg, state):
    return aggregation.aggregate(msg, state)


def logits_for(p0: float) -> list[float]:
    """Logits whose softmax gives probability p0 to action 0."""
    return [float(np.log(p0)), float(np.log(1 - p0))]


def logits_message(model_id, p0, deterministic=True, root_id="run-1"):
    return {COMPONENT_ID: model_id, LOGITS: logits_for(p0), DETERMINISTIC: deterministic,
            ROOT_ID: root_id}


def run_step(messages, nr_of_models, state=None):
    state = state or new_state(nr_of_models)
    replies = [aggregate(m, state) for m in messages]
    return replies, state


def test_deterministic_action_is_the_argmax_of_summed_probabilities():
    # One confident model outweighs two lukewarm ones: a majority vote would say action 1.
    messages = [logits_message("a", 0.99), logits_message("b", 0.4), logits_message("c", 0.4)]
    replies, state = run_step(messages, 3)
    assert replies[:2] == [None, None], "acted before every model had answered"
    assert replies[2] == {ACTION: [0]}
    assert state.fitness.earned == {}, "an evaluation step earns no one fitness"


def test_a_majority_follows_the_many_and_log_probabilities_the_product():
    # one model sure of action 0, two lukewarm for action 1: (models, envs, actions)
    logits = np.array([[logits_for(0.99)], [logits_for(0.4)], [logits_for(0.4)]])
    assert aggregation.decide(logits, "probabilities").tolist() == [0]  # 0.99 + 0.4 + 0.4 against 1.2
    assert aggregation.decide(logits, "majority").tolist() == [1]
    assert aggregation.decide(logits, "log-probabilities").tolist() == [0]  # 0.99 * 0.16 against 0.01 * 0.36
    veto = np.array([[logits_for(0.001)], [logits_for(0.9)], [logits_for(0.9)]])  # one model all but rules out 0
    assert aggregation.decide(veto, "probabilities").tolist() == aggregation.decide(veto, "majority").tolist() == [0]
    assert aggregation.decide(veto, "log-probabilities").tolist() == [1]  # 0.001 * 0.81 against 0.999 * 0.01


def test_a_tied_majority_goes_to_the_summed_probabilities():
    logits = np.array([[logits_for(0.9), logits_for(0.6)], [logits_for(0.4), logits_for(0.1)]])
    assert aggregation.decide(logits, "majority").tolist() == [0, 1]


def test_the_vote_setting_reaches_the_evaluation_steps():
    messages = [logits_message("a", 0.99), logits_message("b", 0.4), logits_message("c", 0.4)]
    replies, _ = run_step(messages, 3, new_state(3, vote="majority"))
    assert replies[-1] == {ACTION: [1]}


class FixedDraws:
    """Stands in for the aggregation's random generator: the inverse-CDF draws we choose."""
    def __init__(self, *draws):
        self.draws = np.array(draws).reshape(-1, 1)

    def random(self, shape):
        return self.draws[:shape[0]]


def test_a_training_step_credits_each_models_share_of_the_chosen_action(monkeypatch):
    Draws.rng = FixedDraws(0.999)  # the last action: 1
    messages = [logits_message(k, p, deterministic=False) for k, p in [("a", 0.99), ("b", 0.4), ("c", 0.4)]]
    replies, state = run_step(messages, 3)
    contribution = state.fitness.earned
    summed1 = 0.01 + 0.6 + 0.6
    assert replies[2] == {ACTION: [1], BEHAVIOUR: pytest.approx(summed1 / 3)}, "the action's summed probability"
    assert contribution["a"] == pytest.approx(0.01 / summed1)
    assert contribution["b"] == pytest.approx(0.6 / summed1)
    assert sum(contribution.values()) == pytest.approx(1.0)


def test_contributions_accumulate_and_each_step_adds_one():
    state = new_state(2)
    for p in [0.2, 0.7, 0.5, 0.9]:
        run_step([logits_message("a", p, False), logits_message("b", 1 - p / 2, False)], 2, state)
    assert sum(state.fitness.earned.values()) == pytest.approx(4.0)


def test_sampled_action_follows_the_summed_distribution():
    Draws.rng = np.random.default_rng(0)
    actions = []
    for _ in range(4000):
        replies, _ = run_step([logits_message("a", 0.9, False), logits_message("b", 0.3, False)], 2)
        actions.append(replies[-1][ACTION][0])
    assert np.mean(np.array(actions) == 0) == pytest.approx((0.9 + 0.3) / 2, abs=0.03)


def test_a_repeated_answer_does_not_count_twice():
    replies, state = run_step([logits_message("a", 0.6), logits_message("a", 0.7)], 2)
    assert replies == [None, None]
    assert list(state.step.logits) == ["a"]


def test_answers_from_an_abandoned_run_are_ignored():
    state = new_state(2)
    run_step([logits_message("a", 0.6, root_id="old")], 2, state)
    run_step([logits_message("b", 0.6, root_id="new")], 2, state)  # a new run starts
    replies, _ = run_step([logits_message("a", 0.6, root_id="old")], 2, state)  # late, stale
    assert replies == [None] and list(state.step.logits) == ["b"]
    replies, _ = run_step([logits_message("a", 0.6, root_id="new")], 2, state)
    assert replies[0][ACTION] == [0]


@pytest.mark.parametrize("broken", [
    {LOGITS: [0.1, 0.2], DETERMINISTIC: True},
    {COMPONENT_ID: "x", LOGITS: [0.1, float("nan")], DETERMINISTIC: True},
    {COMPONENT_ID: "x", LOGITS: "0.1,0.2", DETERMINISTIC: True},
    {COMPONENT_ID: "x", LOGITS: [0.1, 0.2, 0.3], DETERMINISTIC: True},
    {COMPONENT_ID: "x", LOGITS: [0.1, 0.2], DETERMINISTIC: "yes"},
])
def test_bad_logits_do_not_count_towards_the_step(broken):
    state = new_state(2)
    run_step([logits_message("a", 0.6, root_id=None)], 2, state)
    with pytest.raises(BadMessage):
        aggregate(broken, state)
    assert list(state.step.logits) == ["a"] and state.fitness.earned == {}


def test_get_hands_over_the_contributions_and_clears_them():
    state = new_state(2)
    state.fitness.earned = {"a": 1.5, "b": 0.5}
    reply = aggregation.send_fitness({CMD: GET}, state)
    assert reply == {CONTRIBUTION: {"a": 1.5, "b": 0.5}}
    assert state.fitness.earned == {}
    state.fitness.earned = {"a": 1.0}
    assert aggregation.send_fitness({CMD: SET}, state) is None and state.fitness.earned == {"a": 1.0}


# --------------------------------------------------------------------------- SWARM_ENVS > 1
@pytest.mark.parametrize("deterministic", [True, False])
def test_a_batch_gets_one_action_per_environment_from_one_pass(monkeypatch, deterministic):
    # Environment 0: model a is sure of action 0; environment 1: both lean to action 1.
    Draws.rng = FixedDraws(0.0, 0.999)  # sampled: actions 0 and 1 too
    messages = [{COMPONENT_ID: "a", LOGITS: [logits_for(0.99), logits_for(0.4)], DETERMINISTIC: deterministic},
                {COMPONENT_ID: "b", LOGITS: [logits_for(0.4), logits_for(0.2)], DETERMINISTIC: deterministic}]
    state = new_state(2, envs=2)
    contribution = state.fitness.earned
    replies = [aggregate(m, state) for m in messages]
    assert replies[0] is None and replies[1][ACTION] == [0, 1]
    assert replies[1].get(BEHAVIOUR) == (None if deterministic else pytest.approx([(0.99 + 0.4) / 2, (0.8 + 0.6) / 2]))
    if deterministic:
        assert contribution == {}
        return
    # Each environment hands out a total share of 1: a model's contribution adds its shares up.
    assert contribution["a"] == pytest.approx(0.99 / 1.39 + 0.6 / 1.4)
    assert sum(contribution.values()) == pytest.approx(2.0)


def test_sampled_batch_actions_follow_each_environments_distribution():
    Draws.rng = np.random.default_rng(1)
    p0 = np.array([0.1, 0.5, 0.9])
    chosen = []
    for _ in range(3000):
        message = {COMPONENT_ID: "a", LOGITS: [logits_for(p) for p in p0], DETERMINISTIC: False}
        chosen.append(aggregate(message, new_state(1, envs=3))[ACTION])
    assert np.allclose(np.mean(np.array(chosen) == 0, axis=0), p0, atol=0.03)


@pytest.mark.parametrize("logits", [
    [[0.1, 0.2]],  # one row for two environments
    [0.1, 0.2],  # one environment's format
    [[0.1, 0.2], [0.1]],
    [[0.1, 0.2], [0.1, float("inf")]],
    [[0.1, 0.2], [0.1, True]],
])
def test_a_bad_batch_of_logits_does_not_count(logits):
    state = new_state(1, envs=2)
    with pytest.raises(BadMessage):
        aggregate({COMPONENT_ID: "a", LOGITS: logits, DETERMINISTIC: True}, state)
    assert state.step.logits == {} and state.fitness.earned == {}


# --------------------------------------------------------------------------- who may vote, and who is late
def pong(model_id):
    return {PONG: "nonce", COMPONENT: "model", COMPONENT_ID: model_id}


def test_only_models_that_answered_the_ping_may_vote():
    state = new_state(2)
    aggregation.register_model(pong("a"), state)
    aggregation.register_model(pong("b"), state)
    aggregation.register_model({PONG: "nonce", COMPONENT: "environment", COMPONENT_ID: "env"}, state)
    assert state.models.known == {"a", "b"}
    with pytest.raises(BadMessage, match="unknown model 'intruder'"):
        aggregate(logits_message("intruder", 0.9), state)
    replies, _ = run_step([logits_message("a", 0.9, False), logits_message("b", 0.9, False)], 2, state)
    assert len(replies[-1][ACTION]) == 1 and set(state.fitness.earned) == {"a", "b"}


def test_without_pings_the_first_models_to_answer_are_learned():
    replies, state = run_step([logits_message("a", 0.9), logits_message("b", 0.9)], 2)
    assert replies[-1] == {ACTION: [0]} and state.models.known == {"a", "b"}
    with pytest.raises(BadMessage):
        state.models.admit("c")


def test_a_step_missing_a_model_is_given_up_after_the_timeout_naming_it():
    state = new_state(3)
    assert state.model_timeout == 5.0  # SWARM_MODEL_TIMEOUT's default
    for model_id in ("model0-x", "model1-y", "model2-z"):
        state.models.register_pong(pong(model_id))
    run_step([logits_message("model0-x", 0.6), logits_message("model2-z", 0.6)], 3, state)
    assert aggregation.check_missing_models(state) is None  # not late yet
    state.step.first_at -= 5.1  # as if 5.1 s had passed
    report = aggregation.check_missing_models(state)
    assert report[STATUS] == ERROR and report[ROOT_ID] == "run-1"
    assert report[MISSING] == ["model1-y"] and "model1-y" in report[ERROR] and "2 of 3" in report[ERROR]
    # The run is over: the late answer does not complete a step, and nothing counted.
    replies, _ = run_step([logits_message("model1-y", 0.6)], 3, state)
    assert replies == [None] and state.fitness.earned == {} and state.step.logits == {}
    assert aggregation.check_missing_models(state) is None


# --------------------------------------------------------------------------- SWARM_FITNESS=return
def play_episode(length, pusher, state, first=False):
    """`length` training steps in which `pusher` is surer than the other model of the action
    taken (action 0, drawn by FixedDraws(0.0)); the last step's outcome says DONE."""
    for step in range(length):
        echo = {} if first and step == 0 else {REWARD: 1.0, DONE: step == 0}
        for model_id in ("a", "b"):
            msg = {**logits_message(model_id, 0.9 if model_id == pusher else 0.6, deterministic=False), **echo}
            aggregate(msg, state)


def test_a_return_crediting_fitness_pays_for_pushing_towards_long_episodes(monkeypatch):
    Draws.rng = FixedDraws(0.0)  # action 0 every step
    state = new_state(2, fitness="return")
    fitness = state.fitness.earned
    play_episode(3, "a", state, first=True)
    play_episode(10, "b", state)  # closes episode 1: its own baseline, no credit
    assert fitness == {"a": 0.0, "b": 0.0}
    play_episode(2, "a", state)  # closes episode 2: 10 steps, 7 above the mean (3)
    excess_per_step = 0.9 / 1.5 - 0.5
    assert fitness["b"] == pytest.approx(10 * excess_per_step * 7) and fitness["a"] == pytest.approx(-fitness["b"])
    play_episode(1, "b", state)  # closes episode 3: 2 steps, 4.5 below the mean
    assert fitness["a"] == pytest.approx(-10 * excess_per_step * 7 - 2 * excess_per_step * 4.5)
    assert sum(fitness.values()) == pytest.approx(0.0), "an episode's credit only moves fitness between models"


def test_return_credit_ignores_evaluations_and_a_bad_echo_changes_nothing(monkeypatch):
    Draws.rng = FixedDraws(0.0)
    state = new_state(2, fitness="return")
    credit = state.fitness
    for model_id in ("a", "b"):
        aggregate({**logits_message(model_id, 0.9), REWARD: 1.0, DONE: True}, state)
    assert credit.earned == {} and credit.excess is None and not credit.finished
    with pytest.raises(BadMessage):
        aggregate({**logits_message("a", 0.9, False), REWARD: "1", DONE: True}, state)
    assert state.step.logits == {} and credit.earned == {}


# --------------------------------------------------------------------------- SWARM_TRAINING_ACTIONS=leader, SWARM_FITNESS=lead
def lead_state(window=1):
    state = new_state(2, fitness="lead", training_actions="leader")
    state.fitness = LeadReturn(window=window)
    return state


def lead_step(state, done=None, deterministic=False):
    """One step of models a (sure of action 0) and b (sure of action 1); `done`: the echo."""
    echo = {} if done is None else {REWARD: 1.0, DONE: done}
    reply = None
    state.rng = np.random.default_rng(0)
    for model_id, p0 in (("a", 0.999), ("b", 0.001)):
        msg = {**logits_message(model_id, p0, deterministic=deterministic), **echo}
        reply = aggregate(msg, state) or reply
    return reply[ACTION][0]


def test_each_episode_follows_its_leader_and_its_return_is_the_leaders_fitness():
    state = lead_state(window=1)
    taken = [lead_step(state)]  # a run's first observation: no echo
    taken += [lead_step(state, done=False) for _ in range(2)]
    taken.append(lead_step(state, done=True))  # the first episode ends after 3 steps
    taken += [lead_step(state, done=False) for _ in range(6)]
    lead_step(state, done=True)  # the second ends after 7
    first, second = taken[:3], taken[3:10]
    assert len(set(first)) == 1 and len(set(second)) == 1 and first[0] != second[0], "one leader per episode"
    leader_of = {0: "a", 1: "b"}
    assert state.fitness.scores() == {leader_of[first[0]]: 3.0, leader_of[second[0]]: 7.0}


def test_the_advantage_fitness_credits_the_member_whose_actions_were_followed_by_more():
    state = new_state(2, fitness="advantage", training_actions="leader")
    taken = [lead_step(state)]
    taken += [lead_step(state, done=False) for _ in range(2)]
    taken.append(lead_step(state, done=True))  # the first leader's episode: 3 steps
    taken += [lead_step(state, done=False) for _ in range(6)]
    lead_step(state, done=True)  # the second's: 7 steps
    longer = {0: "a", 1: "b"}[taken[3]]
    scores = state.fitness.scores()
    assert scores[longer] > 0 > scores[{"a": "b", "b": "a"}[longer]], scores


def test_evaluations_use_the_summed_probabilities_and_credit_no_one():
    state = lead_state()
    for _ in range(3):
        lead_step(state, done=True, deterministic=True)
    assert state.fitness.scores() == {} and state.training_actions.leading is None


def test_members_given_new_weights_lose_their_record_and_get_reports_the_latest():
    state = lead_state(window=2)
    lead_step(state)
    for done in [True, False, True, True, False, False, True]:
        lead_step(state, done=done)
    before = state.fitness.scores()
    assert set(before) == {"a", "b"}
    assert aggregation.send_fitness({CMD: GET}, state) == {CONTRIBUTION: before}
    assert aggregation.send_fitness({CMD: GET}, state) == {CONTRIBUTION: before}, "a record, not a tally"
    aggregation.forget_replaced({CMD: SET, WEIGHTS: {"a": [0.0]}}, state)
    assert state.fitness.scores() == {"b": before["b"]}


def test_a_member_is_ranked_once_it_has_led_a_full_window():
    state = lead_state(window=3)
    lead_step(state)
    for _ in range(4):  # four one-step episodes: two led by each member
        lead_step(state, done=True)
    assert state.fitness.scores() == {}
    for _ in range(2):
        lead_step(state, done=True)
    assert state.fitness.scores() == {"a": 1.0, "b": 1.0}


# --------------------------------------------------------------------------- the two settings, apart
def test_the_settings_pick_the_training_actions_and_the_fitness():
    swarm = aggregation.new_state(SwarmSettings())
    assert isinstance(swarm.training_actions, aggregation.LeaderActions) and isinstance(swarm.fitness, LeadReturn)
    tutorial = aggregation.new_state(SwarmSettings.from_env({"SWARM_PRESET": "tutorial"}))
    assert isinstance(tutorial.training_actions, aggregation.SummedActions)
    assert isinstance(tutorial.fitness, Contribution)
    assert isinstance(aggregation.new_state(SwarmSettings(fitness="return")).fitness, ReturnCredit)
    assert isinstance(aggregation.new_state(SwarmSettings(fitness="advantage")).fitness, AdvantageCredit)


def test_leadership_goes_round_the_members_and_a_finished_episode_passes_it_on():
    actions = aggregation.LeaderActions()
    probs = np.array([[[1.0, 0.0]] * 2, [[0.0, 1.0]] * 2, [[1.0, 0.0]] * 2])  # members 0 and 2 take action 0
    rng = np.random.default_rng(0)
    assert actions.leaders(["a", "b", "c"]) is None, "no one leads before a run's first step"
    def unranked():
        raise AssertionError("leaders in turn never read the fitness")

    chosen, behaviour = actions.choose(probs, rng, None, unranked)
    assert chosen.tolist() == [1, 0] and behaviour.tolist() == [1.0, 1.0]  # copies 0 and 1: members 1 and 2
    assert actions.leaders(["a", "b", "c"]) == ["b", "c"]
    actions.choose(probs, rng, np.array([False, True]), unranked)
    assert actions.leaders(["a", "b", "c"]) == ["b", "a"], "the next member leads copy 1's next episode"
    actions.start_run()
    actions.choose(probs, rng, None, unranked)
    assert actions.leaders(["a", "b", "c"]) == ["b", "c"], "a new run goes on with the next members"


def test_a_tournament_leads_with_the_fitter_of_two_and_takes_turns_until_two_are_ranked():
    actions = aggregation.TRAINING_ACTIONS["tournament-leader"]()
    probs = np.full((4, 2, 2), 0.5)  # (members, copies, actions)
    rng = np.random.default_rng(0)
    actions.choose(probs, rng, None, lambda: np.array([np.nan, np.nan, np.nan, 5.0]))
    assert actions.leading == [1, 2], "one member ranked: leaders in turn"
    led = []
    for _ in range(400):
        actions.choose(probs, rng, np.array([True, True]), lambda: np.array([3.0, 1.0, np.nan, 2.0]))
        led += actions.leading
    counts = np.bincount(led, minlength=4) / len(led)
    assert counts[2] == 0, "a member without a fitness loses every tournament"
    # the fittest is in 3 of the 6 pairs and wins them all: it leads half the episodes
    assert counts[0] > counts[3] > counts[1] > 0 and counts[0] == pytest.approx(0.5, abs=0.06), counts


def test_greedy_leaders_act_greedily_in_every_other_copy_and_only_those_earn_fitness():
    actions = aggregation.TRAINING_ACTIONS["greedy-leader"]()
    probs = np.array([[[0.7, 0.3]] * 4, [[0.2, 0.8]] * 4])  # (members, copies, actions)
    greedy_actions = set()
    for seed in range(20):
        actions.start_run()
        chosen, behaviour = actions.choose(probs, np.random.default_rng(seed), None, lambda: np.full(2, np.nan))
        leaders = [int(i) % 2 for i in actions.leading]
        for copy in (1, 3):
            greedy_actions.add(chosen[copy])
            assert chosen[copy] == probs[leaders[copy], copy].argmax() and behaviour[copy] == 1.0
        for copy in (0, 2):
            assert behaviour[copy] == probs[leaders[copy], copy, chosen[copy]], "a sampled action's own probability"
    named = actions.leaders(["a", "b"])
    assert named[0] is None and named[2] is None and named[1] in ("a", "b") and named[3] in ("a", "b")
    fitness = LeadReturn()
    fitness.observe(["a", "b"], np.zeros((2, 4)), Outcome(np.ones(4), np.ones(4, dtype=bool), named))
    assert set(fitness.scores()) == {named[1], named[3]}


def test_leader_actions_with_the_contribution_credit_each_models_share():
    """The action choice and the fitness are independent: leader-led actions still pay each
    model its share of the chosen action (the tutorial's fitness)."""
    state = new_state(2, envs=2, fitness="contribution", training_actions="leader")
    for step in range(3):
        echo = {} if step == 0 else {REWARD: [1.0, 1.0], DONE: [False, step == 2]}
        for model_id, p0 in (("a", 0.8), ("b", 0.3)):
            aggregate({COMPONENT_ID: model_id, LOGITS: [logits_for(p0)] * 2, DETERMINISTIC: False, **echo}, state)
    assert set(state.fitness.earned) == {"a", "b"} and sum(state.fitness.earned.values()) == pytest.approx(6.0)
    assert state.training_actions.leading is not None

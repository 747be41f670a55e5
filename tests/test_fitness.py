"""The fitness strategies (swarm_rl/fitness.py), each on its own: no aggregation, no messages."""
import dataclasses

import numpy as np
import pytest

from swarm_rl.fitness import (FITNESSES, AdvantageCredit, Contribution, Fitness, LeadReturn, Outcome, ReturnCredit,
                              fitness_rank_correlation, fitness_spread, make_fitness)
from swarm_rl.settings import SwarmSettings

IDS = ["a", "b"]


def shares(*per_model):
    """(models, envs) shares of one step, one environment copy."""
    return np.array([[share] for share in per_model])


def outcome(reward=1.0, done=False, leaders=None):
    return Outcome(np.array([reward]), np.array([done]), leaders)


def test_every_fitness_setting_has_its_strategy():
    choices = next(f for f in SwarmSettings.fields() if f.name == "fitness").metadata["kind"].allowed
    assert set(FITNESSES) == set(choices.removeprefix("one of ").split(", "))
    for name in FITNESSES:
        fitness = make_fitness(name)
        assert isinstance(fitness, Fitness) and fitness.name == name


# --------------------------------------------------------------------------- contribution
def test_the_contribution_tallies_shares_and_starts_anew_when_handed_over():
    fitness = Contribution()
    fitness.observe(IDS, shares(0.75, 0.25), None)
    fitness.observe(IDS, np.array([[0.5, 0.1], [0.5, 0.9]]), outcome())  # two copies: shares add up
    assert fitness.scores() == pytest.approx({"a": 0.75 + 0.6, "b": 0.25 + 1.4})
    assert fitness.scores() == {}, "a tally: handed over once"


def test_the_contribution_forgets_replaced_members_and_keeps_across_runs():
    fitness = Contribution()
    fitness.observe(IDS, shares(0.75, 0.25), None)
    fitness.start_run()  # an evaluation between training runs takes nothing away
    fitness.observe(IDS, shares(0.5, 0.5), None)
    fitness.forget(["a"])
    assert fitness.scores() == {"b": 0.75}


# --------------------------------------------------------------------------- lead
def test_lead_credits_a_finished_episode_to_its_leader():
    fitness = LeadReturn()
    fitness.observe(IDS, shares(0.5, 0.5), None)  # a run's first step: nothing came of anything yet
    for _ in range(4):
        fitness.observe(IDS, shares(0.5, 0.5), outcome(leaders=["b"]))
    assert fitness.scores() == {}, "no episode has finished"
    fitness.observe(IDS, shares(0.5, 0.5), outcome(done=True, leaders=["b"]))
    assert fitness.scores() == {"b": 5.0}
    assert fitness.scores() == {"b": 5.0}, "a record, not a tally: the latest stays"


def test_lead_keeps_each_copys_episode_apart():
    fitness = LeadReturn()

    def two(dones, leaders):  # one step of two copies, a reward of 1 each
        return Outcome(np.ones(2), np.array(dones), leaders)

    fitness.observe(IDS, np.full((2, 2), 0.5), two([False, False], ["a", "b"]))
    fitness.observe(IDS, np.full((2, 2), 0.5), two([False, True], ["a", "b"]))  # b's episode: 2 steps
    fitness.observe(IDS, np.full((2, 2), 0.5), two([True, False], ["a", "a"]))  # a's: 3; copy 1 goes on with a
    assert fitness.scores() == {"a": 3.0, "b": 2.0}


def test_lead_forgets_replaced_members_and_cuts_off_episodes_at_a_new_run():
    fitness = LeadReturn()
    fitness.observe(IDS, shares(0.5, 0.5), outcome(done=True, leaders=["a"]))
    fitness.observe(IDS, shares(0.5, 0.5), outcome(done=True, leaders=["b"]))
    fitness.forget(["a"])
    assert fitness.scores() == {"b": 1.0}
    fitness.observe(IDS, shares(0.5, 0.5), outcome(leaders=["a"]))
    fitness.start_run()  # the episode a was leading is cut off: it counts for no one
    fitness.observe(IDS, shares(0.5, 0.5), outcome(done=True, leaders=["a"]))
    assert fitness.scores() == {"a": 1.0, "b": 1.0}


def test_lead_ranks_a_member_once_it_has_led_a_full_window():
    fitness = LeadReturn(window=2)
    fitness.observe(IDS, shares(0.5, 0.5), outcome(reward=3.0, done=True, leaders=["a"]))
    assert fitness.scores() == {}
    fitness.observe(IDS, shares(0.5, 0.5), outcome(reward=5.0, done=True, leaders=["a"]))
    assert fitness.scores() == {"a": 4.0}


def test_lead_credits_no_one_for_actions_no_one_led():
    fitness = LeadReturn()
    fitness.observe(IDS, shares(0.5, 0.5), outcome(done=True, leaders=None))
    assert fitness.scores() == {}


# --------------------------------------------------------------------------- return
def episode(fitness, length, pusher):
    """`length` steps in which `pusher` has 0.6 of the chosen action and the other 0.4; the first
    step's outcome closes the previous episode."""
    for step in range(length):
        fitness.observe(IDS, shares(0.6, 0.4) if pusher == "a" else shares(0.4, 0.6),
                        outcome(done=step == 0) if fitness.excess is not None else None)


def test_return_credit_pays_for_pushing_towards_long_episodes():
    fitness = ReturnCredit()
    episode(fitness, 3, "a")
    episode(fitness, 10, "b")  # closes episode 1 (3 steps): its own baseline, no credit
    episode(fitness, 1, "a")  # closes episode 2: 10 steps, 7 above the mean of 3
    earned = fitness.scores()
    assert earned["b"] == pytest.approx(10 * 0.1 * 7) and earned["a"] == pytest.approx(-earned["b"])
    assert fitness.scores() == {}, "a tally: handed over once"


def test_return_credit_cuts_off_episodes_at_a_new_run():
    fitness = ReturnCredit()
    episode(fitness, 5, "a")
    fitness.start_run()
    assert fitness.excess is None
    fitness.observe(IDS, shares(0.6, 0.4), outcome(done=True))  # an echo at a run's first step closes nothing
    assert fitness.scores() == {} and not fitness.finished


# --------------------------------------------------------------------------- advantage
def test_advantage_weighs_each_step_by_its_return_to_go_centred_on_the_rounds_mean():
    fitness = AdvantageCredit(discount=0.5)
    steps = [shares(0.75, 0.25), shares(0.25, 0.75), shares(0.5, 0.5)]  # a: excess +0.5, -0.5, 0
    fitness.observe(IDS, steps[0], None)
    for pushed in steps[1:]:
        fitness.observe(IDS, pushed, outcome(reward=1.0))
    fitness.observe(IDS, shares(0.5, 0.5), outcome(reward=1.0, done=True))  # closes the 3-step episode
    # returns to go 1.75, 1.5, 1: a's excess sums to 0, so the centring takes nothing away
    scores = fitness.scores()
    assert scores["a"] == pytest.approx((0.5 * 1.75 - 0.5 * 1.5) / 3) and scores["b"] == pytest.approx(-scores["a"])


def test_advantage_scores_every_member_afresh_each_round_and_keeps_the_last():
    fitness = AdvantageCredit()
    fitness.observe(IDS, shares(0.9, 0.1), None)  # a pushed for the first action, the one most followed
    fitness.observe(IDS, shares(0.5, 0.5), outcome())
    fitness.observe(IDS, shares(0.5, 0.5), outcome())
    assert fitness.scores() == {}, "no episode has finished"
    fitness.observe(IDS, shares(0.5, 0.5), outcome(done=True))
    first = fitness.scores()
    assert first["a"] > 0 and first["b"] == pytest.approx(-first["a"])
    assert fitness.scores() == first, "no step since: the last round's scores stay"
    fitness.forget(["a"])
    assert fitness.scores() == {"b": first["b"]}


def test_equal_members_score_alike_and_cut_off_episodes_count_for_no_one():
    fitness = AdvantageCredit()
    fitness.observe(IDS, shares(0.9, 0.1), None)
    fitness.observe(IDS, shares(0.9, 0.1), outcome())
    fitness.start_run()  # the episode in progress is cut off
    fitness.observe(IDS, shares(0.5, 0.5), outcome(done=True))  # an echo at a run's first step closes nothing
    assert fitness.scores() == {}
    fitness.observe(IDS, shares(0.5, 0.5), outcome(reward=5.0, done=True))
    assert fitness.scores() == {"a": 0.0, "b": 0.0}


# --------------------------------------------------------------------------- every strategy
def better_and_worse(fitness: Fitness) -> dict[str, float]:
    """Member a is the better one: it leads and pushes for long episodes (9 steps), b for short
    ones (2 steps), four episodes each. Each step's outcome reports what came of the step before."""
    episodes = [("a", 9), ("b", 2)] * 4
    steps = [(member, step == length - 1) for member, length in episodes for step in range(length)]
    previous = None  # (leader, done) of the step before
    for member, last in [*steps, ("a", False)]:  # one step more reports the last episode's end
        pushed = shares(0.7, 0.3) if member == "a" else shares(0.3, 0.7)
        fitness.observe(IDS, pushed, None if previous is None else outcome(done=previous[1], leaders=[previous[0]]))
        previous = (member, last)
    return fitness.scores()


@pytest.mark.parametrize("name", list(FITNESSES))
def test_every_fitness_ranks_a_better_member_above_a_worse_one(name):
    scores = better_and_worse(make_fitness(name))
    assert scores["a"] > scores["b"], scores
    assert fitness_spread(scores, IDS) > 0


def test_the_strategies_share_no_state():
    first, second = make_fitness("contribution"), make_fitness("contribution")
    first.observe(IDS, shares(1.0, 0.0), None)
    assert second.scores() == {} and dataclasses.is_dataclass(first)


def test_the_rank_correlation_compares_the_members_that_kept_their_weights():
    previous = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 0.0}
    assert fitness_rank_correlation(previous, {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0, "e": 99.0}, ["e"]) == 1.0
    assert fitness_rank_correlation(previous, {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}) == -1.0
    assert fitness_rank_correlation(previous, {"a": 1.0, "b": 3.0, "c": 2.0, "d": 4.0}) == pytest.approx(0.8)
    assert fitness_rank_correlation(previous, {"a": 1.0, "b": 2.0, "c": 3.0}, ["c"]) is None, "fewer than three"
    assert fitness_rank_correlation(previous, dict.fromkeys("abcd", 5.0)) is None, "no spread, no ranks"

"""05_evolution.py handlers, without sockets: one request, one evolution over fresh data."""
import random

import numpy as np
import pytest

from swarm_rl.checks import BadMessage
from swarm_rl.client import Reply
from swarm_rl.protocol import (CMD, COMPONENT, COMPONENT_ID, CONTRIBUTION, COPIED, ENT_COEF, ERROR, EVO_DONE, EVOLUTION,
                               FITNESS, FITNESS_SPREAD, GAMMA, GET, HYPERPARAMETERS, LEARNING_RATE, MISSING, NR_OF_EPISODE,
                               OPTIMIZER, PONG, ROOM_CONTROL, ROOM_EVOLUTION, ROOM_PING, ROOT_ID, SET, STATUS, WEIGHTS,
                               custom_message)
from swarm_rl.settings import SwarmSettings
from tests.helpers import load_script

evolution_script = load_script("05_evolution.py")


def answers(root_id, vectors, contribution):
    msgs = [{WEIGHTS: v.tolist(), COMPONENT_ID: k, ROOT_ID: root_id} for k, v in vectors.items()]
    return [*msgs, {CONTRIBUTION: contribution, ROOT_ID: root_id}]


def new_evolution(nr_of_models, operators="genetic", model_timeout=5.0):
    return evolution_script.Evolution(nr_of_models, operators, model_timeout)


def split(replies):
    """`collect`'s answer to one message: (the SET, if any; EVO_DONE, if any). The SET goes to the
    models first, EVO_DONE to the control after it."""
    if replies is None:
        return None, None
    (new_weights, done) = replies
    assert not isinstance(new_weights, Reply) and isinstance(done, Reply) and done.room == ROOM_CONTROL
    return new_weights, done.message


def feed(evolution, messages):
    """Deliver messages as SwarmClient would; every SET and every EVO_DONE sent."""
    sets, dones = [], []
    for msg in messages:
        new_weights, done = split(evolution_script.collect(msg, evolution))
        sets += [new_weights] if new_weights else []
        dones += [done] if done else []
    return sets, dones


def population(n, length, seed):
    rng = np.random.default_rng(seed)
    return {f"model{i}": rng.normal(size=length) for i in range(n)}


def test_one_request_gives_one_evolution_and_one_evo_done():
    evolution = new_evolution(4)
    get = evolution_script.start_evolution({EVOLUTION: True, ROOT_ID: "request-1"}, evolution)
    assert get[CMD] == GET
    vectors = population(4, 11, seed=0)
    messages = answers(get[ROOT_ID], vectors, {k: 1.0 for k in vectors})
    sets, dones = feed(evolution, messages + messages)  # duplicates arrive late: no second round
    assert len(sets) == 1 and len(dones) == 1
    assert dones[0] == {STATUS: EVO_DONE, ROOT_ID: "request-1", FITNESS_SPREAD: 0.0,
                        FITNESS: {k: 1.0 for k in vectors}, COPIED: {}}  # the genetic algorithm copies no one whole
    new_weights = sets[0][WEIGHTS]
    assert sets[0][CMD] == SET and set(new_weights) == set(vectors)
    assert all(len(v) == 11 for v in new_weights.values()), "genome length comes from the vectors"


def test_the_set_waits_for_every_model_and_the_contribution():
    evolution = new_evolution(3)
    get = evolution_script.start_evolution({EVOLUTION: True}, evolution)
    messages = answers(get[ROOT_ID], population(3, 5, seed=1), {"model0": 1.0})
    assert feed(evolution, messages[:-1]) == ([], [])  # all weights, no contribution yet
    sets, dones = feed(evolution, messages[-1:])
    assert len(sets) == 1 and len(dones) == 1


def test_a_second_request_uses_fresh_data_only():
    evolution = new_evolution(2)
    first = evolution_script.start_evolution({EVOLUTION: True, ROOT_ID: "r1"}, evolution)
    feed(evolution, answers(first[ROOT_ID], population(2, 5, seed=2), {}))
    second = evolution_script.start_evolution({EVOLUTION: True, ROOT_ID: "r2"}, evolution)
    assert second[ROOT_ID] != first[ROOT_ID]
    assert evolution.weights == {} and evolution.fitness is None
    stale = answers(first[ROOT_ID], population(2, 5, seed=3), {})
    assert feed(evolution, stale) == ([], []), "answers to the first GET must not start the second"
    fresh = population(2, 5, seed=4)
    sets, dones = feed(evolution, answers(second[ROOT_ID], fresh, {}))
    assert len(sets) == 1 and [d[ROOT_ID] for d in dones] == ["r2"]
    # Every gene of the new population comes from the fresh vectors (crossover/selection only,
    # bar the rare mutation).
    fresh_genes = np.stack(list(fresh.values()))
    genes = np.array(list(sets[0][WEIGHTS].values()))
    from_fresh = np.isclose(genes[:, None, :], fresh_genes[None, :, :]).any(axis=1)
    assert from_fresh.mean() > 0.9


def test_fitter_models_leave_more_genes():
    random.seed(0)
    vectors = {f"model{i}": np.full(20, float(i)) for i in range(10)}
    contribution = {k: (100.0 if k == "model9" else 1.0) for k in vectors}
    counts = []
    for _ in range(50):
        children = np.array(list(evolution_script.evolve(vectors, contribution).values()))
        counts.append(np.mean(children == 9.0))
    assert np.mean(counts) > 0.2  # ten times its 1/10 share would be 1.0; a lottery gives 0.1


def test_other_control_messages_start_nothing():
    evolution = new_evolution(1)
    assert evolution_script.start_evolution({NR_OF_EPISODE: 1}, evolution) is None
    assert evolution_script.start_evolution({EVOLUTION: False}, evolution) is None
    assert evolution.root_id is None


@pytest.mark.parametrize("broken", [
    {WEIGHTS: [1.0, float("nan")], COMPONENT_ID: "model1"},
    {WEIGHTS: [1.0, 2.0, 3.0], COMPONENT_ID: "model1"},  # the others have 2 genes
    {WEIGHTS: [1.0, 2.0]},
    {CONTRIBUTION: {"model0": "lots"}},
    {CONTRIBUTION: [1.0]},
])
def test_bad_answers_are_rejected_and_not_stored(broken):
    evolution = new_evolution(2)
    get = evolution_script.start_evolution({EVOLUTION: True}, evolution)
    feed(evolution, [{WEIGHTS: [0.0, 0.0], COMPONENT_ID: "model0", ROOT_ID: get[ROOT_ID]}])
    with pytest.raises(BadMessage):
        evolution_script.collect({**broken, ROOT_ID: get[ROOT_ID]}, evolution)
    assert list(evolution.weights) == ["model0"] and evolution.fitness is None


def test_weights_from_an_unknown_model_do_not_count():
    evolution = new_evolution(2)
    for model_id in ("model0", "model1"):  # both answered the readiness ping
        evolution.models.register_pong({PONG: "x", COMPONENT: "model", COMPONENT_ID: model_id})
    get = evolution_script.start_evolution({EVOLUTION: True}, evolution)
    stranger = {ROOT_ID: get[ROOT_ID], WEIGHTS: [0.0] * 5, COMPONENT_ID: "intruder"}
    with pytest.raises(BadMessage, match="unknown model 'intruder'"):
        evolution_script.collect(stranger, evolution)
    assert evolution.weights == {}
    sets, _ = feed(evolution, answers(get[ROOT_ID], population(2, 5, seed=4), {}))
    assert len(sets) == 1 and set(sets[0][WEIGHTS]) == {"model0", "model1"}


def test_an_evolution_short_of_answers_is_given_up_naming_who_is_missing():
    evolution = new_evolution(2)
    for model_id in ("model0-a", "model1-b"):
        evolution.models.register_pong({PONG: "x", COMPONENT: "model", COMPONENT_ID: model_id})
    get = evolution_script.start_evolution({EVOLUTION: True, ROOT_ID: "request-7"}, evolution)
    feed(evolution, [{ROOT_ID: get[ROOT_ID], WEIGHTS: [0.0] * 5, COMPONENT_ID: "model0-a"}])
    assert evolution_script.check_missing_answers(evolution) is None
    evolution.started_at -= 5.1
    report = evolution_script.check_missing_answers(evolution)
    assert report[STATUS] == ERROR and report[ROOT_ID] == "request-7"
    assert report[MISSING] == ["model1-b"] and "aggregation (CONTRIBUTION)" in report[ERROR]
    late = answers(get[ROOT_ID], {"model1-b": np.zeros(5)}, {"model0-a": 1.0, "model1-b": 1.0})
    assert feed(evolution, late) == ([], [])  # given up: late answers start nothing
    assert evolution_script.check_missing_answers(evolution) is None


def test_evo_done_says_how_much_there_was_to_select_on():
    evolution = new_evolution(3)
    get = evolution_script.start_evolution({EVOLUTION: True}, evolution)
    contribution = {"model0": 90.0, "model1": 100.0, "model2": 110.0}  # mean 100: spread 20%
    _, dones = feed(evolution, answers(get[ROOT_ID], population(3, 5, seed=5), contribution))
    assert dones[0][FITNESS_SPREAD] == pytest.approx(0.2)
    assert evolution_script.fitness_spread({}, ["model0"]) == 0.0  # no contribution yet: nothing to select on


# --------------------------------------------------------------------------- population-based training
def ladder(n=8, length=5):
    return {f"m{i}": np.full(length, float(i)) for i in range(n)}


def test_pbt_the_worst_quarter_copy_members_of_the_best_quarter():
    members = [f"m{i}" for i in range(8)]
    fitness = {f"m{i}": float(i) for i in range(8)}  # m0, m1 worst; m6, m7 best
    hyper = {f"m{i}": {LEARNING_RATE: 0.001 * (i + 1), ENT_COEF: 0.001, GAMMA: 0.99} for i in range(8)}
    choices = evolution_script.exploit_and_explore(members, fitness, hyper, random.Random(0))
    assert set(choices) == {"m0", "m1"}
    for winner, new in choices.values():
        assert winner in ("m6", "m7")
        rate = hyper[winner][LEARNING_RATE]
        assert new[LEARNING_RATE] in (pytest.approx(rate * 0.8), pytest.approx(rate * 1.2))
        assert new[ENT_COEF] == 0.001 and new[GAMMA] == 0.99, "only the learning rate evolves by default"


def test_pbt_over_all_hyperparameters_perturbs_each_by_its_factor():
    members = [f"m{i}" for i in range(8)]
    hyper = {m: {LEARNING_RATE: 0.002, ENT_COEF: 0.001, GAMMA: 0.99} for m in members}
    seen = {key: set() for key in (LEARNING_RATE, ENT_COEF, GAMMA)}
    for seed in range(20):
        choices = evolution_script.exploit_and_explore(members, {m: float(i) for i, m in enumerate(members)}, hyper,
                                                       random.Random(seed), evolution_script.EVOLVED["all"])
        for _, new in choices.values():
            seen[LEARNING_RATE].add(round(new[LEARNING_RATE] / 0.002, 6))
            seen[ENT_COEF].add(round(new[ENT_COEF] / 0.001, 6))
            seen[GAMMA].add(round((1 - new[GAMMA]) / 0.01, 6))  # the horizon is what is scaled
    assert seen == {key: {0.8, 1.2} for key in seen}


def test_pbt_keeps_hyperparameters_within_bounds():
    members = [f"m{i}" for i in range(8)]
    for edge in (0, 1):
        hyper = {m: {key: bounds[edge] for key, bounds in evolution_script.BOUNDS.items()} for m in members}
        for seed in range(20):
            choices = evolution_script.exploit_and_explore(members, {f"m{i}": float(i) for i in range(8)}, hyper,
                                                           random.Random(seed), evolution_script.EVOLVED["all"])
            for _, new in choices.values():
                assert all(low <= new[key] <= high for key, (low, high) in evolution_script.BOUNDS.items())


def test_pbt_ranks_only_members_with_a_fitness_and_waits_for_enough():
    members = [f"m{i}" for i in range(8)]
    none = evolution_script.exploit_and_explore(members, {"m0": 1.0, "m1": 2.0, "m2": 3.0}, {}, random.Random(0))
    assert none == {}, "three ranked members cannot fill two quarters of eight"
    fitness = {"m0": 9.0, "m1": 1.0, "m2": 5.0, "m3": 0.0}  # m4..m7 have led nothing yet
    choices = evolution_script.exploit_and_explore(members, fitness, {m: {LEARNING_RATE: 0.001} for m in members},
                                                   random.Random(0))
    assert set(choices) == {"m3", "m1"} and all(winner in ("m0", "m2") for winner, _ in choices.values())


def test_a_pbt_evolution_sets_only_the_members_that_change():
    evolution = new_evolution(4, "pbt")
    evolution_script.start_evolution({EVOLUTION: True, ROOT_ID: "request"}, evolution)
    root = evolution.root_id
    for i in range(4):
        evolution_script.collect({ROOT_ID: root, COMPONENT_ID: f"m{i}", WEIGHTS: [float(i)] * 3,
                                  HYPERPARAMETERS: {LEARNING_RATE: 0.002}}, evolution)
    reply, done = split(evolution_script.collect({ROOT_ID: root, CONTRIBUTION: {f"m{i}": 10.0 * i for i in range(4)}},
                                                 evolution))
    assert reply[CMD] == SET and list(reply[WEIGHTS]) == ["m0"] and reply[WEIGHTS]["m0"] == [3.0] * 3
    assert list(reply[HYPERPARAMETERS]) == ["m0"]
    assert OPTIMIZER not in reply, "a copy starts with fresh Adam moments"
    assert done[STATUS] == EVO_DONE and done[FITNESS_SPREAD] == pytest.approx(30.0 / 15.0)
    assert done[COPIED] == {"m0": "m3"} and done[FITNESS] == {f"m{i}": 10.0 * i for i in range(4)}


def test_a_pbt_answer_without_a_learning_rate_is_refused():
    evolution = new_evolution(2, "pbt")
    evolution_script.start_evolution({EVOLUTION: True}, evolution)
    with pytest.raises(BadMessage):
        evolution_script.collect({ROOT_ID: evolution.root_id, COMPONENT_ID: "m0", WEIGHTS: [0.0]}, evolution)
    assert evolution.weights == {}


def test_the_state_comes_from_the_settings():
    evolution = evolution_script.new_state(SwarmSettings(models=3, operators="genetic", model_timeout=2.5, seed=1))
    assert (evolution.nr_of_models, evolution.operators, evolution.model_timeout) == (3, "genetic", 2.5)
    assert evolution.models.expected == 3 and evolution.root_id is None
    assert evolution_script.new_state(SwarmSettings()).operators == SwarmSettings().operators


def wired_evolution(nr_of_models):
    """The evolution's handlers on a client of an in-memory hub, and a peer in every room it answers to."""
    from swarm_rl.local import LocalClient, LocalHub
    hub, settings = LocalHub(), SwarmSettings(models=nr_of_models, operators="genetic")
    client = evolution_script.handlers.wire(LocalClient(hub, "evolution", settings, state=new_evolution(nr_of_models)))
    peer = LocalClient(hub, "peer", settings, serve=False)
    for room in (ROOM_CONTROL, ROOM_EVOLUTION, ROOM_PING):
        peer.join_room(room)
    return hub, client.state, peer


def test_the_ping_room_tells_the_evolution_who_the_models_are():
    hub, evolution, peer = wired_evolution(2)
    for model_id in ("model0", "model1"):
        peer.send(custom_message(ROOM_PING, {PONG: "x", COMPONENT: "model", COMPONENT_ID: model_id}))
    hub.pump()
    assert evolution.models.known == {"model0", "model1"}


def test_the_set_goes_to_the_models_and_then_evo_done_to_the_control():
    hub, evolution, peer = wired_evolution(2)
    peer.send(custom_message(ROOM_CONTROL, {EVOLUTION: True}, "request-3"))
    hub.pump()
    (get,) = [m for m in peer.inbox if m.get(CMD) == GET]
    peer.inbox.clear()
    for message in answers(get[ROOT_ID], population(2, 5, seed=6), {"model0": 1.0, "model1": 2.0}):
        peer.send(custom_message(ROOM_EVOLUTION, message))
    hub.pump()
    assert [(m["TO_ROOM"], m.get(CMD), m.get(STATUS)) for m in peer.inbox] == [
        (ROOM_EVOLUTION, SET, None), (ROOM_CONTROL, None, EVO_DONE)]
    assert peer.inbox[-1][ROOT_ID] == "request-3" and evolution.root_id is None

"""The trebuchet example's handlers, without sockets: forward/backward chaining by message ID."""
import copy

import numpy as np
import pytest
import torch
from swergio import MODEL_STATUS

from swarm_rl.checks import BadMessage
from swarm_rl.protocol import ROOT_ID, STATUS
from swarm_rl.settings import SettingsError
from tests.helpers import load_script
from trebuchet import protocol as tp
from trebuchet.settings import TrebuchetSettings

control = load_script("trebuchet/02_controlmodel.py")
trebuchet = load_script("trebuchet/03_trebuchet.py")
trainer = load_script("trebuchet/04_training.py")


def incoming(data, message_id="in-1", root_id="root-1", status=MODEL_STATUS.TRAIN):
    return {ROOT_ID: root_id, tp.ID: message_id, tp.DATA: data, tp.MODEL_STATUS_KEY: status.id}


def reply(message, response):
    """What swergio adds to a handler's response when it sends it (see add_propagated_fields)."""
    for key in (ROOT_ID, tp.MODEL_STATUS_KEY):
        if key in message and key not in response:
            response[key] = message[key]
    return response


def wind_target(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(0, 5, n), rng.uniform(20, 100, n)], axis=1)


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = control.ControlNet()
    return control.ControlModelState(model, control.make_optimizer(model), tp.BoundedMemory())


# --------------------------------------------------------------------------- settings
def test_train_steps_is_a_checked_setting_passed_on_to_the_components():
    assert TrebuchetSettings.from_env({}).train_steps == 1000
    settings = TrebuchetSettings.from_env({"TRAIN_STEPS": " 40 ", "SWERGIO_PORT": "9123"})
    assert (settings.train_steps, settings.port) == (40, 9123)
    assert settings.to_env()["TRAIN_STEPS"] == "40"  # what a launcher hands the trainer
    with pytest.raises(SettingsError) as error:
        TrebuchetSettings.from_env({"TRAIN_STEPS": "0", "SWERGIO_PORT": "x"})
    assert len(error.value.problems) == 2 and "TRAIN_STEPS='0'" in str(error.value)
    with pytest.raises(SettingsError, match="TRAIN_STEPS='many'"):
        TrebuchetSettings.from_env({"TRAIN_STEPS": "many"})


# --------------------------------------------------------------------------- control model
def test_new_states_are_what_the_handlers_share_and_swarm_seed_fixes_the_weights():
    settings = TrebuchetSettings.from_env({"SWARM_SEED": "7"})
    first, second = control.new_state(settings), control.new_state(settings)
    assert all(torch.equal(p, q) for p, q in zip(first.model.parameters(), second.model.parameters()))
    assert len(first.memory) == 0 and first.optimizer.param_groups[0]["params"] == list(first.model.parameters())
    shooter = trebuchet.new_state(settings)
    assert shooter.trebuchet is trebuchet.TREBUCHET and len(shooter.memory) == 0


def test_control_forward_sends_wind_and_aim_under_a_new_id(net):
    batch = wind_target()
    out = control.forward(incoming(batch.tolist()), net)
    rows = np.array(out[tp.DATA])
    assert rows.shape == (5, 3)
    np.testing.assert_allclose(rows[:, 0], batch[:, 0], rtol=1e-6)  # the wind, passed on
    with torch.no_grad():
        np.testing.assert_allclose(rows[:, 1:], net.model(torch.tensor(batch, dtype=torch.float32)).numpy(), rtol=1e-6)
    assert out[tp.ID] != "in-1" and list(net.memory) == [out[tp.ID]]
    assert net.memory[out[tp.ID]][0] == "in-1"


def test_control_backward_steps_and_returns_the_input_gradient_under_the_received_id(net):
    batch = wind_target()
    before = copy.deepcopy(net.model)
    out = control.forward(incoming(batch.tolist()), net)
    gradient = np.random.default_rng(1).normal(size=(5, 3))
    back = control.backward({tp.ID: out[tp.ID], tp.DATA: gradient.tolist()}, net)

    assert back[tp.ID] == "in-1" and len(net.memory) == 0
    # d/d input of  sum(gradient * [wind, aim(wind, target)]), by autograd on the untouched copy
    x = torch.tensor(batch, dtype=torch.float32, requires_grad=True)
    g = torch.tensor(gradient, dtype=torch.float32)
    ((before(x) * g[:, 1:]).sum() + (x[:, 0] * g[:, 0]).sum()).backward()
    np.testing.assert_allclose(np.array(back[tp.DATA]), x.grad.numpy(), rtol=1e-5, atol=1e-7)
    changed = [not torch.equal(p, q) for p, q in zip(before.parameters(), net.model.parameters())]
    assert all(changed), "the optimizer did not step every layer"


def test_control_ignores_unknown_ids_and_does_not_train(net):
    before = copy.deepcopy(net.model.state_dict())
    assert control.backward({tp.ID: "never-sent", tp.DATA: [[0.1, 0.2, 0.3]]}, net) is None
    assert all(torch.equal(v, net.model.state_dict()[k]) for k, v in before.items())


def test_control_validate_neither_remembers_nor_trains(net):
    batch = wind_target().tolist()
    validate = control.forward(incoming(batch, status=MODEL_STATUS.VALIDATE), net)
    assert len(net.memory) == 0
    train = control.forward(incoming(batch), net)
    assert validate[tp.DATA] == train[tp.DATA]


@pytest.mark.parametrize("data", [None, [], [[1.0]], [[1.0, "x"]], [[1.0, float("nan")]], "rows", [[True, 2.0]]])
def test_control_rejects_malformed_batches(net, data):
    msg = incoming(data)
    if data is None:
        del msg[tp.DATA]
    with pytest.raises(BadMessage):
        control.forward(msg, net)
    assert len(net.memory) == 0


def test_control_rejects_a_gradient_of_the_wrong_shape_and_keeps_the_batch(net):
    out = control.forward(incoming(wind_target().tolist()), net)
    with pytest.raises(BadMessage):
        control.backward({tp.ID: out[tp.ID], tp.DATA: [[0.0, 0.0, 0.0]] * 4}, net)  # 4 rows for 5
    back = control.backward({tp.ID: out[tp.ID], tp.DATA: [[0.0, 0.0, 0.0]] * 5}, net)
    assert back[tp.ID] == "in-1"


def test_unknown_model_status_is_rejected(net):
    with pytest.raises(BadMessage):
        control.forward({**incoming(wind_target().tolist()), tp.MODEL_STATUS_KEY: 7}, net)


def test_memory_forgets_the_oldest_beyond_its_limit(net):
    memory = tp.BoundedMemory(limit=3)
    net.memory = memory
    ids = [control.forward(incoming(wind_target().tolist(), f"in-{i}"), net)[tp.ID] for i in range(5)]
    assert list(memory) == ids[2:]


# --------------------------------------------------------------------------- trebuchet
def test_trebuchet_forward_and_backward_chain_by_id():
    rows = np.array([[-3.0, -0.5, 20.0], [0.0, 0.0, 0.0], [6.0, -1.5, -40.0]])
    state = trebuchet.TrebuchetState(trebuchet.TREBUCHET, tp.BoundedMemory())
    memory = state.memory
    out = trebuchet.forward(incoming(rows.tolist(), "from-control"), state)
    expected = trebuchet.TREBUCHET.shoot(*torch.tensor(rows, dtype=torch.float64).T)
    np.testing.assert_allclose(out[tp.DATA], expected.numpy(), rtol=1e-12)
    assert out[tp.ID] != "from-control" and list(memory) == [out[tp.ID]]

    loss_gradient = [0.5, -1.0, 2.0]
    back = trebuchet.backward({tp.ID: out[tp.ID], tp.DATA: loss_gradient}, state)
    assert back[tp.ID] == "from-control" and len(memory) == 0
    x = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    (trebuchet.TREBUCHET.shoot(*x.T) * torch.tensor(loss_gradient, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(np.array(back[tp.DATA]), x.grad.numpy(), rtol=1e-12)


def test_trebuchet_ignores_unknown_ids_and_validate_keeps_nothing():
    state = trebuchet.TrebuchetState(trebuchet.TREBUCHET, tp.BoundedMemory())
    assert trebuchet.backward({tp.ID: "never-sent", tp.DATA: [1.0]}, state) is None
    trebuchet.forward(incoming([[0.0, 0.0, 0.0]], status=MODEL_STATUS.VALIDATE), state)
    assert len(state.memory) == 0
    with pytest.raises(BadMessage):
        trebuchet.forward(incoming([[0.0, 0.0]]), state)  # no weight column


# --------------------------------------------------------------------------- trainer
def test_trainer_batches_are_the_seeds():
    state = trainer.TrainerState(train_steps=3, rng=np.random.default_rng(0))
    msg = trainer.new_msg(state)
    rows = np.array(msg[tp.DATA])
    assert rows.shape == (100, 2) and msg["TO_ROOM"] == tp.ROOM_INPUT
    assert msg["TYPE"] == tp.FORWARD.id and msg[tp.MODEL_STATUS_KEY] == MODEL_STATUS.TRAIN.id
    assert rows[:, 1].min() >= 20 and rows[:, 1].max() <= 100
    assert 3 < rows[:, 0].std() < 7  # wind ~ N(0, 5)
    np.testing.assert_array_equal(state.targets[msg[ROOT_ID]], rows[:, 1])


def test_trainer_backward_is_the_mse_gradient_under_the_received_id():
    state = trainer.TrainerState(train_steps=3, rng=np.random.default_rng(0))
    msg = trainer.new_msg(state)
    target = state.targets[msg[ROOT_ID]]
    distances = target + np.linspace(-5, 5, 100)
    back = trainer.backward({ROOT_ID: msg[ROOT_ID], tp.ID: "from-trebuchet", tp.DATA: distances.tolist()}, state)
    assert back[tp.ID] == "from-trebuchet"
    np.testing.assert_allclose(back[tp.DATA], 2 * (distances - target) / 100, rtol=1e-12)
    assert state.losses == [pytest.approx(np.mean((distances - target) ** 2))]
    assert msg[ROOT_ID] not in state.targets
    # A batch the trainer did not send (an inference run, say) is not its business.
    assert trainer.backward({ROOT_ID: "someone-else", tp.ID: "x", tp.DATA: [1.0]}, state) is None


def test_trainer_counts_its_own_gradients_and_stops_after_train_steps():
    state = trainer.TrainerState(train_steps=2, rng=np.random.default_rng(0))
    first = trainer.new_msg(state)
    state.losses.append(4.0)
    assert trainer.new_data({ROOT_ID: "someone-else"}, state) is None and state.steps == 0
    second = trainer.new_data({ROOT_ID: first[ROOT_ID]}, state)
    assert state.steps == 1 and second[tp.DATA] != first[tp.DATA]
    assert trainer.new_data({ROOT_ID: first[ROOT_ID]}, state) is None and state.steps == 1  # no double count
    state.losses.append(1.0)
    assert trainer.new_data({ROOT_ID: second[ROOT_ID]}, state) is None
    assert state.steps == 2 and state.done
    done = trainer.report({}, state)
    assert done[STATUS] == tp.TRAIN_DONE
    assert done[tp.SUMMARY]["steps"] == 2 and done[tp.SUMMARY]["loss_first"] == 4.0
    assert done[tp.SUMMARY]["loss_last"] == 1.0
    assert trainer.report({}, state) is None  # reported once


def test_trainer_reports_progress_every_hundred_steps():
    state = trainer.TrainerState(train_steps=1000)
    state.losses = [9.0] * 50 + [1.0] * 100
    state.steps = 150
    assert trainer.report({}, state) is None
    state.steps = 200
    progress = trainer.report({}, state)
    assert progress == {STATUS: tp.TRAIN_PROGRESS, tp.STEP: 200, tp.LOSS: 1.0}  # the last 100 steps
    assert trainer.report({}, state) is None  # once per step count


def test_training_by_messages_without_sockets_lowers_the_loss():
    """The whole loop, handler to handler, as the server would pass the messages on."""
    torch.manual_seed(0)
    net = control.ControlNet()
    control_state = control.ControlModelState(net, control.make_optimizer(net), tp.BoundedMemory())
    trebuchet_state = trebuchet.TrebuchetState(trebuchet.TREBUCHET, tp.BoundedMemory())
    control_memory, trebuchet_memory = control_state.memory, trebuchet_state.memory
    state = trainer.TrainerState(train_steps=40, rng=np.random.default_rng(0))
    batch, reports = trainer.new_msg(state), []
    while batch is not None:
        to_model = reply(batch, control.forward(batch, control_state))
        to_output = reply(to_model, trebuchet.forward(to_model, trebuchet_state))
        loss_gradient = reply(to_output, trainer.backward(to_output, state))
        to_model_back = reply(loss_gradient, trebuchet.backward(loss_gradient, trebuchet_state))
        to_input = reply(to_model_back, control.backward(to_model_back, control_state))
        assert to_input[tp.ID] == batch[tp.ID] and to_input[ROOT_ID] == batch[ROOT_ID]
        batch = trainer.new_data(to_input, state)
        reports.append(trainer.report(to_input, state))
    summary = reports[-1][tp.SUMMARY]
    assert summary["steps"] == 40 and len(state.losses) == 40
    assert summary["loss_last"] < 0.7 * summary["loss_first"]
    assert not (control_memory or trebuchet_memory or state.targets or state.in_flight)

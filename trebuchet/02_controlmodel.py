"""02_controlmodel.py: the network that aims the trebuchet, as a swergio component.

On DATA.FORWARD in `input` (rows of [wind, target]) it proposes, per row, an angle logit and a
counterweight, and sends DATA.FORWARD to `model` with rows of [wind, angle_logit, weight]: the
trebuchet needs the wind too. On DATA.GRADIENT in `model` (d loss / d those rows) it
back-propagates, takes an Adam step, and sends d loss / d [wind, target] to `input`.

Chaining by message ID: each forward message we send gets a new ID, under which we remember the
batch (its input, its output and the ID of the message it came in). The gradient for it comes
back with that ID; ours goes back with the ID we originally received.
"""
import logging
import uuid
from dataclasses import dataclass, field

import torch
from swergio import MODEL_STATUS
from torch import nn

from swarm_rl.client import Handlers, SwarmClient
from swarm_rl.component import setup_component
from trebuchet import protocol as tp
from trebuchet.settings import TrebuchetSettings

COMPONENT_NAME = "controlmodel"
LEARNING_RATE = 0.01
log = logging.getLogger(COMPONENT_NAME)
handlers = Handlers()


class ControlNet(nn.Module):
    """[wind, target] -> [angle_logit, weight]: the Flux model zoo's trebuchet network
    (sigmoid layers of 16, 64 and 16 units).

    Inputs are scaled to about -1..1 first (the trainer draws wind ~ N(0, 5) m/s and targets
    uniformly in 20..100 m): raw targets of 20..100 would saturate the first sigmoid layer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([0.0, 60.0]))
        self.register_buffer("scale", torch.tensor([5.0, 40.0]))
        self.layers = nn.Sequential(nn.Linear(2, 16), nn.Sigmoid(), nn.Linear(16, 64), nn.Sigmoid(),
                                    nn.Linear(64, 16), nn.Sigmoid(), nn.Linear(16, 2))

    def forward(self, wind_target: torch.Tensor) -> torch.Tensor:
        return self.layers((wind_target - self.shift) / self.scale)


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)


@dataclass
class ControlModelState:
    """What the handlers share: the network, its optimizer and the batches awaiting a gradient."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    memory: tp.BoundedMemory = field(default_factory=tp.BoundedMemory)  # outgoing ID -> (incoming ID, input, output)


def new_state(settings: TrebuchetSettings) -> ControlModelState:
    """A fresh network and optimizer; with SWARM_SEED, the same initial weights every run."""
    seed = settings.component_seed(COMPONENT_NAME)
    if seed is not None:
        torch.manual_seed(seed)
    model = ControlNet()
    return ControlModelState(model, make_optimizer(model))


@handlers.on(tp.ROOM_INPUT, reply_to=tp.ROOM_MODEL, message_type=tp.FORWARD)
def forward(msg, state: ControlModelState):
    """[wind, target] rows in; [wind, angle_logit, weight] rows out (to `model`)."""
    incoming_id = tp.get_id(msg)
    wind_target = torch.tensor(tp.get_matrix(msg, tp.DATA, 2), dtype=torch.float32)
    training = tp.get_status(msg) == MODEL_STATUS.TRAIN
    wind_target.requires_grad_(training)
    with torch.set_grad_enabled(training):
        aim = state.model(wind_target)  # columns: angle_logit, weight
    outgoing_id = uuid.uuid4().hex
    if training:  # VALIDATE: no gradient will come, so nothing to remember and no training
        state.memory[outgoing_id] = (incoming_id, wind_target, aim)
    rows = torch.cat([wind_target[:, :1], aim], dim=1)  # the trebuchet needs the wind as well
    return {tp.ID: outgoing_id, tp.DATA: rows.detach().tolist()}


@handlers.on(tp.ROOM_MODEL, reply_to=tp.ROOM_INPUT, message_type=tp.GRADIENT)
def backward(msg, state: ControlModelState):
    """d loss / d [wind, angle_logit, weight] in; one Adam step; d loss / d [wind, target] out."""
    memory, optimizer = state.memory, state.optimizer
    outgoing_id = tp.get_id(msg)
    if outgoing_id not in memory:
        log.info("gradient for an unknown batch %s (not ours, or forgotten): ignored", outgoing_id)
        return None
    incoming_id, wind_target, aim = memory[outgoing_id]
    gradient = torch.tensor(tp.get_matrix(msg, tp.DATA, 3, rows=len(aim)), dtype=torch.float32)
    del memory[outgoing_id]
    optimizer.zero_grad()
    aim.backward(gradient[:, 1:])  # fills the parameters' .grad and wind_target.grad
    optimizer.step()
    input_gradient = wind_target.grad.clone()
    input_gradient[:, 0] += gradient[:, 0]  # the wind also reached the trebuchet directly
    return {tp.ID: incoming_id, tp.DATA: input_gradient.tolist()}


def main() -> None:
    """Connect and serve until the server goes away."""
    settings = setup_component(COMPONENT_NAME, TrebuchetSettings, description=__doc__)
    torch.set_num_threads(1)  # three torch processes share two cores; small tensors gain nothing from more
    handlers.wire(SwarmClient(COMPONENT_NAME, settings, state=new_state(settings))).listen()


if __name__ == "__main__":
    main()

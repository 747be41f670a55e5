"""03_trebuchet.py: a differentiable trebuchet, as a swergio component.

The tutorial's simulator is Julia (Trebuchet.jl, differentiated with Zygote); ours is PyTorch, so
autograd gives the gradient of the distance with respect to the wind, the release angle and the
counterweight.

On DATA.FORWARD in `model` (rows of [wind, angle_logit, weight]) it shoots and sends the distances
to `output`. On DATA.GRADIENT in `output` (d loss / d distance) it answers in `model` with
d loss / d [wind, angle_logit, weight]. Both directions are chained by message ID, as in the
control model: the forward message we send gets a new ID, under which we remember the batch; the
gradient for it comes back with that ID, and our gradient goes back with the ID we received.
"""
import logging
import math
import uuid
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from swergio import MODEL_STATUS

from swarm_rl.client import Handlers, SwarmClient
from swarm_rl.component import setup_component
from trebuchet import protocol as tp
from trebuchet.settings import TrebuchetSettings

COMPONENT_NAME = "trebuchet"
log = logging.getLogger(COMPONENT_NAME)
handlers = Handlers()


# --------------------------------------------------------------------------- the simulator
@dataclass(frozen=True)
class Trebuchet:
    """A counterweight trebuchet: a rigid, massless beam on a pivot, a counterweight on its short
    arm, the projectile on its long arm (no sling), then a flight through air with drag.

    Launch: the beam is cocked at 45 degrees with the projectile resting on the ground. Released,
    the counterweight falls and the beam swings; when the projectile's velocity (always at right
    angles to the beam) points at the release angle, it flies off. Energy conservation over the
    swing gives its speed.

    Flight: gravity plus quadratic drag on the velocity relative to the air, integrated with Heun's
    method; where it crosses the ground is solved within the last step.
    """

    short_arm: float = 1.0  # m, pivot to counterweight
    long_arm: float = 8.0  # m, pivot to projectile
    cocked_angle: float = math.radians(-45.0)  # beam angle before release (projectile side down)
    base_counterweight: float = 200.0  # kg; the network's `weight` output is added to it
    projectile_mass: float = 2.0  # kg: a stone ball ...
    projectile_radius: float = 0.0568  # m: ... of granite (2,600 kg/m^3)
    drag_coefficient: float = 0.47  # a sphere
    air_density: float = 1.225  # kg/m^3, sea level
    gravity: float = 9.81  # m/s^2
    dt: float = 0.05  # s, integration step
    max_flight_time: float = 30.0  # s; the longest possible flight here is about 9 s

    @property
    def pivot_height(self) -> float:
        """High enough that the cocked beam's long arm just touches the ground."""
        return self.long_arm * math.sin(-self.cocked_angle)

    @property
    def drag_per_mass(self) -> float:
        """k/m in  dv/dt = -(k/m) |v - wind| (v - wind),  k = rho c_d A / 2."""
        area = math.pi * self.projectile_radius ** 2
        return 0.5 * self.air_density * self.drag_coefficient * area / self.projectile_mass

    def launch(self, angle_logit: torch.Tensor, weight: torch.Tensor):
        """Release point and velocity: (x, y, vx, vy), each of the batch's shape."""
        a, b, m, g = self.short_arm, self.long_arm, self.projectile_mass, self.gravity
        angle = torch.sigmoid(angle_logit) * (math.pi / 2)  # 0..90 degrees above the horizon
        # A counterweight is never lighter than nothing: softplus keeps it positive (and is
        # weight + 200 kg to within a gram from 10 kg up), so no batch turns into NaN.
        counterweight = F.softplus(weight + self.base_counterweight)
        # The projectile moves at right angles to the beam: it leaves at `angle` when the beam
        # stands at 90 degrees - angle. The longer the swing, the more energy it has taken up.
        beam = math.pi / 2 - angle
        rise = torch.sin(beam) - math.sin(self.cocked_angle)  # in units of arm length
        # Energy: the counterweight falls a*rise, the projectile rises b*rise, and both move with
        # the beam's angular speed w:  M g a rise - m g b rise = (M a^2 + m b^2) w^2 / 2.
        # Below the balance point (M a < m b) the beam would not swing; softplus smooths that edge.
        torque_margin = F.softplus(counterweight * a - m * b)
        omega_squared = 2 * g * rise * torque_margin / (counterweight * a ** 2 + m * b ** 2)
        speed = b * torch.sqrt(omega_squared)
        x = -b * torch.cos(beam)  # measured from the pivot, positive towards the target
        y = self.pivot_height + b * torch.sin(beam)
        return x, y, speed * torch.cos(angle), speed * torch.sin(angle)

    def acceleration(self, vx, vy, wind):
        """Gravity and drag; drag acts on the velocity relative to the air (wind > 0: tailwind)."""
        relative_x = vx - wind
        airspeed = torch.sqrt(relative_x ** 2 + vy ** 2)
        k = self.drag_per_mass
        return -k * airspeed * relative_x, -self.gravity - k * airspeed * vy

    def shoot(self, wind: torch.Tensor, angle_logit: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Where the projectile lands, in m from the pivot; differentiable in all three inputs."""
        x, y, vx, vy = self.launch(angle_logit, weight)
        path = [(x, y, vx, vy)]
        for _ in range(math.ceil(self.max_flight_time / self.dt)):
            # Heun's method (explicit trapezoid): second order, and exact for a drag-free parabola.
            ax, ay = self.acceleration(vx, vy, wind)
            vx1, vy1 = vx + self.dt * ax, vy + self.dt * ay
            ax1, ay1 = self.acceleration(vx1, vy1, wind)
            x, y = x + self.dt * (vx + vx1) / 2, y + self.dt * (vy + vy1) / 2
            vx, vy = vx + self.dt * (ax + ax1) / 2, vy + self.dt * (ay + ay1) / 2
            path.append((x, y, vx, vy))
            if not bool((y >= 0).any()):  # everyone has landed
                break
        xs, ys, vxs, vys = (torch.stack(column) for column in zip(*path))
        # The last state still in the air, per shot (the index is a choice, not differentiated).
        in_air = (ys >= 0).long().cumprod(dim=0)
        last = (in_air.sum(dim=0, keepdim=True) - 1).clamp(min=0)
        x, y, vx, vy = (s.gather(0, last).squeeze(0) for s in (xs, ys, vxs, vys))
        # From there, fly with constant acceleration until y = 0: the time to impact is a smooth
        # function of the state, so the distance stays differentiable across integration steps.
        ax, ay = self.acceleration(vx, vy, wind)
        tau = 2 * y / (-vy + torch.sqrt(vy ** 2 - 2 * ay * y))
        return x + vx * tau + ax * tau ** 2 / 2


TREBUCHET = Trebuchet()


@dataclass
class TrebuchetState:
    """What the handlers share: the simulator and the batches awaiting a gradient."""

    trebuchet: Trebuchet = TREBUCHET
    memory: tp.BoundedMemory = field(default_factory=tp.BoundedMemory)  # outgoing ID -> (incoming ID, input, output)


def new_state(settings: TrebuchetSettings) -> TrebuchetState:
    """The shared TREBUCHET and an empty memory (the simulator has nothing random to seed)."""
    return TrebuchetState(TREBUCHET, tp.BoundedMemory())


# --------------------------------------------------------------------------- handlers
@handlers.on(tp.ROOM_MODEL, reply_to=tp.ROOM_OUTPUT, message_type=tp.FORWARD)
def forward(msg, state: TrebuchetState):
    """[wind, angle_logit, weight] rows in, distances out (to `output`)."""
    incoming_id = tp.get_id(msg)
    batch = tp.get_matrix(msg, tp.DATA, 3)
    training = tp.get_status(msg) == MODEL_STATUS.TRAIN
    inputs = torch.tensor(batch, dtype=torch.float64, requires_grad=training)
    with torch.set_grad_enabled(training):
        distances = state.trebuchet.shoot(inputs[:, 0], inputs[:, 1], inputs[:, 2])
    outgoing_id = uuid.uuid4().hex
    if training:  # VALIDATE: nothing will come back, so nothing to remember
        state.memory[outgoing_id] = (incoming_id, inputs, distances)
    return {tp.ID: outgoing_id, tp.DATA: distances.detach().tolist()}


@handlers.on(tp.ROOM_OUTPUT, reply_to=tp.ROOM_MODEL, message_type=tp.GRADIENT)
def backward(msg, state: TrebuchetState):
    """d loss / d distance in, d loss / d [wind, angle_logit, weight] out (to `model`)."""
    memory = state.memory
    outgoing_id = tp.get_id(msg)
    if outgoing_id not in memory:
        log.info("gradient for an unknown batch %s (not ours, or forgotten): ignored", outgoing_id)
        return None
    incoming_id, inputs, distances = memory[outgoing_id]
    distance_gradient = tp.get_vector(msg, tp.DATA, len(distances))  # checked before we forget the batch
    del memory[outgoing_id]
    (input_gradient,) = torch.autograd.grad(distances, inputs, torch.from_numpy(distance_gradient))
    return {tp.ID: incoming_id, tp.DATA: input_gradient.tolist()}


def main() -> None:
    """Connect and serve until the server goes away."""
    settings = setup_component(COMPONENT_NAME, TrebuchetSettings, description=__doc__)
    torch.set_num_threads(1)  # three torch processes share two cores; small tensors gain nothing from more
    handlers.wire(SwarmClient(COMPONENT_NAME, settings, state=new_state(settings))).listen()


if __name__ == "__main__":
    main()

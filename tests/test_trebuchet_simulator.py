"""trebuchet/03_trebuchet.py's simulator: physics, reachable range, and gradients."""
import dataclasses

import numpy as np
import pytest
import torch

from tests.helpers import load_script

trebuchet = load_script("trebuchet/03_trebuchet.py")
TREBUCHET = trebuchet.TREBUCHET
G = TREBUCHET.gravity


def t(values):
    return torch.as_tensor(values, dtype=torch.float64)


def shots(n, seed):
    """Random shots over the whole range the trainer produces: wind ~ N(0, 5), angles 5..85 degrees."""
    rng = np.random.default_rng(seed)
    return t(rng.normal(0, 5, n)), t(rng.uniform(-2.8, 2.8, n)), t(rng.uniform(-100, 200, n))


def test_gradients_agree_with_finite_differences():
    wind, logit, weight = (x.requires_grad_() for x in shots(12, seed=1))
    # torch's own check: the analytical Jacobian against central differences, input by input.
    assert torch.autograd.gradcheck(TREBUCHET.shoot, (wind, logit, weight), eps=1e-6, atol=1e-6, rtol=1e-4)

    # And with steps large enough that shots land in a different integration step: the landing
    # is solved within the last step, so the distance stays smooth across step boundaries.
    distance = TREBUCHET.shoot(wind, logit, weight)
    autograd = torch.autograd.grad(distance.sum(), (wind, logit, weight))
    for i, eps in enumerate((1e-2, 1e-3, 1e-1)):  # m/s of wind, logit, kg of counterweight
        inputs = [wind.detach(), logit.detach(), weight.detach()]
        up, down = list(inputs), list(inputs)
        up[i], down[i] = inputs[i] + eps, inputs[i] - eps
        numeric = (TREBUCHET.shoot(*up) - TREBUCHET.shoot(*down)) / (2 * eps)
        np.testing.assert_allclose(autograd[i].numpy(), numeric.numpy(), rtol=1e-3, atol=1e-4)


def test_without_drag_the_flight_is_the_textbook_parabola():
    vacuum = dataclasses.replace(TREBUCHET, drag_coefficient=0.0)
    wind, logit, weight = shots(20, seed=2)
    x0, y0, vx, vy = vacuum.launch(logit, weight)
    flight_time = (vy + torch.sqrt(vy ** 2 + 2 * G * y0)) / G  # y0 + vy t - g t^2 / 2 = 0
    expected = x0 + vx * flight_time
    np.testing.assert_allclose(vacuum.shoot(wind, logit, weight).numpy(), expected.numpy(), rtol=1e-9)


def test_launch_conserves_energy():
    """The counterweight's lost potential energy ends up in the projectile (height and speed)
    and in the counterweight's own speed (it turns with the beam, a/b as fast as the projectile)."""
    a, b, m = TREBUCHET.short_arm, TREBUCHET.long_arm, TREBUCHET.projectile_mass
    angle_deg = np.array([10.0, 30.0, 45.0, 60.0, 80.0])
    logit = t(np.log(angle_deg / (90 - angle_deg)))  # sigmoid(logit) * 90 = angle
    for weight in (-50.0, 0.0, 300.0):
        big_m = weight + TREBUCHET.base_counterweight
        _, y0, vx, vy = TREBUCHET.launch(logit, t([weight] * len(angle_deg)))
        speed_squared = (vx ** 2 + vy ** 2).numpy()
        np.testing.assert_allclose(np.degrees(np.arctan2(vy.numpy(), vx.numpy())), angle_deg, rtol=1e-9)
        # The projectile starts on the ground: its release height is how far it rose.
        projectile_rise = y0.numpy()
        counterweight_drop = projectile_rise * a / b
        released = big_m * G * counterweight_drop
        taken = m * G * projectile_rise + m * speed_squared / 2 + big_m * speed_squared * (a / b) ** 2 / 2
        np.testing.assert_allclose(taken, released, rtol=1e-6)


@pytest.mark.parametrize("wind", [-15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0])  # up to 3 sd of N(0, 5)
def test_reachable_range_covers_the_targets(wind):
    """For every wind the trainer is likely to draw, angles and counterweights within 100..500 kg
    reach below 20 m and beyond 100 m; distance is continuous in the angle, so everything between
    is reachable too."""
    logit, weight = torch.meshgrid(t(np.linspace(-4, 4, 41)), t(np.linspace(-100, 300, 9)), indexing="ij")
    distance = TREBUCHET.shoot(torch.full_like(logit, wind), logit, weight)
    assert distance.min() < 15 and distance.max() > 105


def test_wind_counterweight_and_drag_act_as_they_should():
    logit = t([-1.0, -1.0, -1.0])  # about 24 degrees
    tailwind = TREBUCHET.shoot(t([-8.0, 0.0, 8.0]), logit, t([0.0, 0.0, 0.0]))
    assert tailwind[0] < tailwind[1] < tailwind[2]
    heavier = TREBUCHET.shoot(t([0.0, 0.0, 0.0]), logit, t([-100.0, 0.0, 100.0]))
    assert heavier[0] < heavier[1] < heavier[2]
    vacuum = dataclasses.replace(TREBUCHET, drag_coefficient=0.0)
    assert vacuum.shoot(t([0.0]), logit[:1], t([0.0])) > tailwind[1]


def test_extreme_inputs_stay_finite():
    """A wild network output gives a (short) throw, never NaN: no batch can poison the training."""
    wind, logit, weight = (x.requires_grad_() for x in (t([0.0, 20.0, -20.0]), t([-30.0, 30.0, 0.0]),
                                                        t([-1e4, 1e4, -250.0])))
    distance = TREBUCHET.shoot(wind, logit, weight)
    gradients = torch.autograd.grad(distance.sum(), (wind, logit, weight))
    assert torch.isfinite(distance).all() and all(torch.isfinite(g).all() for g in gradients)

"""The learner (swarm_rl/learner.py) against its reference, stable-baselines3's A2C, and Adam against torch's."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from stable_baselines3 import A2C
from stable_baselines3.common.logger import configure

from swarm_rl.adam import StackedAdam
from swarm_rl.environments import spaces
from swarm_rl.learner import A2CConfig, Members, advantages_and_returns, make_policy
from swarm_rl.protocol import ENT_COEF, GAMMA, NewState, Observed
from tests.helpers import ROOT

ENVS = 2


def members(k: int, config: A2CConfig, learning_rates: list[float]) -> Members:
    policies = []
    for j in range(k):
        torch.manual_seed(j)
        policies.append(make_policy(*spaces(), [16, 16]))
    return Members(policies, [f"model{j}" for j in range(k)], learning_rates, ENVS, config)


def observations(rng: np.random.Generator, count: int) -> list[Observed]:
    """A run's first observation, then `count` steps of two copies; the second copy's episode
    ends at the third step and the first copy's is cut by the time limit at the seventh."""
    seen = [Observed(rng.normal(0, 0.1, (ENVS, 4)), False)]
    for step in range(1, count + 1):
        truncated = np.array([step == 7, False])
        seen.append(Observed(rng.normal(0, 0.1, (ENVS, 4)), False, reward=np.ones(ENVS),
                             done=np.array([step == 7, step == 3]), action=rng.integers(0, 2, ENVS),
                             truncated=truncated if truncated.any() else None,
                             final_observation=rng.normal(0, 0.1, (ENVS, 4)) if truncated.any() else None))
    return seen


def reference(config: A2CConfig, learning_rate: float, gamma: float | None = None,
              ent_coef: float | None = None) -> A2C:
    """stable-baselines3's A2C with the tutorial's network, Adam and this configuration."""
    import gymnasium
    model = A2C("MlpPolicy", gymnasium.make("CartPole-v1"), learning_rate=learning_rate, n_steps=config.n_steps,
                gamma=gamma or config.gamma, gae_lambda=config.gae_lambda,
                ent_coef=config.ent_coef if ent_coef is None else ent_coef, vf_coef=config.vf_coef,
                max_grad_norm=config.max_grad_norm, normalize_advantage=config.normalize_advantage,
                use_rms_prop=False, policy_kwargs=dict(net_arch=dict(pi=[16, 16], vf=[16, 16]),
                                                        optimizer_class=torch.optim.Adam,
                                                        optimizer_kwargs=dict(eps=config.adam_eps)))
    model.set_logger(configure(None, []))
    return model


def reference_update(model: A2C, ours: Members, j: int, last_observation: np.ndarray, dones: np.ndarray) -> None:
    """A2C.train on member j's rollout as our buffer holds it, bootstrapped as ours is."""
    columns = slice(j * ENVS, (j + 1) * ENVS)
    buffer = model.rollout_buffer
    buffer.n_envs = ENVS
    buffer.reset()
    for name in ("observations", "actions", "rewards", "episode_starts", "values", "log_probs"):
        getattr(buffer, name)[:] = getattr(ours.buffer, name)[:, columns]
    buffer.pos, buffer.full = ours.config.n_steps, True
    with torch.no_grad():
        last_values = model.policy.predict_values(torch.as_tensor(last_observation, dtype=torch.float32))
    buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
    model.train()


@pytest.mark.parametrize("config", [A2CConfig(), A2CConfig(normalize_advantage=True, ent_coef=0.01)],
                         ids=["tutorial", "normalized-entropy"])
@pytest.mark.parametrize("k", [1, 3])
def test_each_update_equals_stable_baselines3s_a2c_train(k, config):
    """Three updates in a row (fresh Adam, then its moments) for each of k members, each member
    with its own learning rate, held to A2C.train on the same rollout and weights."""
    learning_rates = [7e-4, 2e-3, 5e-3][:k]
    ours = members(k, config, learning_rates)
    references = []
    for j in range(k):
        references.append(reference(config, learning_rates[j]))
        references[j].policy.load_from_vector(np.array(ours.vector(j)))
    seen = observations(np.random.default_rng(0), 3 * config.n_steps)
    ours.step(seen[0])
    for step, message in enumerate(seen[1:], start=1):
        ours.step(message)
        if step % config.n_steps:
            continue
        for j, model in enumerate(references):
            reference_update(model, ours, j, message.observation, message.done)
            np.testing.assert_allclose(ours.vector(j), model.policy.parameters_to_vector(), atol=2e-6,
                                       err_msg=f"member {j} after update {step // config.n_steps}")
    assert not np.allclose(ours.vector(0), members(1, config, [7e-4]).vector(0)), "nothing was learned"


@pytest.mark.parametrize("vtrace", [False, True], ids=["gae", "vtrace-own-behaviour"])
def test_each_member_learns_with_its_own_discount_and_entropy_coefficient(vtrace):
    """Members with their own gamma and ent_coef each make A2C.train's update with them; with
    V-trace and every action drawn from the member itself, the update is the plain A2C one."""
    config, hyper = A2CConfig(vtrace=vtrace), [(0.95, 0.01), (0.99, 0.0), (0.9, 0.05)]
    ours = members(3, config, [2e-3] * 3)
    references = []
    for j, (gamma, ent_coef) in enumerate(hyper):
        ours.set_hyperparameters(j, {GAMMA: gamma, ENT_COEF: ent_coef})
        references.append(reference(config, 2e-3, gamma, ent_coef))
        references[j].policy.load_from_vector(np.array(ours.vector(j)))
    seen = observations(np.random.default_rng(1), 2 * config.n_steps)
    ours.step(seen[0])
    for step, message in enumerate(seen[1:], start=1):
        if vtrace:  # every action drawn by member 0
            message.behaviour = np.exp(ours.memory["log_probs"][0, np.arange(ENVS), message.action])
        ours.step(message)
        if step % config.n_steps:
            continue
        for j, model in enumerate(references):
            reference_update(model, ours, j, message.observation, message.done)
            if vtrace and j > 0:  # the others learn from member 0's actions, corrected
                assert np.abs(np.array(ours.vector(j)) - model.policy.parameters_to_vector()).max() > 1e-6
                model.policy.load_from_vector(np.array(ours.vector(j)))
                continue
            np.testing.assert_allclose(ours.vector(j), model.policy.parameters_to_vector(), atol=2e-6,
                                       err_msg=f"member {j} after update {step // config.n_steps}")


def test_vtrace_weights_stay_within_their_truncation():
    """rho = min(1, ratio): a ratio above 1 counts as 1, one below weighs the step's advantage."""
    rng = np.random.default_rng(0)
    steps, columns = 5, 3
    rollout = dict(rewards=rng.normal(size=(steps, columns)), values=rng.normal(size=(steps, columns)),
                   episode_starts=np.zeros((steps, columns)), last_values=rng.normal(size=columns),
                   dones=np.zeros(columns), gammas=np.full(columns, 0.99), gae_lambda=1.0)
    plain = advantages_and_returns(**rollout)
    for ratio in (1.0, 3.0, 100.0):
        np.testing.assert_allclose(advantages_and_returns(**rollout, ratios=np.full((steps, columns), ratio)), plain)
    ratios = rng.uniform(0.01, 5.0, (steps, columns))
    advantages, targets = advantages_and_returns(**rollout, ratios=ratios)
    capped, _ = advantages_and_returns(**rollout, ratios=np.minimum(ratios, 1.0))
    np.testing.assert_allclose(advantages, capped)
    last = rollout["rewards"][-1] + 0.99 * rollout["last_values"] - rollout["values"][-1]
    np.testing.assert_allclose(advantages[-1], np.minimum(ratios[-1], 1.0) * last)
    np.testing.assert_allclose(targets[-1] - rollout["values"][-1], np.minimum(ratios[-1], 1.0) * last)
    tiny, _ = advantages_and_returns(**rollout, ratios=np.full((steps, columns), 1e-6))
    assert np.abs(tiny).max() < 1e-4, "a member that would never take these actions learns almost nothing from them"


def test_greedy_steps_train_the_values_and_not_the_policy():
    """Actions of probability 1 (a greedy leader's) give no policy gradient: with only such steps
    the policy heads keep their weights and the value heads learn."""
    ours = members(1, A2CConfig(vtrace=True), [2e-3])
    before = {name: p.detach().clone() for name, p in ours.heads.policy.named_parameters()}
    for message in observations(np.random.default_rng(3), 5):
        if message.is_step:
            message.behaviour = np.ones(ENVS)
        ours.step(message)
    after = dict(ours.heads.policy.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if "value" in name}, changed


def test_gae_equals_stable_baselines3s_with_episode_ends():
    from stable_baselines3.common.buffers import RolloutBuffer
    observation_space, action_space = spaces()
    buffer = RolloutBuffer(5, observation_space, action_space, gamma=0.97, gae_lambda=0.9, n_envs=3)
    rng = np.random.default_rng(2)
    buffer.rewards[:], buffer.values[:] = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    buffer.episode_starts[:] = rng.random((5, 3)) < 0.3
    last_values, dones = rng.normal(size=3), np.array([0.0, 1.0, 0.0])
    advantages, returns = advantages_and_returns(buffer.rewards, buffer.values, buffer.episode_starts, last_values,
                                                 dones, np.full(3, 0.97), 0.9)
    buffer.compute_returns_and_advantage(torch.as_tensor(last_values), dones)
    np.testing.assert_allclose(advantages, buffer.advantages, rtol=1e-5)
    np.testing.assert_allclose(returns, buffer.returns, rtol=1e-5)


def test_a_full_batch_is_taken_in_order_so_a_seed_repeats():
    """Two learners on the same messages end with the same weights, whatever NumPy's global
    generator does in between (stable-baselines3's RolloutBuffer.get would shuffle with it)."""
    vectors = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        ours = members(2, A2CConfig(), [7e-4, 7e-4])
        for message in observations(np.random.default_rng(0), 15):
            ours.step(message)
        vectors.append(ours.vector(1))
    assert vectors[0] == vectors[1]


def test_a_member_set_apart_keeps_its_own_rollout_phase():
    """New weights for one member restart its rollout alone; the others update on schedule."""
    ours = members(2, A2CConfig(), [7e-4, 7e-4])
    seen = observations(np.random.default_rng(0), 8)
    for message in seen[:3]:
        ours.step(message)
    ours.load(1, NewState(vector=np.array(ours.vector(1))))
    assert ours.positions.tolist() == [2, 0]
    for message in seen[3:6]:
        ours.step(message)
    assert ours.positions.tolist() == [0, 2] and ours.adam.steps.tolist() == [1, 0]


def test_stacked_adam_makes_torchs_updates_for_each_member():
    torch.manual_seed(0)
    networks = [torch.nn.Linear(4, 3) for _ in range(3)]
    rates = [0.01, 0.003, 0.03]
    optimizers = [torch.optim.Adam(n.parameters(), lr=rate, eps=1e-5) for n, rate in zip(networks, rates)]
    weights = torch.stack([torch.nn.utils.parameters_to_vector(n.parameters()).detach() for n in networks])
    adam = StackedAdam(3, weights.shape[1], rates, eps=1e-5)
    for step in range(20):
        data = torch.randn(8, 4)
        who = torch.tensor([0, 1, 2] if step % 3 else [0, 2])  # member 1 sits some steps out
        grads = []
        for j in who.tolist():
            optimizers[j].zero_grad()
            networks[j](data).pow(2).mean().backward()
            optimizers[j].step()
            grads.append(torch.cat([p.grad.flatten() for p in networks[j].parameters()]))
        adam.step(weights, torch.stack(grads), who)
    for j, network in enumerate(networks):
        assert torch.allclose(weights[j], torch.nn.utils.parameters_to_vector(network.parameters()), atol=1e-6), j


def test_a_model_process_never_imports_the_torch_compiler():
    """torch._dynamo costs over a CPU-second per process, and twenty models start at once."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from swarm_rl.scripts import load_script
        from swarm_rl.settings import SwarmSettings
        m = load_script("02_model.py")
        for names in (["model0"], ["model0", "model1"]):
            state = m.new_state(SwarmSettings(envs=1), names)
            for i in range(8):
                step = {"REWARD": 1.0, "DONE": False, "ACTION": [0]} if i else {}
                m.forward({"OBSERVATION": [0.01] * 4, "DETERMINISTIC": False, **step}, state)
            answers = m.send_weights({"CMD": "GET"}, state)
            trained = int(state.adam.steps[0])
            m.set_weights({"CMD": "SET", "WEIGHTS": {a["COMPONENT_ID"]: a["WEIGHTS"] for a in answers}}, state)
        print("trained", trained, "dynamo", "torch._dynamo" in sys.modules)
    """)
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert output.stdout.strip() == "trained 1 dynamo False", output.stderr

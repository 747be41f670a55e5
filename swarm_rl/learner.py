"""The A2C learner: k members, each a stable-baselines3 ActorCriticPolicy, computed together.

A model process is k = 1, the tutorial's; SWARM_MODELS_PER_PROCESS=k hosts k. The members'
weights are the rows of one matrix, run through the policy's own modules with `torch.func`
(`functional_call`, `vmap` over members; one member is the policy itself). Their steps are stored in one
stable-baselines3 RolloutBuffer, a block of columns per member. The update is A2C.train's: policy
loss, value loss, entropy, gradient-norm clipping, Adam; its advantages are SB3's GAE or, for
actions a member did not choose itself, V-trace's (Espeholt et al. 2018), which weighs each step by
the member's truncated probability ratio to the behaviour that chose it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from torch.func import functional_call, vmap  # not torch.func.grad: it imports torch._dynamo

from swarm_rl.adam import StackedAdam
from swarm_rl.protocol import ENT_COEF, EXP_AVG, EXP_AVG_SQ, GAMMA, LEARNING_RATE, STEP, NewState, Observed


@dataclass(frozen=True)
class A2CConfig:
    """The tutorial's A2C: stable-baselines3's defaults, with a rollout of 5 steps and Adam.
    `vtrace`: correct each member's update for the actions it did not choose (gamma and ent_coef
    are each member's starting values; the evolution may change them)."""
    n_steps: int = 5
    gamma: float = 0.99
    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantage: bool = False
    adam_eps: float = 1e-5  # what ActorCriticPolicy gives its Adam
    vtrace: bool = False
    rho_bar: float = 1.0  # V-trace's truncation of the importance weights (IMPALA's 1)


def advantages_and_returns(rewards: np.ndarray, values: np.ndarray, episode_starts: np.ndarray,
                           last_values: np.ndarray, dones: np.ndarray, gammas: np.ndarray, gae_lambda: float,
                           ratios: np.ndarray | None = None, rho_bar: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The policy-gradient advantages and the value targets of a rollout, (steps, columns) each.

    Without `ratios` (target over behaviour probability of each action taken), SB3's GAE
    (RolloutBuffer.compute_returns_and_advantage). With them, V-trace: rho = min(rho_bar, ratio)
    weighs each temporal difference, c = gae_lambda * min(1, ratio) carries it back, and the
    advantage is rho * (r + gamma * v_next - V). With ratios of 1 and gae_lambda 1 both are the
    n-step advantage and return. `gammas` is one discount per column."""
    steps = len(rewards)
    rho = np.ones_like(rewards) if ratios is None else np.minimum(rho_bar, ratios)
    c = gae_lambda * (np.ones_like(rewards) if ratios is None else np.minimum(1.0, ratios))
    next_values = np.concatenate([values[1:], last_values[None]])
    next_non_terminal = 1.0 - np.concatenate([episode_starts[1:], dones[None]]).astype(np.float64)
    deltas = rho * (rewards + gammas * next_values * next_non_terminal - values)
    corrections = np.zeros_like(rewards)  # v_t - V(x_t)
    carried = np.zeros(rewards.shape[1:])
    for t in reversed(range(steps)):
        carried = deltas[t] + gammas * c[t] * next_non_terminal[t] * carried
        corrections[t] = carried
    targets = corrections + values
    if ratios is None:
        return corrections, targets  # GAE's advantage
    next_targets = np.concatenate([targets[1:], last_values[None]])
    return rho * (rewards + gammas * next_targets * next_non_terminal - values), targets


class _NoOptimizer:
    """Fills ActorCriticPolicy's optimizer slot: the members' Adam state is StackedAdam's, and a
    torch optimizer would import torch._dynamo."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass


def make_policy(observation_space, action_space, net_arch: list[int]) -> ActorCriticPolicy:
    """The tutorial's actor-critic: `net_arch` hidden units for the policy and for the value."""
    return ActorCriticPolicy(observation_space, action_space, lr_schedule=lambda _: 0.0,
                             net_arch=dict(pi=list(net_arch), vf=list(net_arch)), optimizer_class=_NoOptimizer)


class _Heads(torch.nn.Module):
    """A policy's action logits and state value (its forward() samples an action instead)."""

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent_pi, latent_vf = self.policy.mlp_extractor(self.policy.extract_features(obs))
        return self.policy.action_net(latent_pi), self.policy.value_net(latent_vf).squeeze(-1)


class Members:
    """k A2C members of one architecture: their weights, Adam states, rollouts and hyperparameters.

    Member j's weights are row j of `weights`, in `policy.parameters()` order: the flat vector its
    own process sends. The template policy's parameters are views of row 0.
    """

    def __init__(self, policies: list[ActorCriticPolicy], ids: list[str], learning_rates: list[float],
                 envs: int, config: A2CConfig = A2CConfig()) -> None:
        template = policies[0]
        self.ids, self.k, self.envs, self.config = list(ids), len(policies), envs, config
        self.width, self.n_actions = template.observation_space.shape[0], int(template.action_space.n)
        self.heads = _Heads(template)
        self.shapes = {f"policy.{name}": p.shape for name, p in template.named_parameters()}
        with torch.no_grad():
            self.weights = torch.stack([torch.nn.utils.parameters_to_vector(p.parameters()) for p in policies])
        self.size = self.weights.shape[1]
        self.params = self.unflatten(self.weights)
        for parameter, view in zip(template.parameters(), self.params.values()):
            parameter.data = view[0]  # so the template itself computes member 0
        self.adam = StackedAdam(self.k, self.size, learning_rates, eps=config.adam_eps)
        self.ent_coefs = np.full(self.k, config.ent_coef)
        self.gammas = np.full(self.k, config.gamma)
        # Storage only: the advantages are `advantages_and_returns`', with each member's own discount.
        self.buffer = RolloutBuffer(config.n_steps, template.observation_space, template.action_space, device="cpu",
                                    n_envs=self.k * envs)
        self.positions = np.zeros(self.k, dtype=np.int64)  # each member's next row in its columns
        # log-probability of each stored action under the behaviour that chose it
        self.behaviour_log_probs = np.zeros((config.n_steps, self.k * envs), dtype=np.float32)
        self.training_enabled = np.ones(self.k, dtype=bool)
        # A step's reward and action come with the next observation: what each member saw of the last one.
        self.remembers = np.zeros(self.k, dtype=bool)
        self.memory: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ the networks
    def unflatten(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each parameter of every row of `weights` (members, size), as views: {name: (members, *shape)}."""
        views, offset = {}, 0
        for name, shape in self.shapes.items():
            size = shape.numel()
            views[name] = weights[:, offset:offset + size].view(len(weights), *shape)
            offset += size
        return views

    def forward(self, obs: torch.Tensor, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (members, rows, actions) and values (members, rows) of obs (rows, features), for
        every member or for the rows `weights`."""
        if weights is None and self.k == 1:  # the template holds member 0: no reparametrisation
            logits, values = self.heads(obs)
            return logits.unsqueeze(0), values.unsqueeze(0)
        params = self.params if weights is None else self.unflatten(weights)
        members = len(next(iter(params.values())))
        return over_members(self._heads, params, obs.expand(members, *obs.shape))

    def _heads(self, params: dict[str, torch.Tensor], obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(self.heads, params, (obs,), tie_weights=False)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(obs)[0]

    # ------------------------------------------------------------------ a step
    def step(self, seen: Observed) -> np.ndarray:
        """Every member's logits (members, envs, actions) for an observation. On the way: store the
        step that just happened, and update the members whose rollout is full. Deterministic
        (evaluation) steps are only answered: nothing is stored and nothing learned."""
        obs = torch.as_tensor(seen.observation, dtype=torch.float32)
        if seen.deterministic:
            self.remembers[:] = False  # an evaluation step is no one's next step
            return self.logits(obs).numpy()
        with torch.no_grad():
            logits, values = self.forward(obs)
        if seen.is_step and self.remembers.any():
            self._store(seen)
        full = self.positions == self.config.n_steps
        if full.any():
            learners = np.flatnonzero(full & self.training_enabled)
            if len(learners):
                # Bootstrap from this observation, the one after the rollout's last step, with
                # this message's DONE, the one that belongs to that step.
                self._update(learners, values.numpy(), seen.done)
                with torch.no_grad():
                    logits, values = self.forward(obs)  # act with the updated policies
            self.positions[full] = 0
        self.remembers[:] = True
        self.memory = dict(obs=seen.observation, values=values.numpy(), log_probs=torch.log_softmax(logits, -1).numpy(),
                           episode_start=seen.done if seen.is_step else np.ones(self.envs))
        return logits.numpy()

    def _columns(self, who: np.ndarray) -> np.ndarray:
        """The buffer columns of the members `who`: (members, envs)."""
        return who[:, None] * self.envs + np.arange(self.envs)

    def _store(self, seen: Observed) -> None:
        """Add the last observation's step to the rollout of every member that remembers it."""
        who = np.flatnonzero(self.remembers)
        reward = np.broadcast_to(seen.reward, (len(who), self.envs))
        if seen.truncated is not None and seen.truncated.any():
            # The time limit ended the episode, not a failure: credit the value of where it was
            # (as stable-baselines3 does), instead of treating the last step as a fall.
            with torch.no_grad():
                final = self.forward(torch.as_tensor(seen.final_observation, dtype=torch.float32),
                                     self.weights[who] if len(who) < self.k else None)[1]
            reward = reward + self.gammas[who][:, None] * final.numpy() * seen.truncated
        rows, columns, buffer = self.positions[who][:, None], self._columns(who), self.buffer
        buffer.observations[rows, columns] = self.memory["obs"]
        buffer.actions[rows, columns] = seen.action[:, None]
        buffer.rewards[rows, columns] = reward
        buffer.episode_starts[rows, columns] = self.memory["episode_start"]
        buffer.values[rows, columns] = self.memory["values"][who]
        own = self.memory["log_probs"][who][:, np.arange(self.envs), seen.action]
        buffer.log_probs[rows, columns] = own
        self.behaviour_log_probs[rows, columns] = own if seen.behaviour is None else np.log(seen.behaviour)
        self.positions[who] += 1

    def _update(self, who: np.ndarray, last_values: np.ndarray, dones: np.ndarray) -> None:
        """One A2C update (A2C.train) for each of the members `who`, on its whole rollout."""
        buffer, config = self.buffer, self.config
        ratios = np.exp(buffer.log_probs - self.behaviour_log_probs) if config.vtrace else None
        buffer.advantages, buffer.returns = advantages_and_returns(
            buffer.rewards, buffer.values, buffer.episode_starts, last_values.flatten(), np.tile(dones, self.k),
            np.repeat(self.gammas, self.envs), config.gae_lambda, ratios, config.rho_bar)
        if config.vtrace:
            # A greedy action (probability 1) shows nothing of the others: its step trains the
            # values only. (A sampled action of probability 1 has no policy gradient anyway.)
            buffer.advantages = buffer.advantages * (self.behaviour_log_probs < 0)

        def batch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            """Member-major rows, environment by environment in step order (as RolloutBuffer.get)."""
            mine = array[:, self._columns(who)]  # (steps, members, envs, ...)
            mine = np.moveaxis(mine, 0, 2)  # (members, envs, steps, ...)
            return torch.as_tensor(mine.reshape(len(who), -1, *array.shape[2:]), dtype=dtype)

        observations, actions = batch(buffer.observations, torch.float32), batch(buffer.actions, torch.long)[..., 0]
        advantages, returns = batch(buffer.advantages, torch.float32), batch(buffer.returns, torch.float32)
        index = torch.as_tensor(who)
        ent_coefs = torch.as_tensor(self.ent_coefs[who], dtype=torch.float32)
        weights = self.weights[index].requires_grad_()
        with torch.enable_grad():  # each member's loss depends on its own weights only: one backward for all
            losses = over_members(self._loss, self.unflatten(weights), observations, actions, advantages, returns,
                                  ent_coefs)
            (grads,) = torch.autograd.grad(losses.sum(), weights)
        clip = torch.clamp(config.max_grad_norm / (grads.norm(dim=1) + 1e-6), max=1.0)  # as clip_grad_norm_, per member
        self.adam.step(self.weights, grads * clip.unsqueeze(1), index)

    def _loss(self, params: dict[str, torch.Tensor], observations: torch.Tensor, actions: torch.Tensor,
              advantages: torch.Tensor, returns: torch.Tensor, ent_coef: torch.Tensor) -> torch.Tensor:
        """A2C's loss for one member: policy gradient, value error and entropy bonus."""
        config = self.config
        logits, values = self._heads(params, observations)
        log_probs = torch.log_softmax(logits, -1)
        log_prob = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        if config.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(advantages * log_prob).mean()
        value_loss = torch.nn.functional.mse_loss(returns, values)
        return policy_loss - ent_coef * entropy.mean() + config.vf_coef * value_loss

    # ------------------------------------------------------------------ what the evolution sees
    def vector(self, j: int) -> list[float]:
        return self.weights[j].tolist()

    def learning_rate(self, j: int) -> float:
        return float(self.adam.learning_rates[j])

    def hyperparameters(self, j: int) -> dict[str, float]:
        """Member j's learning rate, entropy coefficient and discount."""
        return {LEARNING_RATE: self.learning_rate(j), ENT_COEF: float(self.ent_coefs[j]), GAMMA: float(self.gammas[j])}

    def set_hyperparameters(self, j: int, values: dict[str, float]) -> None:
        if LEARNING_RATE in values:
            self.adam.learning_rates[j] = values[LEARNING_RATE]
        if ENT_COEF in values:
            self.ent_coefs[j] = values[ENT_COEF]
        if GAMMA in values:
            self.gammas[j] = values[GAMMA]

    def optimizer_state(self, j: int) -> dict | None:
        """Member j's Adam step and moments, flat as its weights; None before its first update."""
        if self.adam.steps[j] == 0:
            return None
        return {STEP: float(self.adam.steps[j]), EXP_AVG: self.adam.exp_avg[j].tolist(),
                EXP_AVG_SQ: self.adam.exp_avg_sq[j].tolist()}

    def load(self, j: int, new: NewState) -> None:
        """Member j takes a SET. New weights drop what the old ones left: Adam's moments (unless
        the SET brings the weights' own) and the rollout stored with the old values. A new discount
        keeps the rollout: it applies from the next update."""
        if new.vector is not None:
            self.weights[j] = torch.as_tensor(new.vector, dtype=torch.float32)
            step, exp_avg, exp_avg_sq = new.adam if new.adam is not None else (0.0, np.zeros(self.size), np.zeros(self.size))
            self.adam.steps[j] = step
            self.adam.exp_avg[j] = torch.as_tensor(exp_avg, dtype=torch.float32)
            self.adam.exp_avg_sq[j] = torch.as_tensor(exp_avg_sq, dtype=torch.float32)
            self.positions[j] = 0
            self.remembers[j] = False
        self.set_hyperparameters(j, new.hyperparameters)


def over_members(function, params: dict[str, torch.Tensor], *args: torch.Tensor):
    """`function(member's params, *member's args)` for every member (the first axis of each):
    with `vmap`, or for a single member with a plain call, which costs less than vmap itself."""
    if len(next(iter(params.values()))) > 1:
        return vmap(function)(params, *args)
    result = function({n: p[0] for n, p in params.items()}, *(a[0] for a in args))
    if isinstance(result, torch.Tensor):
        return result.unsqueeze(0)
    return tuple(r.unsqueeze(0) for r in result)


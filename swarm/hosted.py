"""Several models in one process (SWARM_MODELS_PER_PROCESS=k): 02_model.py's A2C policies,
computed together.

Each hosted model keeps what a model process keeps: its id, weights, Adam state and learning
rate, its rollout and its memory of the last step. They are stacked along a first axis of length
k, so one batched matrix product runs all k networks on an observation, and one backward pass
trains every model whose rollout is full: the loss is the sum of the models' own losses, so each
model's gradient is its own. On the wire nothing changes: the process answers every message
with one reply per model, each exactly what that model's own process would send.
"""
from __future__ import annotations

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from swarm.checks import BadMessage, unbatch
from swarm.client import Handlers
from swarm.protocol import (CMD, COMPONENT_ID, DETERMINISTIC, DONE, EXP_AVG, EXP_AVG_SQ, GET, HYPERPARAMETERS,
                            LEARNING_RATE, LOGITS, OPTIMIZER, REWARD, ROOM_EVOLUTION, ROOM_LOGITS, ROOM_OBSERVATION, SET,
                            STATE, STEP, WEIGHTS, NewState, Observed, read_observation, read_set)


class HostedModels:
    """k actor-critic policies of one architecture as stacked tensors, with their A2C rollouts
    and Adam states.

    `template` (one of the policies) gives the architecture: each stacked tensor holds one of its
    parameters for every model, in `template.parameters()` order, so a model's flat weight vector
    is the one its own process would send.
    """

    def __init__(self, policies: list[ActorCriticPolicy], ids: list[str], envs: int, n_steps: int, gamma: float,
                 gae_lambda: float, ent_coef: float, vf_coef: float, max_grad_norm: float,
                 normalize_advantage: bool) -> None:
        self.template, self.ids, self.k, self.envs = policies[0], list(ids), len(policies), envs
        self.width, self.n_actions = self.template.observation_space.shape[0], int(self.template.action_space.n)
        self.n_steps, self.gamma, self.gae_lambda = n_steps, gamma, gae_lambda
        self.ent_coef, self.vf_coef, self.max_grad_norm = ent_coef, vf_coef, max_grad_norm
        self.normalize_advantage = normalize_advantage
        names = [name for name, _ in self.template.named_parameters()]
        with torch.no_grad():
            self.weights = {name: torch.stack([dict(p.named_parameters())[name].detach() for p in policies])
                            for name in names}
        self.size = sum(w[0].numel() for w in self.weights.values())
        defaults = self.template.optimizer.defaults
        self.betas, self.eps = defaults["betas"], defaults["eps"]
        self.learning_rates = torch.tensor([p.optimizer.param_groups[0]["lr"] for p in policies], dtype=torch.float64)
        self.adam_steps = torch.zeros(self.k, dtype=torch.float64)  # 0: no Adam state yet (it starts at the first update)
        self.exp_avg = {name: torch.zeros_like(w) for name, w in self.weights.items()}
        self.exp_avg_sq = {name: torch.zeros_like(w) for name, w in self.weights.items()}
        self.training_enabled = np.ones(self.k, dtype=bool)
        shape = (self.k, n_steps, envs)
        self.rollout = dict(obs=np.zeros((*shape, self.width), np.float32), actions=np.zeros(shape, np.int64),
                            rewards=np.zeros(shape, np.float32), episode_starts=np.zeros(shape, np.float32),
                            values=np.zeros(shape, np.float32), log_probs=np.zeros(shape, np.float32))
        self.positions = np.zeros(self.k, dtype=np.int64)  # each model's next row in its rollout
        # The memory of the last (training) observation, whose reward and action come with the next.
        self.remembers = np.zeros(self.k, dtype=bool)
        self.memory: dict[str, np.ndarray | torch.Tensor] = {}

    # ----------------------------------------------------------------------- the networks
    def _run(self, module: torch.nn.Module, prefix: str, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """`module` of every model at once: x is (models, rows, features)."""
        if isinstance(module, torch.nn.Linear):
            return torch.baddbmm(weights[prefix + "bias"].unsqueeze(1), x, weights[prefix + "weight"].transpose(1, 2))
        if isinstance(module, torch.nn.Sequential):
            for index, layer in enumerate(module):
                x = self._run(layer, f"{prefix}{index}.", x, weights)
            return x
        if any(True for _ in module.parameters()):
            raise TypeError(f"cannot batch {type(module).__name__} ({prefix})")
        return module(x)  # an activation

    def heads(self, obs: torch.Tensor, weights: dict[str, torch.Tensor] | None = None,
              values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Action logits (models, rows, actions) and state values (models, rows) of every model;
        obs is (rows, features) for all, or (models, rows, features)."""
        weights = self.weights if weights is None else weights
        extractor = self.template.mlp_extractor
        x = obs if obs.dim() == 3 else obs.expand(len(next(iter(weights.values()))), *obs.shape)
        logits = self._run(self.template.action_net, "action_net.",
                           self._run(extractor.policy_net, "mlp_extractor.policy_net.", x, weights), weights)
        if not values:
            return logits, None
        value = self._run(self.template.value_net, "value_net.",
                          self._run(extractor.value_net, "mlp_extractor.value_net.", x, weights), weights)
        return logits, value.squeeze(-1)

    # ----------------------------------------------------------------------- a step
    def step(self, seen: Observed) -> np.ndarray:
        """02_model.forward for every model: store the step that just happened, train the models
        whose rollout is full, and return each model's logits (models, envs, actions)."""
        obs = torch.as_tensor(seen.observation, dtype=torch.float32)
        with torch.no_grad():
            if seen.deterministic:
                self.remembers[:] = False  # an evaluation step is no one's next step
                return self.heads(obs, values=False)[0].numpy()
            logits, values = self.heads(obs)
            if seen.is_step and self.remembers.any():
                self._store(seen)
            full = self.positions == self.n_steps
            if full.any():
                learners = np.flatnonzero(full & self.training_enabled)
                if len(learners):
                    self._train(learners, values[learners].numpy(), seen.done)
                    logits, values = self.heads(obs)  # act with the updated policies
                self.positions[full] = 0
        self.remembers[:] = True
        self.memory = dict(obs=seen.observation, values=values.numpy(), log_probs=torch.log_softmax(logits, -1).numpy(),
                           episode_start=seen.done if seen.is_step else np.ones(self.envs))
        return logits.numpy()

    def _store(self, seen: Observed) -> None:
        """Add the last observation's step to the rollout of every model that remembers it."""
        who = np.flatnonzero(self.remembers)
        reward = np.broadcast_to(seen.reward, (len(who), self.envs))
        if seen.truncated is not None and seen.truncated.any():
            # The time limit ended the episode, not a failure: credit the value of where the pole was.
            final = self.heads(torch.as_tensor(seen.final_observation, dtype=torch.float32),
                               {n: w[who] for n, w in self.weights.items()})[1]
            reward = reward + self.gamma * final.numpy() * seen.truncated
        rows = self.positions[who]
        rollout, memory = self.rollout, self.memory
        rollout["obs"][who, rows] = memory["obs"]
        rollout["actions"][who, rows] = seen.action
        rollout["rewards"][who, rows] = reward
        rollout["episode_starts"][who, rows] = memory["episode_start"]
        rollout["values"][who, rows] = memory["values"][who]
        rollout["log_probs"][who, rows] = memory["log_probs"][who][:, np.arange(self.envs), seen.action]
        self.positions[who] += 1

    def _advantages(self, who: np.ndarray, last_values: np.ndarray, dones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RolloutBuffer.compute_returns_and_advantage (GAE) for the models `who`: (advantages, returns)."""
        rewards, values = self.rollout["rewards"][who], self.rollout["values"][who]
        starts = self.rollout["episode_starts"][who]
        advantages = np.zeros_like(rewards)
        last_gae = np.zeros((len(who), self.envs), np.float32)
        for t in reversed(range(self.n_steps)):
            if t == self.n_steps - 1:
                next_non_terminal, next_values = 1.0 - dones.astype(np.float32), last_values
            else:
                next_non_terminal, next_values = 1.0 - starts[:, t + 1], values[:, t + 1]
            delta = rewards[:, t] + self.gamma * next_values * next_non_terminal - values[:, t]
            last_gae = delta + self.gamma * self.gae_lambda * next_non_terminal * last_gae
            advantages[:, t] = last_gae
        return advantages, advantages + values

    def _train(self, who: np.ndarray, last_values: np.ndarray, dones: np.ndarray) -> None:
        """02_model.train for the models `who`: one A2C update each on its whole rollout."""
        advantages, returns = self._advantages(who, last_values, dones)
        m, rows = len(who), self.n_steps * self.envs
        obs = torch.as_tensor(self.rollout["obs"][who].reshape(m, rows, self.width))
        actions = torch.as_tensor(self.rollout["actions"][who].reshape(m, rows, 1))
        advantages = torch.as_tensor(advantages.reshape(m, rows))
        returns = torch.as_tensor(returns.reshape(m, rows))
        index = torch.as_tensor(who)
        weights = {n: w[index].requires_grad_() for n, w in self.weights.items()}
        with torch.enable_grad():
            logits, values = self.heads(obs, weights)
            log_probs = torch.log_softmax(logits, -1)
            log_prob = log_probs.gather(-1, actions).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            if self.normalize_advantage:
                advantages = (advantages - advantages.mean(1, keepdim=True)) / (advantages.std(1, keepdim=True) + 1e-8)
            policy_loss = -(advantages * log_prob).mean(1)
            value_loss = ((returns - values) ** 2).mean(1)
            loss = policy_loss - self.ent_coef * entropy.mean(1) + self.vf_coef * value_loss
            grads = torch.autograd.grad(loss.sum(), list(weights.values()))
        self._adam(index, dict(zip(weights, grads)))

    def _adam(self, index: torch.Tensor, grads: dict[str, torch.Tensor]) -> None:
        """Each model's gradient clipped to its own norm (clip_grad_norm_), then torch's Adam step
        with its own step count and learning rate."""
        norms = torch.sqrt(sum((g.flatten(1) ** 2).sum(1) for g in grads.values()))
        clip = torch.clamp(self.max_grad_norm / (norms + 1e-6), max=1.0)
        beta1, beta2 = self.betas
        self.adam_steps[index] += 1
        steps = self.adam_steps[index]
        step_size = (self.learning_rates[index] / (1 - beta1 ** steps)).float()
        correction2_sqrt = torch.sqrt(1 - beta2 ** steps).float()
        for name, grad in grads.items():
            shape = (-1,) + (1,) * (grad.dim() - 1)
            grad = grad * clip.view(shape)
            exp_avg = self.exp_avg[name][index].mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq = self.exp_avg_sq[name][index].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / correction2_sqrt.view(shape)).add_(self.eps)
            self.weights[name][index] = self.weights[name][index] - step_size.view(shape) * exp_avg / denom
            self.exp_avg[name][index], self.exp_avg_sq[name][index] = exp_avg, exp_avg_sq

    # ----------------------------------------------------------------------- what the evolution sees
    def vector(self, j: int) -> list[float]:
        return torch.cat([w[j].flatten() for w in self.weights.values()]).tolist()

    def optimizer_state(self, j: int) -> dict | None:
        """Model j's Adam state as 02_model.optimizer_state gives it; None before its first update."""
        if self.adam_steps[j] == 0:
            return None
        return {STEP: float(self.adam_steps[j]),
                EXP_AVG: torch.cat([s[j].flatten() for s in self.exp_avg.values()]).tolist(),
                EXP_AVG_SQ: torch.cat([s[j].flatten() for s in self.exp_avg_sq.values()]).tolist()}

    def _unflatten(self, target: dict[str, torch.Tensor], j: int, flat: np.ndarray) -> None:
        offset = 0
        for stacked in target.values():
            size = stacked[j].numel()
            stacked[j] = torch.as_tensor(flat[offset:offset + size], dtype=stacked.dtype).view_as(stacked[j])
            offset += size

    def load(self, j: int, new: NewState) -> None:
        """02_model.set_weights for model j: new weights drop its Adam state (or take the one that
        came with them), its rollout and its memory; a new learning rate is used from the next update."""
        if new.vector is not None:
            self._unflatten(self.weights, j, new.vector)
            step, exp_avg, exp_avg_sq = new.adam if new.adam is not None else (0.0, np.zeros(self.size), np.zeros(self.size))
            self.adam_steps[j] = step
            self._unflatten(self.exp_avg, j, exp_avg)
            self._unflatten(self.exp_avg_sq, j, exp_avg_sq)
            self.positions[j] = 0
            self.remembers[j] = False
        if new.learning_rate is not None:
            self.learning_rates[j] = new.learning_rate


# --------------------------------------------------------------------------- the protocol, as 02_model.py's
handlers = Handlers()


@handlers.on(ROOM_OBSERVATION, reply_to=ROOM_LOGITS, join_reply_room=False)
def forward(msg, hosted):
    """Observation(s) in, one LOGITS message per hosted model out."""
    seen = read_observation(msg, hosted.envs, hosted.width, hosted.n_actions)
    logits = hosted.step(seen)
    outcome = {REWARD: msg[REWARD], DONE: msg[DONE]} if seen.is_step and not seen.deterministic else {}
    return [{LOGITS: unbatch(mine), COMPONENT_ID: model_id, DETERMINISTIC: seen.deterministic, **outcome}
            for model_id, mine in zip(hosted.ids, logits)]


@handlers.on(ROOM_EVOLUTION, reply_to=ROOM_EVOLUTION)
def send_weights(msg, hosted):
    """GET: every hosted model's weights and learning rate, and training paused until the SET.
    STATE: the same with Adam's state; training goes on."""
    if msg.get(CMD) not in (GET, STATE):
        return None
    if msg[CMD] == GET:
        hosted.training_enabled[:] = False
    return [{WEIGHTS: hosted.vector(j), COMPONENT_ID: model_id,
             HYPERPARAMETERS: {LEARNING_RATE: float(hosted.learning_rates[j])},
             **({OPTIMIZER: hosted.optimizer_state(j)} if msg[CMD] == STATE else {})}
            for j, model_id in enumerate(hosted.ids)]


@handlers.on(ROOM_EVOLUTION, reply_to=ROOM_EVOLUTION)
def set_weights(msg, hosted):
    """SET: each hosted model takes its own part, checked first; a model whose part is bad changes
    nothing (and stays paused), the others go on."""
    if msg.get(CMD) != SET:
        return None
    refused = []
    for j, model_id in enumerate(hosted.ids):
        try:
            new = read_set(msg, model_id, hosted.size)
        except BadMessage as error:
            refused.append(f"{model_id}: {error}")
            continue
        hosted.load(j, new)
        hosted.training_enabled[j] = True
    if refused:
        raise BadMessage("; ".join(refused))
    return None

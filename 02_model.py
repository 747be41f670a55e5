"""02_model.py: one A2C policy of the swarm (the swarm runs SWARM_MODELS of these).

Each model answers every observation with its action logits; the aggregation turns all models'
logits into one action. Every reward that comes back is stored in a RolloutBuffer, and when the
buffer is full the policy takes one A2C step on it. The evolution can read (GET) and replace (SET)
the policy's weights as one flat vector.

With SWARM_MODELS_PER_PROCESS=k one process hosts k of these models and computes them together
(swarm/hosted.py); each still answers as its own model.
"""
import gc
import secrets

import numpy as np
import torch
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from swergio_toolbox.objects import MutableBool

from swarm.adam import Adam
from swarm.checks import unbatch
from swarm.client import Handlers, SwarmClient
from swarm.component import (component_name, hosted_names, new_component_id, setup_component,
                             yield_to_the_critical_path)
from swarm.protocol import (CMD, COMPONENT_ID, DETERMINISTIC, DONE, EXP_AVG, EXP_AVG_SQ, GET, HYPERPARAMETERS,
                            LEARNING_RATE, LOGITS, OPTIMIZER, REWARD, ROOM_EVOLUTION, ROOM_LOGITS, ROOM_OBSERVATION, SET,
                            STATE, STEP, WEIGHTS, read_observation, read_set)
from swarm import hosted
from swarm.environments import spaces
from swarm.settings import SwarmSettings

COMPONENT_NAME = "model"
N_STEPS = 5  # rollout length: the policy trains every 5 environment steps
ENT_COEF, VF_COEF, MAX_GRAD_NORM = 0.0, 0.5, 0.5  # stable-baselines3's A2C defaults, as the tutorial
GAMMA, GAE_LAMBDA = 0.99, 1.0  # stable-baselines3's RolloutBuffer defaults, as the tutorial

handlers = Handlers()


def make_policy(observation_space, action_space, learning_rate: float) -> ActorCriticPolicy:
    """The tutorial's actor-critic: two 16-unit layers for the policy and the value, and Adam
    (torch's fused Adam kernel: the same update, a quarter of the optimizer's time)."""
    return ActorCriticPolicy(observation_space, action_space, lr_schedule=lambda _: learning_rate,
                             net_arch=dict(pi=[16, 16], vf=[16, 16]),
                             optimizer_class=Adam, optimizer_kwargs=dict(fused=True))


def make_rollout_buffer(policy: ActorCriticPolicy, envs: int = 1) -> RolloutBuffer:
    return RolloutBuffer(N_STEPS, policy.observation_space, policy.action_space, device="cpu", gamma=GAMMA,
                         gae_lambda=GAE_LAMBDA, n_envs=envs)


def train(policy: ActorCriticPolicy, rollout_buffer: RolloutBuffer, normalize_advantage: bool) -> None:
    """One A2C update on the whole buffer (as stable-baselines3's A2C.train), then empty it.

    A2C.train also switches the policy into training mode and back; this network has no
    dropout or batch norm, so both modes are the same function, and the switch cost 10% of a step.
    """
    for rollout_data in rollout_buffer.get(batch_size=None):
        actions = rollout_data.actions.long().flatten()
        values, log_prob, entropy = policy.evaluate_actions(rollout_data.observations, actions)
        advantages = rollout_data.advantages
        if normalize_advantage:  # as A2C(normalize_advantage=True)
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        policy_loss = -(advantages * log_prob).mean()
        value_loss = torch.nn.functional.mse_loss(rollout_data.returns, values.flatten())
        entropy_loss = -torch.mean(entropy)
        loss = policy_loss + ENT_COEF * entropy_loss + VF_COEF * value_loss
        policy.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), MAX_GRAD_NORM)
        policy.optimizer.step()
    rollout_buffer.reset()


@handlers.on(ROOM_OBSERVATION, reply_to=ROOM_LOGITS, join_reply_room=False)
def forward(msg, policy, rollout_buffer, memory, training_enabled, component_id, normalize_advantage):
    """Observation(s) in, logits out. On the way: store the step that just happened, and train
    when the buffer is full.

    `memory` carries the previous observation's tensors, because the reward and the action taken
    for it only arrive with the next observation. With SWARM_ENVS copies of the environment every
    array has one row per copy, and they all go through the network in one pass. Deterministic
    (evaluation) steps are only answered: nothing is stored and nothing is learned from them.
    """
    seen = read_observation(msg, rollout_buffer.n_envs, policy.observation_space.shape[0], policy.action_space.n)
    obs_tensor = torch.as_tensor(seen.observation, dtype=torch.float32)
    if seen.deterministic:
        memory.clear()  # an evaluation step is no one's next step
        return reply(action_logits(policy, obs_tensor), True, component_id)

    logits, values = policy_heads(policy, obs_tensor)
    if seen.is_step and "obs" in memory:
        reward = seen.reward
        if seen.truncated is not None and seen.truncated.any():
            # The time limit ended the episode, not a failure: credit the value of where the
            # pole was (as stable-baselines3 does), instead of treating step 500 as a fall.
            _, final_values = policy_heads(policy, torch.as_tensor(seen.final_observation, dtype=torch.float32))
            reward = reward + rollout_buffer.gamma * final_values.flatten().numpy() * seen.truncated
        log_prob = memory["log_probs"][np.arange(rollout_buffer.n_envs), seen.action]
        rollout_buffer.add(memory["obs"], seen.action, reward, memory["episode_start"], memory["values"], log_prob)
    if rollout_buffer.full:
        if training_enabled.value:
            # Bootstrap from this observation, the one that follows the buffer's last step, and
            # with this message's DONE, the one that belongs to that step.
            rollout_buffer.compute_returns_and_advantage(last_values=values, dones=seen.done)
            train(policy, rollout_buffer, normalize_advantage)
            logits, values = policy_heads(policy, obs_tensor)  # act with the updated policy
        else:
            rollout_buffer.reset()
    # log-probabilities of both actions (what Categorical(logits).log_prob gives, without building
    # a distribution object per step)
    memory.update(obs=seen.observation, values=values, log_probs=torch.log_softmax(logits, dim=-1),
                  episode_start=seen.done if seen.is_step else np.ones(rollout_buffer.n_envs))
    answer = reply(logits, False, component_id)
    if seen.is_step:  # what came of the swarm's last action, for a fitness that credits returns
        answer.update({REWARD: msg[REWARD], DONE: msg[DONE]})
    return answer


def policy_heads(policy: ActorCriticPolicy, obs_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Action logits and state values of a batch of observations, in one pass through the network
    (a Box observation needs no feature extractor: stable-baselines3's flattens what is flat already)."""
    with torch.no_grad():
        extractor = policy.mlp_extractor
        return policy.action_net(extractor.policy_net(obs_tensor)), policy.value_net(extractor.value_net(obs_tensor))


def action_logits(policy: ActorCriticPolicy, obs_tensor: torch.Tensor) -> torch.Tensor:
    """The action logits alone: an evaluation step needs no state value."""
    with torch.no_grad():
        return policy.action_net(policy.mlp_extractor.policy_net(obs_tensor))


def reply(logits: torch.Tensor, deterministic: bool, component_id: str) -> dict:
    return {LOGITS: unbatch(logits.numpy()), COMPONENT_ID: component_id, DETERMINISTIC: deterministic}


@handlers.on(ROOM_EVOLUTION, reply_to=ROOM_EVOLUTION)
def send_weights(msg, policy, training_enabled, component_id):
    """GET: answer with the weight vector and the learning rate, and pause training until the
    evolution's SET arrives. STATE (for a checkpoint): the same, with Adam's state; training goes on."""
    if msg.get(CMD) not in (GET, STATE):
        return None
    answer = {WEIGHTS: policy.parameters_to_vector().tolist(), COMPONENT_ID: component_id,
              HYPERPARAMETERS: {LEARNING_RATE: learning_rate(policy)}}
    if msg[CMD] == GET:
        training_enabled.set(False)
    else:
        answer[OPTIMIZER] = optimizer_state(policy)
    return answer


@handlers.on(ROOM_EVOLUTION, reply_to=ROOM_EVOLUTION)
def set_weights(msg, policy, rollout_buffer, memory, training_enabled, component_id):
    """SET: load this model's new vector, learning rate and Adam state, if the SET has them, and
    resume training. It is checked first: a bad SET changes nothing (the weights stay, and so does
    the pause of a GET).

    What old weights leave behind goes with them: Adam's moment estimates (they would push the new
    weights along the old ones' gradients; a SET that brings the state of the weights' owner
    loads that instead) and the steps stored with the old policy's values. A SET without this
    model's id leaves the model as it is (an evolution that kept it).
    """
    if msg.get(CMD) != SET:
        return None
    new = read_set(msg, component_id, sum(p.numel() for p in policy.parameters()))
    if new.vector is not None:
        policy.load_from_vector(new.vector)
        policy.optimizer.state.clear()  # Adam starts afresh (lazily, at the next step), unless:
        if new.adam is not None:
            load_optimizer_state(policy, *new.adam)
        rollout_buffer.reset()
        memory.clear()
    if new.learning_rate is not None:
        for group in policy.optimizer.param_groups:
            group["lr"] = new.learning_rate
    training_enabled.set(True)
    return None


def optimizer_state(policy: ActorCriticPolicy) -> dict | None:
    """Adam's step count and moment estimates, flattened in the order of the weight vector; None
    before the first update."""
    parameters, state = list(policy.parameters()), policy.optimizer.state
    if not all(p in state for p in parameters):
        return None
    return {STEP: float(state[parameters[0]]["step"]),
            EXP_AVG: torch.cat([state[p]["exp_avg"].flatten() for p in parameters]).tolist(),
            EXP_AVG_SQ: torch.cat([state[p]["exp_avg_sq"].flatten() for p in parameters]).tolist()}


def load_optimizer_state(policy: ActorCriticPolicy, step: float, exp_avg: np.ndarray, exp_avg_sq: np.ndarray) -> None:
    """Adam's state from flat vectors, as Adam itself keeps it (fused: a float32 step per weight)."""
    offset = 0
    for parameter in policy.parameters():
        size = parameter.numel()
        policy.optimizer.state[parameter] = {
            "step": torch.tensor(step, dtype=torch.float32),
            "exp_avg": torch.as_tensor(exp_avg[offset:offset + size], dtype=parameter.dtype).view_as(parameter).clone(),
            "exp_avg_sq": torch.as_tensor(exp_avg_sq[offset:offset + size], dtype=parameter.dtype).view_as(parameter).clone()}
        offset += size


def learning_rate(policy: ActorCriticPolicy) -> float:
    return float(policy.optimizer.param_groups[0]["lr"])


def initial_learning_rate(settings: SwarmSettings, seed: int | None) -> float:
    """SWARM_LEARNING_RATE; with population-based training each member starts elsewhere, log-uniformly
    between half and twice that rate, so the population differs in more than its initial weights."""
    if settings.operators != "pbt":
        return settings.learning_rate
    return settings.learning_rate * 2.0 ** np.random.default_rng(seed).uniform(-1.0, 1.0)


def new_model(settings: SwarmSettings, name: str) -> tuple[str, ActorCriticPolicy]:
    """Model `name`'s id and policy: its own initial weights and learning rate, from its seed."""
    seed = settings.component_seed(name)
    torch.manual_seed(secrets.randbits(63) if seed is None else seed)  # each model its own initial weights
    return new_component_id(name, seed), make_policy(*spaces(settings.env_id), initial_learning_rate(settings, seed))


def arguments(settings: SwarmSettings, name: str) -> dict:
    """Model `name`'s identity and state, which its handlers receive by name."""
    component_id, policy = new_model(settings, name)
    return dict(component_id=component_id, policy=policy, rollout_buffer=make_rollout_buffer(policy, settings.envs),
                memory={}, training_enabled=MutableBool(True), normalize_advantage=settings.normalize_advantage)


def hosted_arguments(settings: SwarmSettings, names: list[str]) -> dict:
    """Models `names`, each made as `arguments` makes it (the same seed gives the same weights),
    hosted in this process and computed together (swarm/hosted.py)."""
    ids, policies = zip(*(new_model(settings, name) for name in names))
    models = hosted.HostedModels(list(policies), list(ids), settings.envs, N_STEPS, GAMMA, GAE_LAMBDA, ENT_COEF,
                                 VF_COEF, MAX_GRAD_NORM, settings.normalize_advantage)
    return dict(hosted=models, member_ids=models.ids)


def main(name: str | None = None) -> None:
    """Connect and serve as model `name` (default: the launcher's name for this process), or with
    SWARM_MODELS_PER_PROCESS=k as k models from that name on (model10 hosting 10: model10-model19)."""
    gc.freeze()  # the libraries' objects live forever: later collections need not scan them
    yield_to_the_critical_path()  # twenty models share two cores with the rest of the swarm
    name = name or component_name(COMPONENT_NAME)
    settings = setup_component(name)
    torch.set_num_threads(1)  # one thread each
    if settings.models_per_process == 1:
        client = handlers.wire(SwarmClient(COMPONENT_NAME, settings, **arguments(settings, name)))
    else:
        names = hosted_names(name, settings.models_per_process)
        client = hosted.handlers.wire(SwarmClient(COMPONENT_NAME, settings, **hosted_arguments(settings, names)))
    client.listen()


if __name__ == "__main__":
    main()

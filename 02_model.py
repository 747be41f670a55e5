"""02_model.py: one A2C policy of the swarm (the swarm runs SWARM_MODELS of these).

Each model answers every observation with its action logits; the aggregation turns all models'
logits into one action. Every reward that comes back is stored in a RolloutBuffer, and when the
buffer is full the policy takes one A2C step on it. The evolution can read (GET) and replace (SET)
the policy's weights as one flat vector.
"""
import gc

gc.disable()  # twenty of these start at once: no garbage collection while torch loads (10% faster)
import os  # noqa: E402
import uuid

import gymnasium
import numpy as np
import torch
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.policies import ActorCriticPolicy
from swergio import Trigger
from swergio_toolbox.objects import MutableBool

import swarm_common as sc
import swarm_torch as sc_torch

gc.freeze()  # the libraries' objects live forever: later collections need not scan them
gc.enable()

COMPONENT_NAME = "model"


def new_component_id() -> str:
    """Unique per process (the aggregation and evolution key on it), and readable in their
    messages: the launcher's name for this process (model0, model1, ...) and a random part."""
    return f"{os.environ.get('SWARM_COMPONENT_NAME', COMPONENT_NAME)}-{uuid.uuid4().hex[:12]}"


COMPONENT_ID = new_component_id()

# The spaces come from the environment itself instead of being written out by hand.
_env = gymnasium.make(sc.ENV_ID)
OBS_SPACE, ACT_SPACE = _env.observation_space, _env.action_space
_env.close()

N_STEPS = 5  # rollout length: the policy trains every 5 environment steps
ENT_COEF, VF_COEF, MAX_GRAD_NORM = 0.0, 0.5, 0.5
# Options (README, "Learning"), read with the other settings: the defaults are the tutorial's
# (stable-baselines3's A2C defaults).
_settings = sc.Config.from_env()
LEARNING_RATE, NORMALIZE_ADVANTAGE = _settings.learning_rate, _settings.normalize_advantage


def make_policy() -> ActorCriticPolicy:
    """The tutorial's actor-critic: two 16-unit layers for the policy and the value, Adam 7e-4
    (torch's fused Adam kernel: the same update, a quarter of the optimizer's time)."""
    return ActorCriticPolicy(OBS_SPACE, ACT_SPACE, lr_schedule=lambda _: LEARNING_RATE,
                             net_arch=dict(pi=[16, 16], vf=[16, 16]),
                             optimizer_class=sc_torch.Adam, optimizer_kwargs=dict(fused=True))


def make_rollout_buffer(envs: int = 1) -> RolloutBuffer:
    return RolloutBuffer(N_STEPS, OBS_SPACE, ACT_SPACE, device="cpu", n_envs=envs)


def train(policy: ActorCriticPolicy, rollout_buffer: RolloutBuffer) -> None:
    """One A2C update on the whole buffer (as stable-baselines3's A2C.train), then empty it.

    A2C.train also switches the policy into training mode and back; this network has no
    dropout or batch norm, so both modes are the same function, and the switch cost 10% of a step.
    """
    for rollout_data in rollout_buffer.get(batch_size=None):
        actions = rollout_data.actions.long().flatten()
        values, log_prob, entropy = policy.evaluate_actions(rollout_data.observations, actions)
        advantages = rollout_data.advantages
        if NORMALIZE_ADVANTAGE:  # as A2C(normalize_advantage=True)
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


def forward(msg, policy, rollout_buffer, memory, training_enabled):
    """Observation(s) in, logits out. On the way: store the step that just happened, and train
    when the buffer is full.

    `memory` carries the previous observation's tensors, because the reward and the action taken
    for it only arrive with the next observation. With SWARM_ENVS copies of the environment every
    array has one row per copy, and they all go through the network in one pass. Deterministic
    (evaluation) steps are only answered: nothing is stored and nothing is learned from them.
    """
    envs = rollout_buffer.n_envs
    observation = sc.as_batch(sc.require(msg, sc.OBSERVATION), sc.OBSERVATION, envs, OBS_SPACE.shape[0])
    deterministic = sc.get_bool(msg, sc.DETERMINISTIC)
    is_step = sc.REWARD in msg  # a run's first observation comes without reward/action/done
    if is_step:
        reward = sc.get_per_env(msg, sc.REWARD, envs, float)
        done = sc.get_per_env(msg, sc.DONE, envs, bool)
        action = sc.get_actions(msg, envs, ACT_SPACE.n)
        truncated = sc.get_per_env(msg, sc.TRUNCATED, envs, bool) if sc.TRUNCATED in msg else None
        final_observation = (sc.as_batch(sc.require(msg, sc.FINAL_OBSERVATION), sc.FINAL_OBSERVATION, envs,
                                         OBS_SPACE.shape[0]) if truncated is not None else None)
    obs_tensor = torch.as_tensor(observation, dtype=torch.float32)
    if deterministic:
        memory.clear()  # an evaluation step is no one's next step
        return reply(policy_heads(policy, obs_tensor)[0], deterministic)

    logits, values = policy_heads(policy, obs_tensor)
    if is_step and "obs" in memory:
        if truncated is not None and truncated.any():
            # The time limit ended the episode, not a failure: credit the value of where the
            # pole was (as stable-baselines3 does), instead of treating step 500 as a fall.
            _, final_values = policy_heads(policy, torch.as_tensor(final_observation, dtype=torch.float32))
            reward = reward + rollout_buffer.gamma * final_values.flatten().numpy() * truncated
        log_prob = memory["log_probs"][np.arange(envs), action]
        rollout_buffer.add(memory["obs"], action, reward, memory["episode_start"], memory["values"], log_prob)
    if rollout_buffer.full:
        if training_enabled.value:
            # Bootstrap from this observation, the one that follows the buffer's last step, and
            # with this message's DONE, the one that belongs to that step.
            rollout_buffer.compute_returns_and_advantage(last_values=values, dones=done)
            train(policy, rollout_buffer)
            logits, values = policy_heads(policy, obs_tensor)  # act with the updated policy
        else:
            rollout_buffer.reset()
    # log-probabilities of both actions (what Categorical(logits).log_prob gives, without building
    # a distribution object per step)
    memory.update(obs=observation, values=values, log_probs=torch.log_softmax(logits, dim=-1),
                  episode_start=done if is_step else np.ones(envs))
    answer = reply(logits, deterministic)
    if is_step:  # what came of the swarm's last action, for a fitness that credits returns
        answer.update({sc.REWARD: msg[sc.REWARD], sc.DONE: msg[sc.DONE]})
    return answer


def policy_heads(policy: ActorCriticPolicy, obs_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Action logits and state values of a batch of observations, in one pass through the network."""
    with torch.no_grad():
        latent_pi, latent_vf = policy.mlp_extractor(policy.extract_features(obs_tensor))
        return policy.action_net(latent_pi), policy.value_net(latent_vf)


def reply(logits: torch.Tensor, deterministic: bool) -> dict:
    return {sc.LOGITS: sc.unbatch(logits.numpy()), sc.COMPONENT_ID: COMPONENT_ID, sc.DETERMINISTIC: deterministic}


def send_weights(msg, policy, training_enabled):
    """GET: answer with the weight vector and pause training until the new weights arrive."""
    if msg.get(sc.CMD) != sc.GET:
        return None
    training_enabled.set(False)
    return {sc.WEIGHTS: policy.parameters_to_vector().tolist(), sc.COMPONENT_ID: COMPONENT_ID}


def set_weights(msg, policy, rollout_buffer, memory, training_enabled):
    """SET: load this model's new vector and resume training. It is checked first: a bad SET
    changes nothing (the weights stay, and so does the pause of a GET).

    What the old weights left behind goes with them: Adam's moment estimates (they would push the
    new weights along the old ones' gradients) and the steps stored with the old policy's values.
    """
    if msg.get(sc.CMD) != sc.SET:
        return None
    all_weights = sc.require(msg, sc.WEIGHTS)
    if not isinstance(all_weights, dict) or COMPONENT_ID not in all_weights:
        raise sc.BadMessage("SET carries no weights for this model; weights unchanged")
    size = sum(p.numel() for p in policy.parameters())
    try:
        vector = sc.as_vector(all_weights[COMPONENT_ID], f"{sc.WEIGHTS}[{COMPONENT_ID}]", size)
    except sc.BadMessage as error:
        raise sc.BadMessage(f"{error}; weights unchanged") from None
    policy.load_from_vector(vector)
    policy.optimizer.state.clear()  # Adam starts afresh: lazily, at the next step
    rollout_buffer.reset()
    memory.clear()
    training_enabled.set(True)
    return None


def main() -> None:
    """Connect and serve (what running this script does)."""
    sc.yield_to_the_critical_path()  # twenty models share two cores with the rest of the swarm
    config = sc.setup_component(COMPONENT_NAME)
    torch.set_num_threads(1)  # one thread each
    if (seed := config.component_seed(COMPONENT_NAME)) is not None:
        torch.manual_seed(seed)  # the initial weights; each model has its own seed
    policy = make_policy()
    client = sc.SwarmClient(COMPONENT_NAME, config, component_id=COMPONENT_ID, policy=policy,
                            rollout_buffer=make_rollout_buffer(config.envs), memory={},
                            training_enabled=MutableBool(True))
    # Logits go to the aggregation only: a model does not listen to the other models' logits.
    client.add_eventHandler(forward, sc.CUSTOM, responseRooms=sc.ROOM_LOGITS,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_OBSERVATION), listen_to_response_rooms=False)
    client.add_eventHandler(send_weights, sc.CUSTOM, responseRooms=sc.ROOM_EVOLUTION,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_EVOLUTION))
    client.add_eventHandler(set_weights, sc.CUSTOM, responseRooms=sc.ROOM_EVOLUTION,
                            trigger=Trigger(sc.CUSTOM, sc.ROOM_EVOLUTION))
    client.listen()


if __name__ == "__main__":
    main()

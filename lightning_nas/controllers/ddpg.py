"""``DDPG``: the deep deterministic policy gradient agent of HAQ (continuous actions in ``[0, 1]``).

Lillicrap et al., "Continuous control with deep reinforcement learning", ICLR 2016, as configured by
HAQ (Wang et al., CVPR 2019, https://arxiv.org/abs/1811.08886; official code mit-han-lab/haq
``lib/rl/ddpg.py``): actor and critic MLPs 300-300, Adam (actor 1e-4, critic 1e-3), soft target
updates τ = 0.01, discount 1, batch 64, a replay buffer, warm-up episodes of uniform random actions,
then the actor's action plus truncated-normal noise σ = 0.5 · 0.99^(episode − warm-up), and a
moving-average reward baseline (α = 0.5) subtracted from each sampled batch.

The agent is a plain object (not an ``nn.Module``) so a LightningModule can own it without its weights
entering the module's ``state_dict`` twice; :meth:`DDPG.state_dict` holds tensors and primitives only
(networks, target networks, optimizers, buffer, RNG, baseline), so checkpoints load with
``torch.load(..., weights_only=True)``. It always lives on the CPU: its MLPs are tiny.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DDPG", "ReplayBuffer", "truncated_normal"]


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, n_out))


class _Critic(nn.Module):
    """``Q(s, a)``: state and action embedded separately and summed, as the official critic."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int) -> None:
        super().__init__()
        self.state_in = nn.Linear(state_dim, hidden)
        self.action_in = nn.Linear(action_dim, hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.head(self.state_in(state) + self.action_in(action))


def truncated_normal(mean: Tensor, sigma: float, low: float = 0.0, high: float = 1.0,
                     generator: torch.Generator | None = None) -> Tensor:
    """Samples of ``N(mean, sigma²)`` truncated to ``[low, high]`` (inverse-CDF sampling)."""
    if sigma <= 0:
        return mean.clamp(low, high)
    a = torch.special.ndtr((low - mean) / sigma)
    b = torch.special.ndtr((high - mean) / sigma)
    u = a + (b - a) * torch.rand(mean.shape, generator=generator, dtype=mean.dtype)
    return (mean + sigma * torch.special.ndtri(u.clamp(1e-7, 1 - 1e-7))).clamp(low, high)


class ReplayBuffer:
    """A ring buffer of ``(state, action, reward, next_state, terminal)`` transitions, as tensors."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.states = torch.zeros(capacity, state_dim)
        self.actions = torch.zeros(capacity, action_dim)
        self.rewards = torch.zeros(capacity)
        self.next_states = torch.zeros(capacity, state_dim)
        self.terminals = torch.zeros(capacity)
        self.pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, state: Tensor, action: Tensor, reward: float, next_state: Tensor, terminal: bool) -> None:
        i = self.pos
        self.states[i], self.actions[i], self.next_states[i] = state, action, next_state
        self.rewards[i], self.terminals[i] = reward, float(terminal)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        return self.states[idx], self.actions[idx], self.rewards[idx], self.next_states[idx], self.terminals[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"states": self.states, "actions": self.actions, "rewards": self.rewards,
                "next_states": self.next_states, "terminals": self.terminals, "pos": self.pos, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("states", "actions", "rewards", "next_states", "terminals"):
            if state[key].shape != getattr(self, key).shape:
                raise ValueError(f"replay buffer {key} has shape {tuple(state[key].shape)} in the checkpoint, but "
                                 f"{tuple(getattr(self, key).shape)} here: was it saved for another network?")
            getattr(self, key).copy_(state[key])
        self.pos, self.size = int(state["pos"]), int(state["size"])


class DDPG:
    """DDPG agent with HAQ's settings.

    Args:
        state_dim: features per state.
        action_dim: actions per step (HAQ: 1, the bit-width of one layer's weights or activations).
        buffer_size: replay capacity in transitions (HAQ: 128 × layers).
        hidden: width of both hidden layers of actor and critic.
        actor_lr: Adam learning rate of the actor.
        critic_lr: Adam learning rate of the critic.
        tau: soft target update rate.
        discount: reward discount (HAQ: 1, the reward comes at the end).
        batch_size: transitions per update.
        warmup: episodes of uniform random actions before the actor acts and learns.
        init_noise: σ of the exploration noise at the end of warm-up.
        noise_decay: σ's decay per episode after warm-up.
        baseline_alpha: update rate of the moving-average reward baseline.
        seed: seed of the networks' initialisation and of the agent's own generator (random actions,
            noise, replay sampling); the global RNG is left untouched.

    Example::

        agent = DDPG(state_dim=10, buffer_size=128 * n_layers)
        a = agent.act(state, episode)                       # float in [0, 1]
        agent.learn_episode(states, actions, reward, episode)
    """

    def __init__(self, state_dim: int, action_dim: int = 1, buffer_size: int = 2000, hidden: int = 300,
                 actor_lr: float = 1e-4, critic_lr: float = 1e-3, tau: float = 0.01, discount: float = 1.0,
                 batch_size: int = 64, warmup: int = 20, init_noise: float = 0.5, noise_decay: float = 0.99,
                 baseline_alpha: float = 0.5, seed: int = 0) -> None:
        self.state_dim, self.action_dim = state_dim, action_dim
        self.tau, self.discount, self.batch_size = tau, discount, batch_size
        self.warmup, self.init_noise, self.noise_decay = warmup, init_noise, noise_decay
        self.baseline_alpha = baseline_alpha
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = nn.Sequential(_mlp(state_dim, hidden, action_dim), nn.Sigmoid())
            self.critic = _Critic(state_dim, action_dim, hidden)
        self.actor_target = _frozen_copy(self.actor)
        self.critic_target = _frozen_copy(self.critic)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.buffer = ReplayBuffer(buffer_size, state_dim, action_dim)
        self.generator = torch.Generator().manual_seed(seed)
        self.baseline: float | None = None
        self.noise = init_noise

    def noise_sigma(self, episode: int) -> float:
        """σ of the exploration noise at ``episode`` (0.5 · 0.99^(episode − warm-up))."""
        return self.init_noise * self.noise_decay ** max(0, episode - self.warmup)

    @torch.no_grad()
    def act(self, state: Tensor, episode: int, explore: bool = True) -> Tensor:
        """The action for ``state``: uniform during warm-up, else the actor's plus truncated-normal noise.

        Returns:
            A tensor of ``action_dim`` values in ``[0, 1]``.
        """
        if explore and episode < self.warmup:
            return torch.rand(self.action_dim, generator=self.generator)
        action = self.actor(state.float().view(1, -1)).view(-1)
        if not explore:
            return action
        self.noise = self.noise_sigma(episode)
        return truncated_normal(action, self.noise, generator=self.generator)

    def observe_episode(self, states: Tensor, actions: Tensor, reward: float) -> None:
        """Store an episode's transitions, each with the episode's (final) reward; the last is terminal."""
        n = len(states)
        for t in range(n):
            nxt = states[t + 1] if t + 1 < n else states[t]
            self.buffer.push(states[t], actions[t].view(-1), reward, nxt, t == n - 1)

    def learn_episode(self, states: Tensor, actions: Tensor, reward: float, episode: int) -> dict[str, float]:
        """Store an episode and, after warm-up, run one update per transition (as the official loop).

        Returns:
            The last update's ``value_loss`` and ``policy_loss`` (empty during warm-up).
        """
        self.observe_episode(states, actions, reward)
        losses: dict[str, float] = {}
        if episode >= self.warmup and len(self.buffer) >= self.batch_size:
            for _ in range(len(states)):
                losses = self.update()
        return losses

    def update(self) -> dict[str, float]:
        """One critic and one actor step on a sampled batch, then soft target updates."""
        s, a, r, s1, done = self.buffer.sample(self.batch_size, self.generator)
        mean_r = float(r.mean())
        # HAQ normalises rewards with a moving average of batch means ("based on batch, so small" alpha)
        self.baseline = mean_r if self.baseline is None else self.baseline + self.baseline_alpha * (
            mean_r - self.baseline)
        r = r - self.baseline
        with torch.no_grad():
            next_q = self.critic_target(s1, self.actor_target(s1)).view(-1)
            target_q = r + self.discount * (1 - done) * next_q
        value_loss = F.mse_loss(self.critic(s, a).view(-1), target_q)
        self.critic_optim.zero_grad()
        value_loss.backward()
        self.critic_optim.step()
        policy_loss = -self.critic(s, self.actor(s)).mean()
        self.actor_optim.zero_grad()
        policy_loss.backward()
        self.actor_optim.step()
        _soft_update(self.actor_target, self.actor, self.tau)
        _soft_update(self.critic_target, self.critic, self.tau)
        return {"value_loss": value_loss.item(), "policy_loss": policy_loss.item()}

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly: networks, targets, optimizers, buffer, RNG, baseline, noise."""
        return {
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
            "actor_optim": self.actor_optim.state_dict(), "critic_optim": self.critic_optim.state_dict(),
            "buffer": self.buffer.state_dict(), "generator": self.generator.get_state(),
            "baseline": self.baseline, "noise": self.noise,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("actor", "critic", "actor_target", "critic_target", "actor_optim", "critic_optim", "buffer"):
            getattr(self, name).load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self.baseline = state.get("baseline")
        self.noise = float(state.get("noise", self.init_noise))


def _frozen_copy(module: nn.Module) -> nn.Module:
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def _soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, tau)

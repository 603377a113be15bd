"""DDPG agent: actions in [0, 1], truncated-normal noise, learning a known policy, exact resume."""

from __future__ import annotations

import io

import torch

from lightning_nas.controllers.ddpg import DDPG, truncated_normal
from lightning_nas.modules.haq_episode import rollout

TARGET = torch.tensor([[7, 3], [7, 3]])  # weight bits 7, activation bits 3 for every layer
STATIC = torch.linspace(0, 1, len(TARGET)).view(-1, 1).repeat(1, 8)


def _agent(seed: int = 1, **kwargs: object) -> DDPG:
    # smaller than HAQ's 300-300 so the test is quick; the algorithm is the same
    defaults = dict(buffer_size=128 * 4, hidden=64, actor_lr=1e-3, batch_size=32, warmup=10, seed=seed)
    return DDPG(10, 1, **{**defaults, **kwargs})


def _error(policy: list[tuple[int, int]]) -> float:
    return float((torch.tensor(policy) - TARGET).abs().float().mean())


def _episode(agent: DDPG, episode: int) -> None:
    states, actions, policy = rollout(agent, STATIC, episode)
    agent.learn_episode(states, actions, -0.1 * float((torch.tensor(policy) - TARGET).abs().sum()), episode)


def test_actions_and_noise_stay_in_range() -> None:
    agent = _agent(warmup=2)
    for episode in (0, 1, 2, 50):
        assert all(0 <= float(agent.act(torch.rand(10), episode)) <= 1 for _ in range(20))
    samples = truncated_normal(torch.full((4000,), 0.9), 0.5, generator=torch.Generator().manual_seed(0))
    assert samples.min() >= 0 and samples.max() <= 1 and 0.5 < samples.mean() < 0.8
    assert agent.noise_sigma(2) == 0.5 and abs(agent.noise_sigma(12) - 0.5 * 0.99**10) < 1e-12


def test_agent_approaches_known_best_policy() -> None:
    agent = _agent()
    start = _error(rollout(agent, STATIC, 100, explore=False)[2])
    for episode in range(60):
        _episode(agent, episode)
    end = _error(rollout(agent, STATIC, 100, explore=False)[2])
    assert start >= 2.0 and end <= 1.0, (start, end)


def test_state_dict_round_trip_continues_identically() -> None:
    agent = _agent(warmup=2)
    for episode in range(4):
        _episode(agent, episode)
    buf = io.BytesIO()
    torch.save(agent.state_dict(), buf)
    buf.seek(0)
    resumed = _agent(seed=99, warmup=2)  # a different seed: everything must come from the state
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert len(resumed.buffer) == len(agent.buffer) and resumed.baseline == agent.baseline
    _episode(agent, 4)
    _episode(resumed, 4)
    state = torch.rand(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(agent.act(state, 5), resumed.act(state, 5))
    for a, b in zip(agent.critic_target.parameters(), resumed.critic_target.parameters()):
        assert torch.equal(a, b)

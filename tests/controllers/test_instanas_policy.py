"""InstaNASPolicy and its loss: the official input pooling and entropy bonus, and our named variants."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_nas.controllers.instanas_policy import ENTROPIES, InstaNASPolicy, encourage, policy_loss


def _stem_input_size(controller: InstaNASPolicy, size: int) -> int:
    seen: list[int] = []
    handle = controller.stem.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[-1]))
    with torch.no_grad():
        probs = controller(torch.randn(2, 3, size, size))
    handle.remove()
    assert probs.shape == (2, controller.num_cells, controller.num_options)
    return seen[0]


def test_policy32_sees_the_full_cifar_image_and_policy224_a_pooled_one():
    assert _stem_input_size(InstaNASPolicy(17, 5, input_size=32), 32) == 32  # official Policy32: no pooling
    assert _stem_input_size(InstaNASPolicy(17, 5, input_size=64), 64) == 64
    assert _stem_input_size(InstaNASPolicy(17, 5, input_size=128), 128) == 64  # official Policy224: 2× pooled


def test_pool_input_is_a_named_option_either_way():
    assert _stem_input_size(InstaNASPolicy(17, 5, input_size=32, pool_input=True), 32) == 16  # our earlier default
    assert _stem_input_size(InstaNASPolicy(17, 5, input_size=128, pool_input=False), 128) == 128


def _entropy_only_optimum(entropy: str) -> torch.Tensor:
    """The controller probabilities the entropy bonus alone (every advantage 0) drives the logits to."""
    logits = torch.zeros(4, 2, 5, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    policy = torch.randint(0, 2, (4, 2, 5), generator=torch.Generator().manual_seed(0)).float()
    for _ in range(400):
        loss = policy_loss(encourage(torch.sigmoid(logits)), policy, torch.zeros(4), 0.8, entropy)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.sigmoid(logits.detach())


def test_official_entropy_bonus_pulls_options_off():
    probs = _entropy_only_optimum("plogp")  # the default
    # -p' log p' is largest at p' = 1/e, i.e. p = (1/e - 0.2) / 0.6 ≈ 0.28: the greedy policy switches options off
    torch.testing.assert_close(encourage(probs), torch.full_like(probs, 1 / math.e), atol=2e-3, rtol=0)
    assert (probs < 0.5).all()


def test_bernoulli_entropy_bonus_pulls_options_to_one_half():
    probs = _entropy_only_optimum("bernoulli")
    torch.testing.assert_close(probs, torch.full_like(probs, 0.5), atol=2e-3, rtol=0)


def test_entropy_terms_by_hand():
    p = torch.tensor([[[0.2, 0.5, 0.8]]])
    zero = torch.zeros(1)
    plogp = -(p * p.log()).sum()
    bern = plogp - ((1 - p) * (1 - p).log()).sum()
    assert policy_loss(p, torch.ones_like(p), zero, 1.0).item() == pytest.approx(-plogp.item(), rel=1e-5)
    assert policy_loss(p, torch.ones_like(p), zero, 1.0, "bernoulli").item() == pytest.approx(-bern.item(), rel=1e-5)
    assert ENTROPIES == ("plogp", "bernoulli")
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(p, p, zero, 1.0, "shannon")

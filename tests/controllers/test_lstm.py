"""The NAS-RL LSTM controller: log-probabilities, re-scoring, learning on a toy reward, and its child builders."""

from __future__ import annotations

import pytest
import torch

from lightning_nas.arch import ArchError
from lightning_nas.controllers.lstm import LSTMController
from lightning_nas.spaces.layer_tokens import LayerTokenSpace, build_child
from lightning_nas.spaces.rnn_cell import RNNCellSpace
from lightning_nas.spaces.tokens import Anchor, Token, program_from_decisions


def _space_and_controller(**kwargs) -> tuple[LayerTokenSpace, LSTMController]:
    space = LayerTokenSpace(num_layers=4, strides=[1, 2, 3])
    return space, LSTMController(space.controller_vocab(), anchors=True, **kwargs)


@pytest.mark.parametrize("tanh_constant", [None, 1.5])
def test_sample_log_prob_is_sum_of_tokens_and_matches_rescoring(tanh_constant: float | None) -> None:
    space, ctrl = _space_and_controller(tanh_constant=tanh_constant)
    program = space.controller_program()
    sample = ctrl.sample(program, torch.Generator().manual_seed(3))
    assert set(sample.arch) == set(space.decisions())
    assert sample.log_prob.requires_grad and sample.entropy.requires_grad
    torch.testing.assert_close(sample.log_prob, torch.stack(list(sample.token_log_probs.values())).sum())
    rescored = ctrl.log_prob(sample.arch, program)
    torch.testing.assert_close(rescored.log_prob, sample.log_prob)
    torch.testing.assert_close(rescored.entropy, sample.entropy)
    space.validate(sample.arch)


def test_sampling_is_reproducible_and_init_range() -> None:
    space, ctrl = _space_and_controller()
    program = space.controller_program()
    a = [ctrl.sample(program, torch.Generator().manual_seed(7)).arch for _ in range(2)]
    assert a[0] == a[1]
    assert all(p.abs().max() <= 0.08 for p in ctrl.parameters())


def test_rescoring_rejects_bad_values() -> None:
    space, ctrl = _space_and_controller()
    arch = space.sample(torch.Generator().manual_seed(0))
    with pytest.raises(ArchError, match="layer0.fh"):
        ctrl.log_prob({**arch, "layer0.fh": 4}, space.controller_program())


def test_toy_reward_raises_probability_of_rewarded_token() -> None:
    program = [Token("a", (0, 1, 2, 3), "k"), Anchor(), Token("b", (0, 1, 2, 3), "k"), Anchor(("skip",))]
    ctrl = LSTMController({"k": (0, 1, 2, 3)}, anchors=True)
    opt = torch.optim.Adam(ctrl.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)

    def p_rewarded() -> float:
        with torch.no_grad():
            return float(ctrl.log_prob({"a": 2, "b": 0, "skip": 1}, program).token_log_probs["a"].exp())

    before, baseline = p_rewarded(), 0.0
    for _ in range(60):
        samples = [ctrl.sample(program, gen) for _ in range(4)]
        rewards = torch.tensor([float(s.arch["a"] == 2) for s in samples])
        loss = -((rewards - baseline) * torch.stack([s.log_prob for s in samples])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        baseline = 0.9 * baseline + 0.1 * float(rewards.mean())
    assert p_rewarded() > max(0.6, before + 0.3)


def test_generic_program_for_rnn_cell() -> None:
    space = RNNCellSpace(base=8, num_classes=30, hidden_size=8)
    assert len(space.decisions()) == 15 * 2 + 4
    ctrl = LSTMController(space.controller_vocab())
    arch = ctrl.sample(space.controller_program(), torch.Generator().manual_seed(1)).arch
    logits, state = space.export(arch)(torch.randint(0, 30, (2, 5)))
    assert logits.shape == (2, 5, 30) and len(state) == 1
    generic = LSTMController({n: v for n, v in space.decisions().items()})
    sample = generic.sample(program_from_decisions(space.decisions()), torch.Generator().manual_seed(0))
    space.validate(sample.arch)


def _arch(n: int, skips: str, strides: bool) -> dict:
    gen = torch.Generator().manual_seed(n)
    arch = LayerTokenSpace(num_layers=n, strides=[1, 2, 3] if strides else None).sample(gen)
    for key in arch:
        if ".skip" in key and skips != "random":
            arch[key] = int(skips == "all")
    return arch


@pytest.mark.parametrize("skips", ["none", "all", "random"])
@pytest.mark.parametrize("strides", [False, True])
def test_child_builder_accepts_every_skip_pattern(skips: str, strides: bool) -> None:
    for n in (1, 2, 5):
        arch = _arch(n, skips, strides)
        net = build_child(arch, num_classes=7, in_channels=3)
        assert isinstance(net, torch.nn.Module)
        assert net(torch.randn(2, 3, 16, 16)).shape == (2, 7)
        if skips == "none":
            assert net.outputs == list(range(n))  # every layer reads the image, all go to the classifier
        if skips == "all":
            assert net.outputs == [n - 1]


def test_chain_without_skip_search_and_arch_file_round_trip(tmp_path) -> None:
    from lightning_nas import load_arch, save_arch
    from lightning_nas.modules.classification import ClassificationModule
    from lightning_nas.spaces.layer_tokens import child_from_arch_file

    space = LayerTokenSpace(num_layers=3, skip_connections=False)
    arch = space.sample(torch.Generator().manual_seed(0))
    assert space.export(arch).inputs == [[], [0], [1]]
    arch = _arch(4, "random", True)
    path = save_arch(arch, tmp_path / "best_arch.json", space="LayerTokenSpace")
    assert load_arch(path, LayerTokenSpace(num_layers=6, strides=[1, 2, 3])) == arch
    assert child_from_arch_file(path, num_classes=5)(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    module = ClassificationModule(arch=str(path), space=LayerTokenSpace(strides=[1, 2, 3]), num_classes=10)
    assert module(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(ArchError, match="layer1.stride"):
        LayerTokenSpace(strides=[1, 2, 3]).validate({**arch, "layer1.stride": 4})

"""ShuffleNetSpace (SPOS): decisions, sampling, export, validation, published figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_nas import ArchError, load_arch, save_arch
from lightning_nas.nn import Choice, DynamicBatchNorm2d, DynamicConv2d, LayerChoice
from lightning_nas.spaces import ShuffleNetSpace
from lightning_nas.spaces.published_shufflenet import arch_from_indices
from lightning_nas.spaces.registry import get_published, published_names
from lightning_nas.spaces.shufflenet import OPS, ShuffleUnit

TINY = {"width_mult": 0.25, "stage_depths": (1, 1, 2, 1), "num_classes": 10}
BITS = (2, 4, 6, 8)
SHUFFLENET_PUBLISHED = [n for n in published_names() if get_published(n).space == "ShuffleNetSpace"]


def tiny_space(input_size: int = 32, **kwargs) -> ShuffleNetSpace:
    torch.manual_seed(0)
    return ShuffleNetSpace(input_size=input_size, **{**TINY, **kwargs})


def block_names(stage_depths) -> list[str]:
    return [f"stage{s}.{b}" for s, d in enumerate(stage_depths, start=1) for b in range(d)]


# --- decisions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("channel_search", [False, True])
@pytest.mark.parametrize("bits", [None, BITS])
def test_decisions_named_and_ordered(channel_search, bits):
    space = tiny_space(channel_search=channel_search, bits=bits)
    expected = []
    for block in block_names(TINY["stage_depths"]):
        expected.append(f"{block}.op")
        if channel_search:
            expected.append(f"{block}.width")
        if bits:
            expected += [f"{block}.wbits", f"{block}.abits"]
    decisions = space.decisions()
    assert list(decisions) == expected
    assert decisions == tiny_space(channel_search=channel_search, bits=bits).decisions()  # stable across builds
    assert all(decisions[k] == list(OPS) for k in expected if k.endswith(".op"))
    assert all(decisions[k] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6] for k in expected if k.endswith(".width"))
    assert all(decisions[k] == list(BITS) for k in expected if k.endswith("bits"))


def test_full_space_decisions_and_fingerprint():
    space = ShuffleNetSpace(stage_depths=(4, 4, 8, 4), width_mult=0.25, channel_search=True)
    assert len(space.decisions()) == 40
    assert list(space.decisions())[-2:] == ["stage4.3.op", "stage4.3.width"]
    assert space.fingerprint() != ShuffleNetSpace(width_mult=0.25).fingerprint()


def test_sample_is_uniform():
    space = tiny_space(channel_search=True)
    gen = torch.Generator().manual_seed(123)
    n = 4000
    draws = [space.sample(gen) for _ in range(n)]
    for key, df_crit in (("stage2.0.op", 16.27), ("stage3.1.width", 24.32)):  # chi-square 0.999 quantiles
        values = space.decisions()[key]
        counts = [sum(d[key] == v for d in draws) for v in values]
        expected = n / len(values)
        chi2 = sum((c - expected) ** 2 / expected for c in counts)
        assert chi2 < df_crit, (key, counts)
    assert space.sample(torch.Generator().manual_seed(5)) == space.sample(torch.Generator().manual_seed(5))
    space.validate(draws[0])


def test_width_mult_and_strides():
    for size, final in ((32, 4), (64, 4), (224, 7)):
        space = tiny_space(size)
        x = torch.randn(2, 3, size, size)
        space.activate(space.sample(torch.Generator().manual_seed(0)))
        assert space.forward_features(x).shape[-1] == final
        assert space(x).shape == (2, 10)
    space = tiny_space()
    assert space.stem[0].out_channels == 8  # 16 × 0.25 = 4, rounded up to a multiple of 8
    x = space.stem(torch.randn(2, 3, 32, 32))
    widths = []
    for unit in space.features:
        x = unit(x)
        widths.append(x.shape[1])
    assert widths == [16, 40, 80, 80, 160]  # 64/160/320/640 × 0.25
    with pytest.raises(ValueError, match="widen"):
        ShuffleNetSpace(stage_channels=(64, 64, 320, 640))


# --- export --------------------------------------------------------------------------------------
EXPORT_CASES = [
    (32, False, None), (32, True, None), (32, True, BITS), (64, True, None), (64, False, (4, 8)),
    (224, True, None), (224, False, BITS),
]


@pytest.mark.parametrize(("input_size", "channel_search", "bits"), EXPORT_CASES)
def test_export_matches_supernet(input_size, channel_search, bits):
    space = tiny_space(input_size, channel_search=channel_search, bits=bits)
    gen = torch.Generator().manual_seed(input_size)
    x = torch.randn(2, 3, input_size, input_size, generator=gen)
    for _ in range(3):
        arch = space.sample(gen)
        space.train()
        space.activate(arch)
        with torch.no_grad():
            for _ in range(2):  # non-trivial BN statistics and activation ranges
                space(torch.randn(4, 3, input_size, input_size, generator=gen))
        space.eval()
        net = space.export(arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(net(x), space(x), atol=1e-5, rtol=1e-4)
        assert not any(isinstance(m, (LayerChoice, DynamicConv2d, DynamicBatchNorm2d)) for m in net.modules())
        # frozen fixed-bit quantized convs remain (they are Choice subclasses) but own no decision
        assert not any(m.choice_decisions() for m in net.modules() if isinstance(m, Choice))
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bns and all(bn.affine for bn in bns)


def test_export_plain_modules_and_torch_export():
    space = tiny_space(channel_search=True).eval()
    arch = space.sample(torch.Generator().manual_seed(3))
    net = space.export(arch).eval()
    assert not any(isinstance(m, Choice) for m in net.modules())
    assert all(isinstance(u, ShuffleUnit) and not isinstance(u.op, Choice) for u in net.features)
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(net, (x,))
    torch.testing.assert_close(program.module()(x), net(x))


def test_torch_export_quantized():
    space = tiny_space(bits=BITS)
    arch = space.sample(torch.Generator().manual_seed(4))
    space.activate(arch)
    space(torch.randn(4, 3, 32, 32))  # calibrate activation ranges
    net = space.export(arch).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.export.export(net, (x,)).module()(x), net(x))


# --- validation, gradients -----------------------------------------------------------------------
def test_validate_errors():
    space = tiny_space(channel_search=True)
    arch = space.sample(torch.Generator().manual_seed(0))
    missing = {k: v for k, v in arch.items() if k != "stage2.0.width"}
    with pytest.raises(ArchError, match=r"stage2\.0\.width.*0\.2"):
        space.validate(missing)
    with pytest.raises(ArchError, match=r"stage9\.0\.op.*shuffle3x3"):
        space.validate({**arch, "stage9.0.op": "shuffle3x3"})
    with pytest.raises(ArchError, match=r"conv9x9.*stage1\.0\.op.*xception"):
        space.validate({**arch, "stage1.0.op": "conv9x9"})
    with pytest.raises(ArchError, match=r"0\.3.*stage1\.0\.width.*1\.6"):
        space.activate({**arch, "stage1.0.width": 0.3})
    assert space.validate({**arch, "stage1.0.width": 0.6000000000001})["stage1.0.width"] == 0.6


def test_gradient_reaches_only_active_candidate():
    space = tiny_space(channel_search=True, bits=BITS)
    arch = space.sample(torch.Generator().manual_seed(1))
    space.activate(arch)
    space(torch.randn(2, 3, 32, 32)).square().mean().backward()
    for unit, block in zip(space.features, block_names(TINY["stage_depths"]), strict=True):
        for op, candidate in unit.op.candidates.items():
            grads = [p.grad for p in candidate.parameters()]
            if op == arch[f"{block}.op"]:
                assert all(g is not None for g in grads), block
            else:
                assert all(g is None for g in grads), (block, op)
    assert all(p.grad is not None for p in [*space.stem.parameters(), *space.head.parameters()])


# --- published architectures ---------------------------------------------------------------------
def conv_linear_weights(net: nn.Module) -> int:
    return sum(m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("name", SHUFFLENET_PUBLISHED)
def test_published_figures(name, tmp_path):
    entry = get_published(name)
    torch.manual_seed(0)
    space = entry.build_space()
    net = space.export(entry.arch).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, 3, 224, 224))
    macs = counter.get_total_flops() / 2
    assert macs == pytest.approx(entry.macs, rel=0.01)
    # the releases count conv and linear weights; BatchNorm affine parameters are excluded
    assert conv_linear_weights(net) == pytest.approx(entry.params, rel=0.01)
    assert sum(p.numel() for p in net.parameters()) == entry.meta["params_with_batchnorm"]
    assert load_arch(save_arch(entry.arch, tmp_path / "arch.json", space), space) == entry.arch


def test_published_registry_entries():
    assert {"spos_block_search", "spos_block_channel_search"} <= set(SHUFFLENET_PUBLISHED)
    block = get_published("spos_block_search").arch
    assert list(block.values())[:3] == ["shuffle7x7", "shuffle5x5", "shuffle3x3"] and len(block) == 20
    both = get_published("spos_block_channel_search").arch
    assert both["stage1.0.op"] == "shuffle3x3" and both["stage1.0.width"] == 1.4 and len(both) == 40
    with pytest.raises(ValueError, match="one index per block"):
        arch_from_indices([0] * 19)

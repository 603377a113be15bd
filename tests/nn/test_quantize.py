"""The two quantizers of ``lightning_nas.nn.quantize``: the official HAQ one (``"haq"``) and ours (``"ema"``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_nas.modules.quantized import apply_policy, calibrate, quantize_network
from lightning_nas.nn.quantize import (
    QuantConv2d,
    QuantLinear,
    haq_activation_range,
    haq_weight_threshold,
    kl_threshold,
    quantize_activation,
)

# 16 magnitudes, max 4: numpy's "sqrt" rule gives ceil(sqrt(16) · 4 / (4 - 0)) = 4 bins of width 1.
# Counts per bin [12, 3, 0, 1] -> cumulative c = [0.75, 0.9375, 0.9375, 1].
TAILED = torch.tensor([0.0, -0.1, 0.2, -0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 0.15, 0.25,
                       1.2, -1.5, 1.8, -4.0])


def test_kl_threshold_matches_a_hand_computation() -> None:
    """2 bits: n = 2 levels, candidates i = 3, 4 bins.

    i = 3: p = [.75, .9375, 1, 1]; p[:3] at 2 points = [.75, 1], back at 3 = [.75, .875, 1];
           q = [.75, .875, 1, 1]; d = .0625·log2(.9375/.875) − .0625·log2(.9375) = 0.012040.
    i = 4: p = c; p[:4] at 2 points = [.75, 1], back at 4 = [.75, .8333, .9167, 1];
           d = .1042·log2(.9375/.8333) + .0208·log2(.9375/.9167) = 0.018376.
    The least divergence is i = 3: threshold (3 + 0.5) bin widths = 3.5, below max|x| = 4 (the old quantizer's).
    """
    assert kl_threshold(TAILED, 2) == pytest.approx(3.5)
    for bits in (3, 4, 8):  # n + 1 > 4 bins: the official falls back to max|x|
        assert kl_threshold(TAILED, bits) == pytest.approx(4.0)
    assert kl_threshold(torch.zeros(9), 2) == 0.0


def test_kl_threshold_may_exceed_the_maximum_as_the_official_one() -> None:
    # counts [8, 4, 2, 2]: c = [.5, .75, .875, 1]; d(i=3) = .125·log2(8/7) = 0.02408,
    # d(i=4) = .0833·log2(1.125) + .0417·log2(1.05) = 0.01709 -> i = 4, threshold 4.5 bins > max|x| = 4
    x = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 1.1, 1.3, 1.5, 1.7, 2.2, 2.6, 3.5, 4.0])
    assert kl_threshold(x, 2) == pytest.approx(4.5)
    assert haq_activation_range(x, 2) == pytest.approx(4.0)  # min(6, max|x|, KL)


def test_haq_weight_threshold_per_tensor_and_kl_below_5_bits() -> None:
    assert haq_weight_threshold(TAILED, 4) == pytest.approx(4.0)  # too few bins for 8 levels
    assert haq_weight_threshold(TAILED, 2) == pytest.approx(3.5)
    w = torch.tensor([[1.0, -0.5], [0.25, 0.1]])
    assert haq_weight_threshold(w, 5) == pytest.approx(1.0)  # one threshold for the tensor


def test_haq_activation_range_is_clipped_at_6_and_kl_below_5_bits() -> None:
    big = torch.linspace(0, 10, 101)
    assert haq_activation_range(big, 8) == pytest.approx(6.0)
    assert haq_activation_range(big / 5, 5) == pytest.approx(2.0)
    assert haq_activation_range(TAILED, 2) == pytest.approx(3.5)
    # full wave (signed): the official uses b - 1 bits, so 5-bit signed inputs take the KL threshold of 4 bits
    assert haq_activation_range(TAILED, 5, signed=True) == pytest.approx(kl_threshold(TAILED, 4))


def _conv(quantizer: str, wbits: int = 2, abits: int = 2) -> QuantConv2d:
    conv = QuantConv2d(1, 2, 1, bias=False, wbits=wbits, abits=abits, quantizer=quantizer)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([4.0, 0.5]).view(2, 1, 1, 1))
    conv.weight.requires_grad_(False)
    return conv


def test_haq_layer_weights_per_tensor_with_the_calibrated_threshold() -> None:
    lin = QuantLinear(16, 1, bias=False, wbits=2, abits=32, quantizer="haq")
    with torch.no_grad():
        lin.weight.copy_(TAILED.view(1, 16))
    lin.begin_calibration()
    lin.end_calibration()
    assert float(lin.w_range) == pytest.approx(3.5)
    q = lin._quant_weight(lin.weight)
    # 2 bits: one level a side, scale 3.5; |w| >= 1.75 -> ±3.5, else 0 (the old max-abs quantizer gives ±4)
    expected = torch.where(TAILED.abs() >= 1.75, TAILED.sign() * 3.5, torch.zeros(()))
    assert torch.allclose(q, expected.view(1, 16))
    # per tensor: at 8 bits both channels share max|w| = 4; ours ("ema", per channel) keeps 0.5 exact
    conv = _conv("haq", wbits=8)
    conv.begin_calibration()
    conv.end_calibration()
    assert float(conv.w_range) == 4.0
    assert float(conv._quant_weight(conv.weight)[1].detach()) == pytest.approx(round(0.5 / (4 / 127)) * 4 / 127)
    assert float(_conv("ema", wbits=8)._quant_weight(conv.weight)[1]) == pytest.approx(0.5)


def test_haq_calibration_runs_float_and_fixes_the_range() -> None:
    conv = _conv("haq", wbits=8, abits=8)
    x = torch.rand(4, 1, 3, 3) * 10
    conv.begin_calibration()
    out = conv(x)
    conv.end_calibration()
    assert torch.equal(out, nn.functional.conv2d(x, conv.weight))  # the official calibration pass is float
    assert float(conv.act_max) == pytest.approx(6.0)  # min(6, max|x|)
    conv.train()
    conv(x * 3)
    assert float(conv.act_max) == pytest.approx(6.0)  # fixed while training (fine-tune)
    ema = _conv("ema", wbits=8, abits=8).train()
    ema(x)
    first = float(ema.act_max)
    ema(x * 3)
    assert float(ema.act_max) > first  # ours follows the batches


def test_haq_activation_gradient_is_zero_where_clipped() -> None:
    x = torch.tensor([-1.0, 0.5, 2.0, 7.0], requires_grad=True)
    quantize_activation(x, 4, torch.tensor(1.0), clip_grad=True).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0, 0.0]
    y = torch.tensor([-1.0, 0.5, 2.0, 7.0], requires_grad=True)
    quantize_activation(y, 4, torch.tensor(1.0)).sum().backward()
    assert y.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_calibrate_network_and_policy_round_trip() -> None:
    torch.manual_seed(0)
    net = quantize_network(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2)))
    for layer in net.modules():
        if isinstance(layer, (QuantConv2d, QuantLinear)):
            layer.quantizer, layer.wbits, layer.abits = "haq", 3, 4
    batch = (torch.randn(8, 3, 8, 8), torch.zeros(8, dtype=torch.long))
    calibrate(net, [batch], torch.device("cpu"))
    first, last = net[0], net[3]
    assert float(first.act_max) == pytest.approx(haq_activation_range(batch[0], 4))
    assert float(first.w_range) == pytest.approx(haq_weight_threshold(first.weight, 3))
    upstream = torch.relu(nn.functional.conv2d(batch[0], first.weight, first.bias)).flatten(1)  # float, not quantized
    assert float(last.act_max) == pytest.approx(haq_activation_range(upstream, 4))
    specs = {"0": first.quant_spec(), "3": last.quant_spec()}
    copy = quantize_network(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2)))
    apply_policy(copy, specs)
    assert copy[0].quant_spec() == specs["0"] and copy[3].quantizer == "haq"
    with pytest.raises(ValueError, match="quantizer"):
        QuantConv2d(1, 1, 1, quantizer="kmeans")

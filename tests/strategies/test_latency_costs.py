"""The cost side of ProxylessNAS's arch loss: the latency table's file name, the target, the expected cost."""

from __future__ import annotations

import pytest
import torch

from lightning_nas.errors import PrerequisiteError
from lightning_nas.strategies import CandidateCosts, cost_target, table_path


def test_table_path_fills_device_and_batch_size() -> None:
    assert table_path("t-{device}-bs{batch_size}.json", "cuda", 64) == "t-cuda-bs64.json"
    assert table_path("t-bs{batch_size}.json", None, 1) == "t-bs1.json"
    with pytest.raises(PrerequisiteError, match="cannot fill"):
        table_path("t-{device}.json", None, 1)  # {device} without a latency_device
    with pytest.raises(PrerequisiteError, match="cannot fill"):
        table_path("t-{host}.json", "cpu", 1)


def test_cost_target_is_given_or_a_fraction_of_the_range() -> None:
    assert cost_target(10.0, 30.0, "ms", 12.0, None, "mul") == 12.0
    assert cost_target(10.0, 30.0, "ms", None, 0.25, "mul") == 15.0  # the fraction wins over a given target
    assert cost_target(10.0, 30.0, "ms", 99.0, 0.25, "add") == 15.0


@pytest.mark.parametrize(("lo", "target", "fraction", "loss_type", "match"), [
    (10.0, None, None, "mul", "needs target_latency"),
    (10.0, 5.0, None, "mul", "below the space's fastest arch"),
    (10.0, None, 1.0, "mul", r"target_fraction must be in \(0, 1\)"),
    (0.5, 2.0, None, "mul", "needs costs above 1 ms"),
])
def test_cost_target_refuses(lo: float, target: float | None, fraction: float | None, loss_type: str,
                             match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cost_target(lo, 30.0, "ms", target, fraction, loss_type)
    if loss_type == "mul" and lo <= 1:
        assert cost_target(lo, 30.0, "ms", target, fraction, "add") == target  # the add loss takes any unit


def test_expected_cost_and_cost_of_one_arch() -> None:
    costs = CandidateCosts(2.0, {"a": [1.0, 3.0], "b": [10.0, 20.0, 30.0]}, "ms")
    probs = {"a": (torch.tensor([0.25, 0.75]), [0, 1]), "b": (torch.tensor([0.5, 0.5]), [1, 2])}
    assert float(costs.expected(probs)) == pytest.approx(2.0 + 0.25 + 2.25 + 10.0 + 15.0)
    assert costs.of({"a": "y", "b": "z"}, {"a": ["x", "y"], "b": ["u", "v", "z"]}) == 2.0 + 3.0 + 30.0

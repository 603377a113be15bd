"""LayerChoice's public view of its active candidate(s), and inactive_parameters beside it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_nas.nn import LayerChoice, inactive_parameters


def _choice() -> LayerChoice:
    torch.manual_seed(0)
    return LayerChoice({"a": nn.Linear(4, 4), "b": nn.Linear(4, 4), "c": nn.Identity()}, "op")


def test_active_index_and_module_follow_the_activated_key() -> None:
    choice = _choice()
    assert choice.active_index == 0 and choice.active == "a" and choice.active_module is choice.candidates["a"]
    choice.activate_choice({"op": "b"})
    assert choice.active_index == 1 and choice.active_module is choice.candidate(1) is choice.candidates["b"]
    x = torch.randn(2, 4)
    assert torch.equal(choice(x), choice.candidates["b"](x))


def test_setting_active_index_runs_that_candidate() -> None:
    choice = _choice()
    choice.active_index = 2
    assert choice.active == "c"
    x = torch.randn(3, 4)
    assert torch.equal(choice(x), x)
    with pytest.raises(IndexError, match="3 candidates"):
        choice.active_index = 3
    with pytest.raises(IndexError):
        choice.active_index = -1


def test_per_sample_setting_has_no_single_active_module() -> None:
    choice = _choice()
    choice.active_index = torch.tensor([0, 2, 1])
    assert isinstance(choice.active_index, torch.Tensor) and choice.active_index.dtype == torch.long
    with pytest.raises(RuntimeError, match="per-sample"):
        _ = choice.active_module
    x = torch.randn(3, 4)
    expected = torch.stack([choice.candidate(0)(x[0]), x[1], choice.candidate(1)(x[2])])
    torch.testing.assert_close(choice(x), expected)


def test_inactive_parameters_are_the_candidates_off_the_path() -> None:
    first, second = _choice(), _choice()
    first.activate_choice({"op": "a"})
    second.active_index = torch.tensor([0, 1])  # per-sample: skipped, several candidates run
    cache: dict[tuple[int, int], list[nn.Parameter]] = {}
    off = inactive_parameters([first, nn.ReLU(), second], cache)
    assert {id(p) for p in off} == {id(p) for p in first.candidates["b"].parameters()}
    assert list(cache) == [(id(first), 0)]
    first.activate_choice({"op": "c"})  # parameter-free candidate: every parameter is off the path
    off = inactive_parameters([first], cache)
    assert {id(p) for p in off} == {id(p) for p in first.parameters()}
    assert len(cache) == 2


def test_inactive_parameters_reuses_its_cache() -> None:
    choice = _choice()
    cache: dict[tuple[int, int], list[nn.Parameter]] = {(id(choice), 0): []}  # a stale entry wins: it is a cache
    assert inactive_parameters([choice], cache) == []

"""The path-policy seam: how PathSampling finds a module's own path sampler."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from lightning_nas.strategies import SAMPLE_PATH, draw_path, path_sampler


class Declares(nn.Module):
    def sample_path(self, generator: torch.Generator) -> dict[str, Any] | None:
        return {"op": int(torch.randint(3, (1,), generator=generator))}


class Sampler(nn.Module):
    """A callable submodule: ``nn.Module.__getattr__`` serves it, which ``getattr_static`` would not see."""

    def forward(self, generator: torch.Generator) -> dict[str, Any]:
        return {"op": "from-submodule"}


class HoldsSubmodule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sample_path = Sampler()


class NotCallable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer(SAMPLE_PATH, torch.zeros(1))


class ReturnsList(nn.Module):
    def sample_path(self, generator: torch.Generator) -> Any:
        return ["op", 1]


def test_a_module_without_the_method_leaves_the_path_to_path_sampling() -> None:
    assert SAMPLE_PATH == "sample_path"
    assert path_sampler(nn.Linear(2, 2)) is None
    assert draw_path(nn.Linear(2, 2), torch.Generator()) is None


def test_the_method_draws_from_the_given_generator() -> None:
    module = Declares()
    assert path_sampler(module) == module.sample_path
    first = draw_path(module, torch.Generator().manual_seed(5))
    assert first == draw_path(module, torch.Generator().manual_seed(5))


def test_a_sampler_served_by_nn_module_getattr_is_found() -> None:
    assert draw_path(HoldsSubmodule(), torch.Generator()) == {"op": "from-submodule"}


def test_a_non_callable_member_is_refused() -> None:
    with pytest.raises(TypeError, match="NotCallable.sample_path is a Tensor"):
        path_sampler(NotCallable())


def test_a_sampler_returning_no_arch_is_refused() -> None:
    with pytest.raises(TypeError, match="returned a list"):
        draw_path(ReturnsList(), torch.Generator())

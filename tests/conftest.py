"""Test-wide settings: one torch thread (tiny ops, shared cores) and W&B never online."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny test tensors gain nothing from threads, and two busy cores thrash under OpenMP spinning
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

"""Search spaces: supernets with one interface for every method."""

from lightning_nas.spaces.base import SearchSpace, SubNetwork

__all__ = ["SearchSpace", "SubNetwork"]

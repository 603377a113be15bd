"""Search spaces: supernets with one interface for every method."""

from lightning_nas.spaces.base import SearchSpace, SubNetwork
from lightning_nas.spaces.mobilenet import MobileNetSpace
from lightning_nas.spaces.shufflenet import ShuffleNetSpace
from lightning_nas.spaces import published_shufflenet  # noqa: F401,E402  (registers the SPOS archs)
from lightning_nas.spaces import published_mobilenet  # noqa: F401,E402  (registers MobileNetV2, ProxylessNAS)

__all__ = ["MobileNetSpace", "SearchSpace", "ShuffleNetSpace", "SubNetwork"]

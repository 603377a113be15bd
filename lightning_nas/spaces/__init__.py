"""Search spaces: supernets with one interface for every method."""

from lightning_nas.spaces import published_mobilenet, published_shufflenet  # noqa: F401  (register published archs)
from lightning_nas.spaces.base import SearchSpace, SubNetwork
from lightning_nas.spaces.darts import DartsCellSpace, DartsNetwork
from lightning_nas.spaces.instanas import InstaNASSpace
from lightning_nas.spaces.layer_tokens import LayerTokenSpace
from lightning_nas.spaces.mobilenet import MobileNetSpace
from lightning_nas.spaces.rnn_cell import RNNCellSpace
from lightning_nas.spaces.shufflenet import ShuffleNetSpace
from lightning_nas.spaces.token_space import TokenSpace

__all__ = ["DartsCellSpace", "DartsNetwork", "InstaNASSpace", "LayerTokenSpace", "MobileNetSpace", "RNNCellSpace",
           "SearchSpace", "ShuffleNetSpace", "SubNetwork", "TokenSpace"]

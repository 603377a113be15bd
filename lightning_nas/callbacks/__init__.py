"""Loop-level behaviour of the searches: each callback usable on its own and stateful."""

from lightning_nas.callbacks.alternating_epochs import AlternatingEpochs
from lightning_nas.callbacks.arch_logger import ArchLogger
from lightning_nas.callbacks.child_recorder import ChildRecorder
from lightning_nas.callbacks.evolution_search import EvolutionSearch
from lightning_nas.callbacks.path_sampling import PathSampling

__all__ = ["AlternatingEpochs", "ArchLogger", "ChildRecorder", "EvolutionSearch", "PathSampling"]

"""lightning_nas: neural architecture search as PyTorch Lightning plugins."""

from lightning_nas.arch import Arch, ArchError, load_arch, save_arch

__version__ = "0.1.0"

__all__ = ["Arch", "ArchError", "__version__", "load_arch", "save_arch"]

"""One LightningModule per method, and the classifier that retrains what they find."""

from lightning_nas.modules.classification import ClassificationModule
from lightning_nas.modules.proxyless import ProxylessModule
from lightning_nas.modules.spos import SPOSModule

__all__ = ["ClassificationModule", "ProxylessModule", "SPOSModule"]

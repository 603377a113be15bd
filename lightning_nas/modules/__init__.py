"""One LightningModule per method, and the classifier that retrains what they find."""

from lightning_nas.modules.classification import ClassificationModule
from lightning_nas.modules.haq import HAQModule
from lightning_nas.modules.instanas import InstaNASModule
from lightning_nas.modules.nasrl import NASRLModule
from lightning_nas.modules.nasrl_data import NASRLData
from lightning_nas.modules.parsec import PARSECModule
from lightning_nas.modules.proxyless import ProxylessModule
from lightning_nas.modules.quantized import QuantizedNetwork
from lightning_nas.modules.spos import SPOSModule

__all__ = ["ClassificationModule", "HAQModule", "InstaNASModule", "NASRLData", "NASRLModule", "PARSECModule",
           "ProxylessModule", "QuantizedNetwork", "SPOSModule"]

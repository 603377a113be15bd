"""Controllers that emit architectures: NAS-RL's LSTM, HAQ's DDPG agent, InstaNAS's policy network."""

from lightning_nas.controllers.ddpg import DDPG
from lightning_nas.controllers.instanas_policy import InstaNASPolicy
from lightning_nas.controllers.lstm import ControllerSample, LSTMController

__all__ = ["DDPG", "ControllerSample", "InstaNASPolicy", "LSTMController"]

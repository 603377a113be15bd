"""Choice modules: the building blocks of every supernet."""

from lightning_nas.nn.choice import Choice, affine_batchnorm, freeze_module
from lightning_nas.nn.dynamic import ChannelChoice, DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, scaled_channels
from lightning_nas.nn.input_choice import FixedInputs, InputChoice
from lightning_nas.nn.layer_choice import LayerChoice, inactive_parameters
from lightning_nas.nn.quantize import (
    FLOAT_BITS,
    BitChoice,
    QuantConv2d,
    QuantLinear,
    quantize_activation,
    quantize_weight,
)

__all__ = [
    "FLOAT_BITS",
    "BitChoice",
    "ChannelChoice",
    "Choice",
    "DynamicBatchNorm2d",
    "DynamicConv2d",
    "DynamicLinear",
    "FixedInputs",
    "InputChoice",
    "LayerChoice",
    "QuantConv2d",
    "QuantLinear",
    "affine_batchnorm",
    "freeze_module",
    "inactive_parameters",
    "quantize_activation",
    "quantize_weight",
    "scaled_channels",
]

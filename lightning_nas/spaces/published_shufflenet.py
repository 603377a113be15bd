"""The architectures released with SPOS, expressed in :class:`ShuffleNetSpace`.

The official code writes an arch as one op index per block (0–3 = ``shuffle3x3``,
``shuffle5x5``, ``shuffle7x7``, ``xception``) and, for channel search, one index into the
scale list ``0.2 … 1.6`` per block. Figures are those of the releases at 224 px:

- block search: megvii-model/SinglePathOneShot ``README.md`` (323M FLOPs, 3.5M params, top-1
  error 25.6%), arch ``(2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)``, all scales 1.0
  (``src/Evaluation/template/train.py``);
- block + channel search: megvii-model/ShuffleNet-Series ``OneShot/README.md`` (328M, 3.4M, top-1
  error 25.4%), arch and scale indices in ``OneShot/train.py``.

"FLOPs" there are multiply-accumulates of the convs and the classifier, which our
``FlopCounterMode`` count (FLOPs / 2) reproduces within 0.05%. The released "#Params" count the
conv and linear weights only: with the affine BatchNorm parameters of the retrained network
the block-search net has 3.558M parameters, which would round to 3.6M, not 3.5M. Both counts
are recorded: ``params`` is the released figure, ``meta["params_with_batchnorm"]`` ours with BN.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_nas.arch import Arch
from lightning_nas.spaces.registry import PublishedArch, register_published
from lightning_nas.spaces.shufflenet import OPS

__all__ = ["SPOS_SCALES", "arch_from_indices"]

SPOS_SCALES = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6)
SPOS_STAGE_DEPTHS = (4, 4, 8, 4)
PARAMS_COUNTING = "conv and linear weights; BatchNorm affine parameters excluded"


def arch_from_indices(
    op_ids: Sequence[int], scale_ids: Sequence[int] | None = None, stage_depths: Sequence[int] = SPOS_STAGE_DEPTHS,
    scales: Sequence[float] = SPOS_SCALES,
) -> Arch:
    """Convert the official index lists to an arch of :class:`ShuffleNetSpace`.

    Args:
        op_ids: one op index per block, input to output (0–3 as in the official code).
        scale_ids: one index into ``scales`` per block (channel search), or ``None``.
        stage_depths: blocks per stage.
        scales: the official channel scale list.
    """
    names = [f"stage{s}.{b}" for s, depth in enumerate(stage_depths, start=1) for b in range(depth)]
    if len(op_ids) != len(names) or (scale_ids is not None and len(scale_ids) != len(names)):
        raise ValueError(f"give one index per block ({len(names)} blocks)")
    arch: Arch = {}
    for i, prefix in enumerate(names):
        arch[f"{prefix}.op"] = OPS[op_ids[i]]
        if scale_ids is not None:
            arch[f"{prefix}.width"] = scales[scale_ids[i]]
    return arch


SPOS_BLOCK_SEARCH = register_published(PublishedArch(
    name="spos_block_search",
    space="ShuffleNetSpace",
    space_kwargs={"num_classes": 1000, "input_size": 224},
    arch=arch_from_indices((2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3)),
    macs=323e6,
    params=3.5e6,
    top1=74.4,
    source="Guo et al., ECCV 2020, arXiv 1904.00420; megvii-model/SinglePathOneShot README.md",
    meta={"params_counting": PARAMS_COUNTING, "params_with_batchnorm": 3_558_464, "top5": 92.0},
))

SPOS_BLOCK_CHANNEL_SEARCH = register_published(PublishedArch(
    name="spos_block_channel_search",
    space="ShuffleNetSpace",
    space_kwargs={"num_classes": 1000, "input_size": 224, "channel_search": True},
    arch=arch_from_indices(
        (0, 0, 3, 1, 1, 1, 0, 0, 2, 0, 2, 1, 1, 0, 2, 0, 2, 1, 3, 2),
        (6, 5, 3, 5, 2, 6, 3, 4, 2, 5, 7, 5, 4, 6, 7, 4, 4, 5, 4, 3),
    ),
    macs=328e6,
    params=3.4e6,
    top1=74.6,
    source="Guo et al., ECCV 2020, arXiv 1904.00420; megvii-model/ShuffleNet-Series OneShot/README.md",
    meta={"params_counting": PARAMS_COUNTING, "params_with_batchnorm": 3_432_579, "top5": 92.0},
))

"""Published architectures of :class:`~lightning_nas.spaces.MobileNetSpace`: MobileNetV2 and ProxylessNAS.

The ProxylessNAS nets are the released ``proxyless_{gpu,cpu,mobile}.config`` files of
mit-han-lab/proxylessnas, as re-expressed per stage in osmr/imgclsmob's ``proxylessnas.py``
(kernel, expansion and whether each block is kept). The release widens the space per target: each
net is built in a ``MobileNetSpace`` configured to its widths. Their MACs and parameters are the
ones the official evaluation logs print (``logs/imagenet_{gpu,cpu,mobile}_log.txt``: "Total FLOPs",
conv + linear multiply-accumulates, and "Total training params", classifier included), top-1 the
paper's (arXiv 1812.00332, Tables 2 and 3; the logs give 75.08 / 75.29 / 74.59).
"""

from __future__ import annotations

from lightning_nas.arch import Arch
from lightning_nas.spaces.registry import PublishedArch, register_published

__all__ = ["MOBILENET_V2", "PROXYLESS_CPU", "PROXYLESS_GPU", "PROXYLESS_MOBILE"]


def _arch(*stages: str) -> Arch:
    """An arch from one space-separated string of block ops per stage, input to output."""
    ops = [op for stage in stages for op in stage.split()]
    return {f"blocks.{i}.op": op for i, op in enumerate(ops)}


MOBILENET_V2 = register_published(PublishedArch(
    name="mobilenet_v2",
    space="MobileNetSpace",
    space_kwargs=dict(stage_channels=(24, 32, 64, 96, 160, 320), stage_depths=(2, 3, 4, 3, 3, 1)),
    arch=_arch("k3_e6 k3_e6", "k3_e6 k3_e6 k3_e6", "k3_e6 k3_e6 k3_e6 k3_e6", "k3_e6 k3_e6 k3_e6",
               "k3_e6 k3_e6 k3_e6", "k3_e6"),
    macs=300e6,
    params=3_504_872,
    top1=72.0,
    source="Sandler et al., MobileNetV2, CVPR 2018 (arXiv 1801.04381), Table 4: 300M MACs, 72.0% top-1; "
           "params as torchvision's mobilenet_v2 (3,504,872; the paper rounds to 3.4M).",
))

PROXYLESS_GPU = register_published(PublishedArch(
    name="proxyless_gpu",
    space="MobileNetSpace",
    space_kwargs=dict(stem_channels=40, first_block_channels=24, stage_channels=(32, 56, 112, 128, 256, 432),
                      head_channels=1728, dropout=0.3),
    arch=_arch("k5_e3 zero zero zero", "k7_e3 zero zero k3_e3", "k7_e6 zero zero k5_e3", "k5_e6 zero k3_e3 k5_e3",
               "k7_e6 k7_e6 k7_e6 k5_e6", "k7_e6"),
    macs=465.3e6,
    params=7.12e6,
    top1=75.1,
    source="Cai et al., ProxylessNAS, ICLR 2019 (arXiv 1812.00332); released proxyless_gpu.config; MACs and "
           "params from mit-han-lab/proxylessnas logs/imagenet_gpu_log.txt (osmr/imgclsmob counts 7,119,848).",
))

PROXYLESS_CPU = register_published(PublishedArch(
    name="proxyless_cpu",
    space="MobileNetSpace",
    space_kwargs=dict(stem_channels=40, first_block_channels=24, stage_channels=(32, 48, 88, 104, 216, 360),
                      head_channels=1432, dropout=0.2),
    arch=_arch("k3_e6 k3_e3 k3_e3 k3_e3", "k3_e6 k3_e3 k3_e3 k5_e3", "k3_e6 zero zero k3_e3",
               "k5_e6 k3_e3 k3_e3 k3_e3", "k5_e6 k5_e3 k5_e3 k3_e3", "k5_e6"),
    macs=439.2e6,
    params=4.36e6,
    top1=75.3,
    source="Cai et al., ProxylessNAS, ICLR 2019 (arXiv 1812.00332); released proxyless_cpu.config; MACs and "
           "params from mit-han-lab/proxylessnas logs/imagenet_cpu_log.txt (osmr/imgclsmob counts 4,361,648).",
))

PROXYLESS_MOBILE = register_published(PublishedArch(
    name="proxyless_mobile",
    space="MobileNetSpace",
    space_kwargs=dict(stage_channels=(32, 40, 80, 96, 192, 320), dropout=0.1),
    arch=_arch("k5_e3 k3_e3 zero zero", "k7_e3 k3_e3 k5_e3 k5_e3", "k7_e6 k5_e3 k5_e3 k5_e3",
               "k5_e6 k5_e3 k5_e3 k5_e3", "k7_e6 k7_e6 k7_e3 k7_e3", "k7_e6"),
    macs=320.4e6,
    params=4.08e6,
    top1=74.6,
    source="Cai et al., ProxylessNAS, ICLR 2019 (arXiv 1812.00332); released proxyless_mobile.config; MACs and "
           "params from mit-han-lab/proxylessnas logs/imagenet_mobile_log.txt (osmr/imgclsmob counts 4,080,512).",
))

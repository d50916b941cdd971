"""MLTN: the Table-1 3D multi-task row (nodule segmentation + malignancy classification).

The comparison paper names MLTN as a 3D multi-task network for both tasks without giving its
design, and we found no public code. We build the standard member of that family (as in
Wu et al., ISBI 2018, "Joint learning for pulmonary nodule segmentation, attributes and
malignancy prediction", and the multi-task U-Nets that followed): a 3D U-Net-shaped
network whose *shared encoder* feeds (a) a decoder with skip connections for the mask and
(b) a classification branch on the bottleneck (global average pooling, linear layer). It is
built from MONAI's dynamic-UNet blocks (:class:`~monai.networks.blocks.UnetResBlock` for the
encoder, :class:`~monai.networks.blocks.UnetUpBlock` for the decoder, instance norm,
leaky ReLU). Each time point is processed with shared weights; the bottleneck vectors are
averaged over time points before the head (:class:`baselines._common.MultiTaskPerTimepoint`).

Deviation (footnote): reconstructed design (re-impl.); no attribute-prediction branch (the
cohort has no per-nodule attribute labels for every scan).

At the cpu preset its training steps run under bf16 autocast (``Recipe.cpu_bf16``). Evidence
(development cohort DEV, ``mstnet run mltn --data DEV --preset cpu --folds 0,1 [--set
cpu_bf16=true]``, each fold's selected weights on its own inner-validation patients, 96 scans
and 48 patients; on this machine's Xeon with AMX): training time per fold 100 s -> 54 s; crop Dice
0.435 -> 0.485, AUC 0.873 -> 0.841 (unmirrored): no systematic loss within the run-to-run noise of
48 patients, at half the cost. One training step at the cpu preset (batch 2, one thread,
fp32 -> bf16): MLTN 0.200 -> 0.111 s; MST-Net 0.183 -> 0.146 s and its DEV folds' Dice 0.509 ->
0.495 (AUC 0.927 -> 0.929), UNETR 0.146 -> 0.147 s, ACSNet 0.157 -> 0.147 s: kept in float32.
On a CPU without AVX-512 BF16 or AMX, bf16 runs emulated and about ten times slower, so there the
steps stay float32, with a warning in the log and a footnote saying so
(:func:`mstnet.experiments.training.cpu_bf16_steps`).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.blocks import UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import Tensor, nn

from baselines._common import SEGMENTATION_CLASSES, MultiTaskPerTimepoint, preset_settings, register_multitask_row
from mstnet.experiments.registry import ModelContext

NORM = "instance"


class MultiTaskUNet3d(nn.Module):
    """Shared 3D encoder, mask decoder and pooled bottleneck:
    (N, 1, D, H, W) -> ((N, 1, D, H, W) logits, (N, C_bottleneck) pooled feature).

    Args:
        widths: channels per encoder level, the last being the bottleneck, e.g. (8, 16, 32, 64).
        strides: downsampling stride entering each level after the first, one (d, h, w) per
            level; the default keeps depth at stride 1 on the first step (thin crops).

    Example::

        net = MultiTaskUNet3d(widths=(8, 16, 32), strides=((1, 2, 2), (2, 2, 2)))
        logits, pooled = net(torch.randn(2, 1, 16, 64, 64))  # [2, 1, 16, 64, 64], [2, 32]
    """

    def __init__(self, widths: Sequence[int], strides: Sequence[Sequence[int]]) -> None:
        super().__init__()
        if len(strides) != len(widths) - 1:
            raise ValueError(f"need {len(widths) - 1} strides for {len(widths)} levels, got {len(strides)}")
        self.encoders = nn.ModuleList([UnetResBlock(3, 1, widths[0], kernel_size=3, stride=1, norm_name=NORM)])
        for in_channels, out_channels, stride in zip(widths[:-1], widths[1:], strides):
            self.encoders.append(UnetResBlock(3, in_channels, out_channels, kernel_size=3, stride=tuple(stride),
                                              norm_name=NORM))
        self.decoders = nn.ModuleList([
            UnetUpBlock(3, in_channels, out_channels, kernel_size=3, stride=1, upsample_kernel_size=tuple(stride),
                        norm_name=NORM)
            for in_channels, out_channels, stride in zip(reversed(widths[1:]), reversed(widths[:-1]), reversed(strides))
        ])
        self.output = UnetOutBlock(3, widths[0], SEGMENTATION_CLASSES)
        self.feature_channels = widths[-1]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        bottleneck = skips.pop()
        x = bottleneck
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        return self.output(x), bottleneck.mean(dim=(2, 3, 4))


MLTN_PRESETS = {
    "tiny": {"widths": (4, 8, 16), "strides": ((1, 2, 2), (2, 2, 2))},
    "cpu": {"widths": (4, 16, 32, 64), "strides": ((1, 2, 2), (2, 2, 2), (2, 2, 2))},
    "paper": {"widths": (32, 64, 128, 256, 320), "strides": ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))},
}


@register_multitask_row(
    "mltn",
    description="MLTN: 3D multi-task U-Net (shared encoder, mask decoder, bottleneck classification branch), "
                "each time point with shared weights.",
    table_row="MLTN",
    weight_decay=1e-5,
    cpu_bf16=True,
    footnote="(re-impl.) design not published; standard 3D multi-task U-Net (MONAI blocks), "
             "classification on the time-averaged bottleneck.",
)
def build_mltn(context: ModelContext) -> nn.Module:
    """MLTN for ``context``."""
    settings = preset_settings("mltn", MLTN_PRESETS, context)
    network = MultiTaskUNet3d(**settings)
    divisor = [1, 1, 1]
    for stride in settings["strides"]:
        divisor = [d * s for d, s in zip(divisor, stride)]
    return MultiTaskPerTimepoint(network, network.feature_channels, spatial_dims=3, size_divisor=tuple(divisor))

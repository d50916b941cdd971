"""ACSNet (Zhang et al., MICCAI 2020, "Adaptive Context Selection for Polyp Segmentation";
code github.com/ReaFly/ACSNet): the Table-1 multi-task 2D row.

What is followed: a ResNet encoder (five stages E1..E5 at strides 2..32) and a five-stage
decoder with
- *local context attention* (LCA) on every skip connection: the previous decoder stage's side
  prediction p gives the attention ``a = 1 - |sigmoid(p) - 0.5| / 0.5`` (high where the
  prediction is uncertain), and the skip feature becomes ``x * a + x``;
- a *global context module* (GCM) on E5: a global-average-pooling branch and pyramid pooling
  branches (adaptive pooling to 3 x 3 and 5 x 5) next to an identity branch, concatenated and
  fused, then projected and upsampled to every decoder stage;
- *adaptive selection modules* (ASM): the decoder feature (through a non-local block at the
  two coarsest stages), the LCA output and the GCM output are concatenated and re-weighted per
  channel by squeeze-and-excitation before the next decoder block;
- a side prediction (1 x 1 conv) after every decoder stage, the last being the mask.

Attached for the table's classification columns: every slice's E5 feature is globally average
pooled; the vectors are averaged over slices and time points (a global average pool over the
whole longitudinal stack) and a linear layer gives the malignancy logits
(:class:`baselines._common.MultiTaskPerTimepoint`). The network runs slice by slice on every
time point; slices are stacked back to 3D.

Deviations (footnote): a ResNet-34 encoder at ``paper`` but a narrow ResNet (one basic block
per stage) at ``cpu``, trained from scratch (no ImageNet weights); the harness's loss sees only
the final prediction (no deep supervision on the side outputs); non-local blocks only at the two
coarsest decoder stages (full-resolution non-local attention does not fit in memory at 512^2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from baselines._common import SEGMENTATION_CLASSES, MultiTaskPerTimepoint, preset_settings, register_multitask_row
from mstnet.experiments.registry import ModelContext

ACSNET_SIZE_DIVISOR = 32
"""The encoder halves the resolution five times."""


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def local_context_attention(skip: Tensor, previous_prediction: Tensor) -> Tensor:
    """LCA: ``skip * a + skip`` with ``a = 1 - |sigmoid(p) - 0.5| / 0.5``, p resized to ``skip``.

    ``skip`` (N, C, H, W), ``previous_prediction`` (N, 1, h, w) logits -> (N, C, H, W).
    """
    p = F.interpolate(previous_prediction, size=skip.shape[2:], mode="bilinear", align_corners=False)
    attention = 1.0 - (torch.sigmoid(p) - 0.5).abs() / 0.5
    return skip * attention + skip


class ResNetEncoder2d(nn.Module):
    """ResNet trunk with basic blocks: (N, 1, H, W) -> [E1 .. E5] at strides 2, 4, 8, 16, 32.

    Args:
        widths: channels of E1 (the 7 x 7 stem) and of the four residual stages.
        blocks: basic blocks per residual stage ((3, 4, 6, 3) = ResNet-34).
    """

    def __init__(self, widths: Sequence[int], blocks: Sequence[int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        width = widths[0]
        for index, (out_channels, n) in enumerate(zip(widths[1:], blocks)):
            stride = 1 if index == 0 else 2
            layers = []
            for block in range(n):
                downsample = None
                if block == 0 and (stride != 1 or width != out_channels):
                    downsample = nn.Sequential(nn.Conv2d(width, out_channels, 1, stride=stride, bias=False),
                                               nn.BatchNorm2d(out_channels))
                layers.append(BasicBlock(width, out_channels, stride=stride if block == 0 else 1, downsample=downsample))
                width = out_channels
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        e1 = self.stem(x)
        features = [e1]
        x = self.pool(e1)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class GlobalContextModule(nn.Module):
    """GCM: pooled branches (global, 3 x 3, 5 x 5) + identity on E5, fused, then one projection
    per decoder stage: E5 (N, C5, h, w) -> list of (N, C_i, H_i, W_i) for the given sizes."""

    def __init__(self, in_channels: int, out_channels: Sequence[int], pool_sizes: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        branch = max(in_channels // 4, 4)
        self.pool_sizes = tuple(pool_sizes)
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, branch, 1) for _ in range(len(pool_sizes) + 1)])
        self.fuse = conv_bn_relu(branch * (len(pool_sizes) + 1), in_channels)
        self.projections = nn.ModuleList([conv_bn_relu(in_channels, c) for c in out_channels])

    def forward(self, e5: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        size = e5.shape[2:]
        parts = [self.branches[0](e5)]
        for pool_size, conv in zip(self.pool_sizes, self.branches[1:]):
            pooled = conv(F.adaptive_avg_pool2d(e5, pool_size))
            parts.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False))
        fused = self.fuse(torch.cat(parts, dim=1))
        return [F.interpolate(projection(fused), size=s, mode="bilinear", align_corners=False)
                for projection, s in zip(self.projections, sizes)]


class NonLocalBlock2d(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al., CVPR 2018): (N, C, H, W) -> same, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.theta, self.phi, self.g = (nn.Conv2d(channels, inner, 1) for _ in range(3))
        self.out = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)
        key = self.phi(x).flatten(2)
        value = self.g(x).flatten(2).transpose(1, 2)
        attended = torch.softmax(query @ key, dim=-1) @ value
        return x + self.out(attended.transpose(1, 2).reshape(n, -1, h, w))


class AdaptiveSelectionModule(nn.Module):
    """ASM: SE re-weighting of concat(LCA output, decoder feature (non-local), GCM output).

    Output channels: ``skip + decoder + context`` (the concatenation, re-weighted).
    """

    def __init__(self, skip_channels: int, decoder_channels: int, context_channels: int, non_local: bool,
                 reduction: int = 4) -> None:
        super().__init__()
        total = skip_channels + decoder_channels + context_channels
        self.non_local = NonLocalBlock2d(decoder_channels) if non_local else nn.Identity()
        self.squeeze_excitation = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(total, max(total // reduction, 1), 1), nn.ReLU(inplace=True),
            nn.Conv2d(max(total // reduction, 1), total, 1), nn.Sigmoid())

    def forward(self, local: Tensor, decoder: Tensor, context: Tensor) -> Tensor:
        joined = torch.cat([local, self.non_local(decoder), context], dim=1)
        return joined * self.squeeze_excitation(joined)


class DecoderBlock(nn.Module):
    """Two conv-BN-ReLU layers, then x2 bilinear upsampling; plus a 1 x 1 side prediction."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))
        self.side = nn.Conv2d(out_channels, SEGMENTATION_CLASSES, 1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = F.interpolate(self.body(x), size=size, mode="bilinear", align_corners=False)
        return x, self.side(x)


class ACSNet(nn.Module):
    """ACSNet on slices: (N, 1, H, W) -> ((N, 1, H, W) logits, (N, C5) pooled E5 feature).

    Args:
        widths: encoder widths (E1 stem, then four stages), e.g. (64, 64, 128, 256, 512).
        blocks: basic blocks per encoder stage ((3, 4, 6, 3) = ResNet-34).
        non_local_stages: how many of the coarsest ASMs use a non-local block (2).

    Example::

        net = ACSNet(widths=(8, 8, 16, 32, 64), blocks=(1, 1, 1, 1))
        logits, pooled = net(torch.randn(4, 1, 64, 64))  # [4, 1, 64, 64], [4, 64]
    """

    def __init__(self, widths: Sequence[int], blocks: Sequence[int], non_local_stages: int = 2) -> None:
        super().__init__()
        if len(widths) != 5 or len(blocks) != 4:
            raise ValueError("ACSNet needs 5 encoder widths (stem + 4 stages) and 4 block counts")
        self.encoder = ResNetEncoder2d(widths, blocks)
        skips = list(widths[:4])  # E1..E4, coarse-to-fine order below
        self.gcm = GlobalContextModule(widths[4], out_channels=list(reversed(skips)))
        self.decoder5 = DecoderBlock(widths[4], widths[3])
        self.asms = nn.ModuleList()
        self.decoders = nn.ModuleList()
        decoder_width = widths[3]
        for index, skip in enumerate(reversed(skips)):
            self.asms.append(AdaptiveSelectionModule(skip, decoder_width, skip, non_local=index < non_local_stages))
            out_width = skips[max(len(skips) - index - 2, 0)]
            self.decoders.append(DecoderBlock(2 * skip + decoder_width, out_width))
            decoder_width = out_width
        self.feature_channels = widths[4]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        e1, e2, e3, e4, e5 = self.encoder(x)
        skips = [e4, e3, e2, e1]
        targets = [e3.shape[2:], e2.shape[2:], e1.shape[2:], x.shape[2:]]
        contexts = self.gcm(e5, [s.shape[2:] for s in skips])
        decoded, prediction = self.decoder5(e5, e4.shape[2:])
        for skip, context, asm, decoder, target in zip(skips, contexts, self.asms, self.decoders, targets):
            selected = asm(local_context_attention(skip, prediction), decoded, context)
            decoded, prediction = decoder(selected, target)
        return prediction, e5.mean(dim=(2, 3))


ACSNET_PRESETS = {
    "tiny": {"widths": (4, 4, 8, 8, 16), "blocks": (1, 1, 1, 1)},
    "cpu": {"widths": (8, 16, 32, 64, 128), "blocks": (1, 1, 1, 1)},
    "paper": {"widths": (64, 64, 128, 256, 512), "blocks": (3, 4, 6, 3)},
}


@register_multitask_row(
    "acsnet",
    description="ACSNet: 2D encoder-decoder with local context attention, global context module and adaptive "
                "selection, slice by slice; classification head on pooled deepest features.",
    table_row="ACSNet",
    weight_decay=1e-4,
    footnote="(re-impl.) 2D per slice; classification head added (pooled E5 over slices and time points); "
             "no deep supervision; from scratch; cpu preset uses a narrow ResNet encoder.",
)
def build_acsnet(context: ModelContext) -> nn.Module:
    """ACSNet for ``context``: per slice and time point, plus the malignancy head."""
    network = ACSNet(**preset_settings("acsnet", ACSNET_PRESETS, context))
    return MultiTaskPerTimepoint(network, network.feature_channels, spatial_dims=2, size_divisor=ACSNET_SIZE_DIVISOR)

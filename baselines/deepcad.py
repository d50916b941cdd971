"""DeepCAD: the Table-1 classification row, re-implemented as a 3D dual path network (DPN).

The MST-Net and CSF-Net papers compare against "DeepCAD" without describing it. The deep
lung-CAD system of this family with a public classifier is DeepLung (Zhu et al., WACV 2018,
"DeepLung: Deep 3D dual path nets for automated pulmonary nodule detection and
classification"), whose nodule classifier is a 3D dual path network (Chen et al., NeurIPS
2017): each block has a bottleneck (1 x 1 x 1 conv, grouped 3 x 3 x 3 conv, 1 x 1 x 1 conv)
whose output is split into a *residual* part, added to the residual path (ResNet-style
feature re-use), and a *dense* part, concatenated to the densely connected path
(DenseNet-style feature exploration). We follow that design: stem, DPN stages with a
projection block at each stage start, global average pooling, linear classifier.

Deviations (footnote): DeepLung's gradient-boosting stage on DPN features (plus nodule size
and raw pixels) is replaced by the network's own linear head; widths are scaled per preset.
Input: the latest scan only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from baselines._common import MALIGNANCY_CLASSES, register_latest_scan_classifier


def bn_relu_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Pre-activation convolution, as in DPN: BN, ReLU, conv."""
    return nn.Sequential(nn.BatchNorm3d(in_channels), nn.ReLU(inplace=True),
                         nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                                   groups=groups, bias=False))


class DualPathBlock3d(nn.Module):
    """One DPN block on the pair (residual path [B, R, ...], dense path [B, E, ...]).

    Returns (residual + new residual part [B, R, ...], concat(dense, new dense part) [B, E + k, ...]).
    A projection block (``project=True``) first maps the concatenated input to fresh residual and
    dense paths with a 1 x 1 x 1 conv (stride ``stride``), as at the start of every DPN stage.

    Args:
        in_channels: R + E of the input (their concatenation).
        bottleneck: width of the grouped 3 x 3 x 3 convolution.
        residual_channels: R of the output.
        dense_increment: k, channels added to the dense path.
        groups: groups of the 3 x 3 x 3 convolution (must divide ``bottleneck``).
        stride: stride of the projection and of the grouped convolution.
        project: whether this block starts a stage.
    """

    def __init__(self, in_channels: int, bottleneck: int, residual_channels: int, dense_increment: int, groups: int,
                 stride: int = 1, project: bool = False) -> None:
        super().__init__()
        self.residual_channels = residual_channels
        self.projection = (bn_relu_conv(in_channels, residual_channels + 2 * dense_increment, 1, stride=stride)
                           if project else None)
        self.body = nn.Sequential(
            bn_relu_conv(in_channels, bottleneck, 1),
            bn_relu_conv(bottleneck, bottleneck, 3, stride=stride, groups=groups),
            bn_relu_conv(bottleneck, residual_channels + dense_increment, 1),
        )

    def forward(self, paths: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        joined = torch.cat(paths, dim=1)
        if self.projection is not None:
            projected = self.projection(joined)
            residual, dense = projected[:, :self.residual_channels], projected[:, self.residual_channels:]
        else:
            residual, dense = paths
        out = self.body(joined)
        return residual + out[:, :self.residual_channels], torch.cat([dense, out[:, self.residual_channels:]], dim=1)


class DualPathNet3d(nn.Module):
    """3D DPN classifier: (B, 1, D, H, W) -> (B, 2) logits.

    Args:
        stem_channels: width of the stem (3 x 3 x 3 conv, stride (1, 2, 2), then a 2 x 2 x 2 max pool).
        residual_channels: R per stage.
        dense_increments: k per stage.
        blocks: DPN blocks per stage (the first projects, stride 2 after stage one).
        bottleneck_ratio: bottleneck width = ratio x R.
        groups: groups of the 3 x 3 x 3 convolutions.
        dropout: dropout before the classifier.
    """

    def __init__(self, stem_channels: int, residual_channels: Sequence[int], dense_increments: Sequence[int],
                 blocks: Sequence[int], bottleneck_ratio: float = 1.0, groups: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if not len(residual_channels) == len(dense_increments) == len(blocks):
            raise ValueError("residual_channels, dense_increments and blocks need one entry per stage")
        self.stem = nn.Sequential(nn.Conv3d(1, stem_channels, 3, stride=(1, 2, 2), padding=1, bias=False),
                                  nn.MaxPool3d(2, ceil_mode=True))
        stages: list[nn.Module] = []
        width = stem_channels
        for index, (r, k, n) in enumerate(zip(residual_channels, dense_increments, blocks)):
            bottleneck = max(groups, int(round(bottleneck_ratio * r / groups)) * groups)
            for block in range(n):
                stages.append(DualPathBlock3d(width, bottleneck, r, k, groups, stride=2 if (block == 0 and index > 0) else 1,
                                              project=block == 0))
                width = r + (3 + block) * k  # projection gives 2k dense channels, every block adds k
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.BatchNorm3d(width), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, MALIGNANCY_CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        stem = self.stem(x)
        residual, dense = self.stages((stem, stem[:, :0]))
        features = self.head(torch.cat([residual, dense], dim=1))
        return self.classifier(features.mean(dim=(2, 3, 4)))


DEEPCAD_PRESETS = {
    "tiny": {"stem_channels": 4, "residual_channels": (8, 8), "dense_increments": (2, 2), "blocks": (1, 1),
             "groups": 2, "dropout": 0.0},
    "cpu": {"stem_channels": 16, "residual_channels": (32, 64, 128), "dense_increments": (8, 16, 16),
            "blocks": (1, 2, 2), "groups": 8, "dropout": 0.2},
    "paper": {"stem_channels": 32, "residual_channels": (64, 128, 256, 512), "dense_increments": (16, 32, 24, 128),
              "blocks": (2, 2, 2, 2), "groups": 16, "dropout": 0.2},
}


build_deepcad = register_latest_scan_classifier(
    "deepcad", DualPathNet3d, DEEPCAD_PRESETS,
    description="DeepCAD: 3D dual path network (DeepLung's nodule classifier), latest scan only.",
    table_row="DeepCAD",
    footnote="(re-impl.) not described by the comparison papers; built as DeepLung's 3D dual path network, "
             "linear head instead of gradient boosting.",
)

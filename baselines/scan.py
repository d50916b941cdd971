"""SCAN (SCANs in CSF-Net's comparison): a 3D nodule classifier with spatial and channel
attention, the Table-1 classification row.

The comparison papers (MST-Net, CSF-Net) cite it only by name and give no architecture, and we
found no public code; we build the closest documented member of the family it names: a plain
(non-residual) 3D VGG-style CNN whose every stage ends with *concurrent spatial and channel
squeeze-and-excitation* (scSE, Roy et al., MICCAI 2018 / IEEE TMI 2019): the channel branch
is MONAI's :class:`~monai.networks.blocks.ChannelSELayer` (global average pool, bottleneck MLP,
sigmoid gate per channel), the spatial branch a 1 x 1 x 1 convolution with a sigmoid gate per
voxel, and the two recalibrated maps are summed. The head concatenates global average and
global max pooling. Unlike NAS-Lung (residual blocks, CBAM: channel *then* spatial attention
on avg+max descriptors), attention here is parallel and the trunk has no shortcuts.
Input: the latest scan only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ChannelSELayer
from torch import Tensor, nn

from baselines._common import MALIGNANCY_CLASSES, register_latest_scan_classifier


class SpatialChannelSqueezeExcitation3d(nn.Module):
    """scSE: ``cSE(x) + sSE(x)``, (B, C, D, H, W) -> (B, C, D, H, W).

    Args:
        channels: C.
        reduction: channel-SE bottleneck ratio (2, as Roy et al.).
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        self.channel_se = ChannelSELayer(spatial_dims=3, in_channels=channels, r=reduction)
        self.spatial_gate = nn.Conv3d(channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.channel_se(x) + x * torch.sigmoid(self.spatial_gate(x))


def conv_bn_relu(in_channels: int, out_channels: int, stride: int | tuple[int, int, int] = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm3d(out_channels), nn.ReLU(inplace=True))


class SCANNet(nn.Module):
    """The SCAN classifier: (B, 1, D, H, W) -> (B, 2) logits.

    Args:
        widths: channels per stage; each stage is two conv-BN-ReLU layers then scSE, and every
            stage after the first starts with a 2 x 2 x 2 max pool. The first conv has stride
            (1, 2, 2).
        reduction: channel-SE bottleneck ratio (2).
        dropout: dropout before the linear classifier (0.0).
    """

    def __init__(self, widths: Sequence[int], reduction: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 1
        for index, out_channels in enumerate(widths):
            if index > 0:
                layers.append(nn.MaxPool3d(2, ceil_mode=True))
            layers += [conv_bn_relu(width, out_channels, stride=(1, 2, 2) if index == 0 else 1),
                       conv_bn_relu(out_channels, out_channels),
                       SpatialChannelSqueezeExcitation3d(out_channels, reduction)]
            width = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, MALIGNANCY_CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        pooled = torch.cat([features.mean(dim=(2, 3, 4)), features.amax(dim=(2, 3, 4))], dim=1)
        return self.classifier(pooled)


SCAN_PRESETS = {
    "tiny": {"widths": (4, 8), "dropout": 0.0},
    "cpu": {"widths": (16, 32, 64, 128), "dropout": 0.3},
    "paper": {"widths": (32, 64, 128, 256), "dropout": 0.3},
}


build_scan = register_latest_scan_classifier(
    "scan", SCANNet, SCAN_PRESETS,
    description="SCAN: 3D VGG-style CNN with concurrent spatial and channel squeeze-excitation (scSE), latest scan only.",
    table_row="SCAN",
    footnote="(re-impl.) architecture not published; a 3D CNN with scSE spatial + channel attention.",
)

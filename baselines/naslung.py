"""NAS-Lung (Jiang et al., Pattern Recognition 113, 2021, "Learning efficient, explainable and
discriminative representations for pulmonary nodules classification"; code
github.com/fei-hdu/NAS-Lung): the Table-1 classification row.

What is followed: the searched network family of the paper, a 3D residual CNN whose every
block is a *ResCBAM* block (two 3 x 3 x 3 conv-BN layers, then the convolutional block
attention module of Woo et al., ECCV 2018, applied to the residual branch: channel attention
from average- and max-pooled descriptors through a shared bottleneck MLP, then spatial
attention from a convolution over the channel-wise mean and max maps), stages separated by
max pooling, global average pooling and a linear classifier. The stage widths are the
searched configuration's kind (a list of block widths per stage), chosen per preset.

Deviations (footnote): the architecture search itself is not rerun (one fixed configuration
per preset); the A-Softmax (angular margin) loss and the test-time ensemble of searched nets
are replaced by the harness's cross-entropy and a single network. Input: the latest scan only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from baselines._common import MALIGNANCY_CLASSES, register_latest_scan_classifier


class ChannelAttention3d(nn.Module):
    """CBAM channel attention: ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``, (B, C, 1, 1, 1).

    Args:
        channels: C.
        reduction: bottleneck ratio of the shared MLP (at least one hidden unit).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Conv3d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv3d(hidden, channels, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        average = x.mean(dim=(2, 3, 4), keepdim=True)
        maximum = x.amax(dim=(2, 3, 4), keepdim=True)
        return torch.sigmoid(self.mlp(average) + self.mlp(maximum))


class SpatialAttention3d(nn.Module):
    """CBAM spatial attention: ``sigmoid(conv([mean_c(x), max_c(x)]))``, (B, 1, D, H, W).

    Args:
        kernel_size: the convolution's size (3 in NAS-Lung's 3D blocks; 7 in CBAM's 2D paper).
    """

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class ResCBAMBlock3d(nn.Module):
    """Residual block with CBAM on the residual branch: (B, C_in, D, H, W) -> (B, C_out, D, H, W).

    ``out = relu(shortcut(x) + SA(CA(r) * r) * (CA(r) * r))`` with ``r = BN(conv(relu(BN(conv(x)))))``;
    the shortcut is a 1 x 1 x 1 conv + BN when the width changes.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4, spatial_kernel: int = 3) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm3d(out_channels),
        )
        self.channel_attention = ChannelAttention3d(out_channels, reduction)
        self.spatial_attention = SpatialAttention3d(spatial_kernel)
        self.shortcut = (nn.Identity() if in_channels == out_channels else
                         nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, bias=False), nn.BatchNorm3d(out_channels)))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        r = self.residual(x)
        r = r * self.channel_attention(r)
        r = r * self.spatial_attention(r)
        return self.activation(self.shortcut(x) + r)


class NASLungNet(nn.Module):
    """The NAS-Lung classifier: (B, 1, D, H, W) -> (B, 2) logits.

    Args:
        stages: block widths per stage, e.g. ``((16, 16), (32, 32), (64, 64))``; a 2 x 2 x 2
            max pool precedes every stage after the first.
        stem_channels: width of the 3 x 3 x 3 stem convolution (stride (1, 2, 2): the crops
            are thin in depth), followed by a 2 x 2 x 2 max pool.
        reduction: CBAM channel-attention reduction ratio (4).
        dropout: dropout before the linear classifier (0.0).

    Example::

        net = NASLungNet(stages=((8, 8), (16, 16)))
        logits = net(torch.randn(2, 1, 16, 64, 64))  # [2, 2]
    """

    def __init__(self, stages: Sequence[Sequence[int]], stem_channels: int = 8, reduction: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(1, stem_channels, 3, stride=(1, 2, 2), padding=1, bias=False),
                                  nn.BatchNorm3d(stem_channels), nn.ReLU(inplace=True), nn.MaxPool3d(2, ceil_mode=True))
        layers: list[nn.Module] = []
        width = stem_channels
        for index, stage in enumerate(stages):
            if index > 0:
                layers.append(nn.MaxPool3d(2, ceil_mode=True))
            for out_channels in stage:
                layers.append(ResCBAMBlock3d(width, out_channels, reduction))
                width = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, MALIGNANCY_CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(self.stem(x))
        return self.classifier(features.mean(dim=(2, 3, 4)))


NASLUNG_PRESETS = {
    "tiny": {"stem_channels": 4, "stages": ((4,), (8,)), "dropout": 0.0},
    "cpu": {"stem_channels": 16, "stages": ((16, 16), (32, 32), (64, 64), (96,)), "dropout": 0.2},
    "paper": {"stem_channels": 32, "stages": ((32, 32), (64, 64), (128, 128), (128, 128)), "dropout": 0.2},
}


build_naslung = register_latest_scan_classifier(
    "naslung", NASLungNet, NASLUNG_PRESETS,
    description="NAS-Lung: 3D residual CNN with CBAM channel + spatial attention (searched family), latest scan only.",
    table_row="NASLung",
    footnote="(re-impl.) one fixed ResCBAM configuration instead of the architecture search; "
             "cross-entropy instead of A-Softmax; no ensemble.",
)

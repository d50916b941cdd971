"""The 3D ResNet global branch of MST-Net's classifier (Fig. 1c)."""

from __future__ import annotations

from torch import Tensor, nn
from monai.networks.nets.resnet import ResNetBlock


class GlobalBranchResNet3d(nn.Module):
    """A small 3D ResNet run on one time point's segmentation output, as in the release.

    Stem conv 3 x 7 x 7 stride (1, 2, 2) -> BN -> ReLU -> max-pool (1, 3, 3) stride (1, 2, 2);
    three stages of two MONAI ``ResNetBlock`` basic blocks at widths (64, 128, 256), the last
    two stages with stride 2; a 1 x 1 x 1 conv to ``output_channels`` (the ViT width, 768);
    adaptive average pooling to the ViT token grid so it lines up with z12. MONAI's ``ResNet``
    needs four stages and ends in a classifier, so the branch is composed here from its block.

    (N, in_channels, D, H, W) -> (N, output_channels, gd, gh, gw).

    Args:
        output_channels: channels of the output map (the ViT hidden size).
        output_grid: (gd, gh, gw), the ViT token grid.
        channels: widths of the three stages (64, 128, 256).
        in_channels: input channels (1: the foreground probability).
    """

    def __init__(self, output_channels: int, output_grid: tuple[int, int, int],
                 channels: tuple[int, int, int] = (64, 128, 256), in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, channels[0], kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(channels[0]),
            nn.ReLU(),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        )
        stages = []
        width = channels[0]
        for index, planes in enumerate(channels):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or width != planes:
                downsample = nn.Sequential(nn.Conv3d(width, planes, kernel_size=1, stride=stride, bias=False),
                                           nn.BatchNorm3d(planes))
            stages.append(nn.Sequential(ResNetBlock(width, planes, spatial_dims=3, stride=stride, downsample=downsample),
                                        ResNetBlock(planes, planes, spatial_dims=3)))
            width = planes
        self.stages = nn.Sequential(*stages)
        self.projection = nn.Conv3d(width, output_channels, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool3d(output_grid)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.projection(self.stages(self.stem(x))))

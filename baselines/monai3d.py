"""Standard 3D references from MONAI: SwinUNETR, SegResNet and BasicUNet segmentation (every
time point, shared weights), and 3D ResNet / DenseNet classification of the latest scan.

These are not rows of the paper's table; they show where well-known volumetric networks land on
the same folds. All are MONAI's implementations, sized by preset (``paper`` uses the published
widths: SwinUNETR feature size 48, SegResNet 32 filters, BasicUNet (32, 32, 64, 128, 256, 32),
ResNet-18 and a three-block DenseNet-121 trunk).
"""

from __future__ import annotations

from monai.networks.nets import BasicUNet, DenseNet, ResNet, SegResNet, SwinUNETR
from torch import nn

from baselines._common import (
    MALIGNANCY_CLASSES,
    SEGMENTATION_CLASSES,
    LatestScanClassifier,
    PerTimepointSegmentation,
    classification_only_recipe,
    preset_settings,
    segmentation_only_recipe,
)
from mstnet.experiments.registry import DataView, ModelContext, register_experiment
from mstnet.experiments.recipes import CLASSIFIER_EPOCHS, with_cpu_recipe

SEGMENTATION_VIEW = DataView(timepoints=2, use_clinical=False)
LATEST_SCAN_VIEW = DataView(timepoints=1, use_clinical=False)

SWINUNETR_PRESETS = {
    "tiny": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 4,
             "norm_name": "batch"},
    "cpu": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (3, 3, 6, 6), "window_size": 4,
            "norm_name": "batch"},
    "paper": {"feature_size": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 7,
              "norm_name": "instance"},
}
SWINUNETR_SIZE_DIVISOR = 32
"""SwinUNETR halves the resolution five times. At the small presets the deepest feature map of
a padded 16-slice crop has a single voxel, where instance normalisation is undefined in
training; those presets use batch normalisation instead."""


def build_swinunetr(context: ModelContext) -> nn.Module:
    """SwinUNETR (Hatamizadeh et al., 2022) per time point."""
    settings = preset_settings("monai-swinunetr", SWINUNETR_PRESETS, context)
    network = SwinUNETR(in_channels=1, out_channels=SEGMENTATION_CLASSES, spatial_dims=3, **settings)
    return PerTimepointSegmentation(network, size_divisor=SWINUNETR_SIZE_DIVISOR)


SEGRESNET_PRESETS = {
    "tiny": {"init_filters": 4, "blocks_down": (1, 1, 1, 1), "num_groups": 4},
    "cpu": {"init_filters": 8, "blocks_down": (1, 2, 2, 4), "num_groups": 8},
    "paper": {"init_filters": 32, "blocks_down": (1, 2, 2, 4), "num_groups": 8},
}


def build_segresnet(context: ModelContext) -> nn.Module:
    """SegResNet (Myronenko, BrainLes 2018) per time point, without the VAE branch."""
    settings = preset_settings("monai-segresnet", SEGRESNET_PRESETS, context)
    num_groups = settings.pop("num_groups")
    network = SegResNet(spatial_dims=3, in_channels=1, out_channels=SEGMENTATION_CLASSES,
                        norm=("GROUP", {"num_groups": num_groups}), blocks_up=(1, 1, 1), **settings)
    return PerTimepointSegmentation(network, size_divisor=2 ** (len(settings["blocks_down"]) - 1))


BASICUNET_PRESETS = {
    "tiny": {"features": (4, 4, 8, 8, 16, 4)},
    "cpu": {"features": (8, 8, 16, 32, 64, 8)},
    "paper": {"features": (32, 32, 64, 128, 256, 32)},
}
BASICUNET_SIZE_DIVISOR = 16
"""BasicUNet pools four times."""


def build_basicunet(context: ModelContext) -> nn.Module:
    """MONAI's BasicUNet (a plain 3D U-Net, Falk et al. 2019) per time point."""
    settings = preset_settings("monai-basicunet", BASICUNET_PRESETS, context)
    network = BasicUNet(spatial_dims=3, in_channels=1, out_channels=SEGMENTATION_CLASSES, **settings)
    return PerTimepointSegmentation(network, size_divisor=BASICUNET_SIZE_DIVISOR)


RESNET_PRESETS = {
    "tiny": {"layers": (1, 1, 1, 1), "block_inplanes": (4, 4, 8, 8)},
    "cpu": {"layers": (1, 1, 1, 1), "block_inplanes": (16, 32, 64, 128)},
    "paper": {"layers": (2, 2, 2, 2), "block_inplanes": (64, 128, 256, 512)},
}


def build_resnet3d(context: ModelContext) -> nn.Module:
    """3D ResNet (Hara et al., CVPR 2018; ResNet-18 layout at ``paper``) on the latest scan.

    The stem keeps the depth axis at stride 1 (``conv1_t_stride=1``): crops are 16 slices deep.
    """
    settings = preset_settings("monai-resnet3d", RESNET_PRESETS, context)
    network = ResNet(block="basic", layers=list(settings["layers"]), block_inplanes=list(settings["block_inplanes"]),
                     spatial_dims=3, n_input_channels=1, conv1_t_size=3, conv1_t_stride=1,
                     num_classes=MALIGNANCY_CLASSES)
    return LatestScanClassifier(network)


DENSENET_PRESETS = {
    "tiny": {"init_features": 8, "growth_rate": 4, "block_config": (1, 1, 1)},
    "cpu": {"init_features": 16, "growth_rate": 8, "block_config": (2, 4, 6)},
    "paper": {"init_features": 64, "growth_rate": 32, "block_config": (6, 12, 24)},
}


def build_densenet3d(context: ModelContext) -> nn.Module:
    """3D DenseNet (Huang et al., CVPR 2017) on the latest scan.

    Three dense blocks (the first three of DenseNet-121 at ``paper``): the stem divides every
    axis by 4 and each transition by 2, and a 16-slice crop has room for two transitions.
    """
    settings = preset_settings("monai-densenet3d", DENSENET_PRESETS, context)
    network = DenseNet(spatial_dims=3, in_channels=1, out_channels=MALIGNANCY_CLASSES, **settings)
    return LatestScanClassifier(network, size_divisor=2 ** (2 + len(settings["block_config"]) - 1))


for _name, _builder, _description in (
    ("monai-swinunetr", build_swinunetr, "MONAI SwinUNETR, each time point segmented on its own (3D)."),
    ("monai-segresnet", build_segresnet, "MONAI SegResNet, each time point segmented on its own (3D)."),
    ("monai-basicunet", build_basicunet, "MONAI BasicUNet (3D U-Net), each time point segmented on its own."),
):
    register_experiment(_name, description=_description, tasks=("segmentation",), group="reference",
                        data_view=SEGMENTATION_VIEW,
                        recipe=with_cpu_recipe(segmentation_only_recipe(learning_rate=1e-3)))(_builder)

for _name, _builder, _description in (
    ("monai-resnet3d", build_resnet3d, "MONAI 3D ResNet classifying the latest scan."),
    ("monai-densenet3d", build_densenet3d, "MONAI 3D DenseNet classifying the latest scan."),
):
    register_experiment(_name, description=_description, tasks=("classification",), group="reference",
                        data_view=LATEST_SCAN_VIEW,
                        recipe=with_cpu_recipe(classification_only_recipe(learning_rate=1e-3),
                                                       epochs=CLASSIFIER_EPOCHS))(_builder)

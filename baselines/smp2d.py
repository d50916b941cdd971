"""Standard 2D references from segmentation_models_pytorch: U-Net, U-Net++ and DeepLabV3+,
applied to every axial slice of every time point and stacked back to 3D.

These answer "how far does a planar network get" next to the volumetric ones. Encoders are
built with ``encoder_weights=None`` (no download, trained from scratch) and take one input
channel. Encoder per preset: ``mobilenet_v2`` (depth 3) for ``tiny``, ``mobilenet_v2``
(depth 4, narrow decoder) for ``cpu``, ``resnet34`` (depth 5, smp's default decoder) for
``paper``. In-plane sizes are padded to a multiple of the encoder's output stride.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from baselines._common import SEGMENTATION_CLASSES, SliceWiseSegmentation, preset_settings, segmentation_only_recipe
from mstnet.experiments.registry import DataView, ModelContext, register_experiment
from mstnet.experiments.recipes import with_cpu_recipe

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"encoder_name": "mobilenet_v2", "encoder_depth": 3, "decoder_channels": (16, 8, 8)},
    "cpu": {"encoder_name": "mobilenet_v2", "encoder_depth": 4, "decoder_channels": (64, 32, 16, 16)},
    "paper": {"encoder_name": "resnet34", "encoder_depth": 5, "decoder_channels": (256, 128, 64, 32, 16)},
}
DEEPLAB_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"encoder_name": "mobilenet_v2", "encoder_depth": 3, "decoder_channels": 16, "encoder_output_stride": 8},
    "cpu": {"encoder_name": "mobilenet_v2", "encoder_depth": 4, "decoder_channels": 64, "encoder_output_stride": 16},
    "paper": {"encoder_name": "resnet34", "encoder_depth": 5, "decoder_channels": 256, "encoder_output_stride": 16},
}


def smp_builder(architecture: Callable[..., nn.Module], presets: dict[str, dict[str, Any]],
                name: str) -> Callable[[ModelContext], nn.Module]:
    """A model builder for smp ``architecture`` with ``presets``."""

    def build(context: ModelContext) -> nn.Module:
        settings = preset_settings(name, presets, context)
        network = architecture(encoder_weights=None, in_channels=1, classes=SEGMENTATION_CLASSES, **settings)
        return SliceWiseSegmentation(network, size_divisor=2 ** settings["encoder_depth"])

    build.__doc__ = f"smp {architecture.__name__} applied slice by slice (experiment {name!r})."
    return build


for _name, _architecture, _presets in (
    ("smp2d-unet", smp.Unet, UNET_PRESETS),
    ("smp2d-unetplusplus", smp.UnetPlusPlus, UNET_PRESETS),
    ("smp2d-deeplabv3plus", smp.DeepLabV3Plus, DEEPLAB_PRESETS),
):
    register_experiment(
        _name,
        description=f"segmentation_models_pytorch {_architecture.__name__} (from scratch), slice by slice, stacked to 3D.",
        tasks=("segmentation",),
        group="reference",
        data_view=DataView(timepoints=2, use_clinical=False),
        recipe=with_cpu_recipe(segmentation_only_recipe(learning_rate=1e-3)),
    )(smp_builder(_architecture, _presets, _name))

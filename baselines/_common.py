"""Wrappers that turn single-scan networks into the harness's model interface.

Every torch model of the project is called as
``model(images [B, T, 1, D, H, W], clinical_categorical=None, clinical_numeric=None, days=None)``
and returns :class:`mstnet.models.output.ModelOutput`. The comparison methods are single-scan
networks (a 3D volume, or a 2D slice); these wrappers apply them with shared weights to every
time point (and every slice), and ignore the clinical inputs and days, which none of them uses.

- :class:`PerTimepointSegmentation`: a 3D segmentation network on each time point.
- :class:`SliceWiseSegmentation`: a 2D segmentation network on each axial slice, stacked to 3D.
- :class:`LatestScanClassifier`: a 3D classifier on the latest time point.
- :class:`MultiTaskPerTimepoint`: a 2D or 3D network returning (segmentation logits, pooled
  feature vector) on each scan or slice; the pooled vectors are averaged over slices and time
  points and fed to a linear malignancy head.

:func:`register_latest_scan_classifier` registers a Table-1 classifier of the latest scan
(DeepCAD, NASLung, SCAN) in one call; :func:`register_multitask_row` registers a Table-1
multi-task row (ACSNet, MLTN).

Inputs whose size a network cannot take (UNETR needs multiples of 16, SwinUNETR of 32) are
padded at the far end by edge replication to the next multiple of ``size_divisor`` and the
logits cropped back, so any crop size works.

Segmentation logits have K = 1 channel (sigmoid foreground), as MST-Net's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from mstnet.errors import UnknownNameError
from mstnet.experiments.recipes import CLASSIFIER_EPOCHS, with_cpu_recipe
from mstnet.experiments.registry import DataView, ModelContext, Recipe, register_experiment, resolve_settings
from mstnet.models.output import ModelOutput

SEGMENTATION_CLASSES = 1
"""K of every baseline's ``seg_logits``: one sigmoid foreground channel."""

MALIGNANCY_CLASSES = 2
"""Classification logits are ``[B, 2]`` (benign, malignant)."""


def as_divisor(size_divisor: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """``size_divisor`` as one integer per spatial axis."""
    divisor = (size_divisor,) * spatial_dims if isinstance(size_divisor, int) else tuple(size_divisor)
    if len(divisor) != spatial_dims or any(d < 1 for d in divisor):
        raise ValueError(f"size_divisor {size_divisor!r} must be a positive int or {spatial_dims} positive ints")
    return divisor


def pad_to_multiple(x: Tensor, size_divisor: Sequence[int]) -> Tensor:
    """Pad the trailing spatial axes of ``x`` (N, C, *S) at their far end, by edge replication,
    up to the next multiple of ``size_divisor`` (one int per spatial axis)."""
    spatial = x.shape[2:]
    extra = [math.ceil(s / d) * d - s for s, d in zip(spatial, size_divisor)]
    if not any(extra):
        return x
    padding: list[int] = []
    for amount in reversed(extra):
        padding += [0, amount]
    return F.pad(x, padding, mode="replicate")


def crop_to(x: Tensor, spatial: Sequence[int]) -> Tensor:
    """The leading ``spatial`` voxels of each trailing spatial axis of ``x`` (N, C, *S)."""
    index = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
    return x[index]


def _check_images(images: Tensor) -> None:
    if images.ndim != 6 or images.shape[2] != 1:
        raise ValueError(f"images must be [B, T, 1, D, H, W], got shape {tuple(images.shape)}")


class _HarnessModel(nn.Module):
    """The harness's call, ``model(images [B, T, 1, D, H, W], clinical_categorical, clinical_numeric, days)``,
    for a network of single scans: the images are checked, the clinical inputs and days ignored, and
    :meth:`outputs` maps the images to the :class:`ModelOutput`."""

    def forward(self, images: Tensor, clinical_categorical: Tensor | None = None,
                clinical_numeric: Tensor | None = None, days: Tensor | None = None) -> ModelOutput:
        _check_images(images)
        return self.outputs(images)

    def outputs(self, images: Tensor) -> ModelOutput:
        raise NotImplementedError


class _ScanNetwork(_HarnessModel):
    """A wrapped ``network`` of ``spatial_dims`` dimensions whose inputs are padded to multiples of ``size_divisor``."""

    spatial_dims = 3

    def __init__(self, network: nn.Module, size_divisor: int | Sequence[int] = 1) -> None:
        super().__init__()
        self.network = network
        self.size_divisor = as_divisor(size_divisor, self.spatial_dims)


def scans_to_slices(images: Tensor) -> Tensor:
    """[B, T, 1, D, H, W] -> [B * T * D, 1, H, W] (axial slices, in (B, T, D) order)."""
    b, t, c, d, h, w = images.shape
    return images.permute(0, 1, 3, 2, 4, 5).reshape(b * t * d, c, h, w)


def slices_to_scans(slices: Tensor, batch: int, timepoints: int, depth: int) -> Tensor:
    """[B * T * D, K, H, W] -> [B, T, K, D, H, W] (inverse of :func:`scans_to_slices`)."""
    _, k, h, w = slices.shape
    return slices.reshape(batch, timepoints, depth, k, h, w).permute(0, 1, 3, 2, 4, 5)


class PerTimepointSegmentation(_ScanNetwork):
    """A 3D segmentation network applied to every time point with shared weights.

    Args:
        network: maps (N, 1, D, H, W) to (N, K, D, H, W) logits.
        size_divisor: spatial sizes the network needs to be multiples of (1 = any size).

    Example::

        model = PerTimepointSegmentation(BasicUNet(spatial_dims=3, in_channels=1, out_channels=1))
        output = model(torch.randn(2, 2, 1, 16, 64, 64))  # output.seg_logits: [2, 2, 1, 16, 64, 64]
    """

    def outputs(self, images: Tensor) -> ModelOutput:
        b, t = images.shape[:2]
        spatial = images.shape[3:]
        scans = pad_to_multiple(images.flatten(0, 1), self.size_divisor)
        logits = crop_to(self.network(scans), spatial)
        return ModelOutput(seg_logits=logits.reshape(b, t, *logits.shape[1:]), cls_logits=None)


class SliceWiseSegmentation(_ScanNetwork):
    """A 2D segmentation network applied to every axial slice of every time point, stacked to 3D.

    Args:
        network: maps (N, 1, H, W) to (N, K, H, W) logits.
        size_divisor: in-plane sizes the network needs to be multiples of (smp: 2 ** depth).
    """

    spatial_dims = 2

    def outputs(self, images: Tensor) -> ModelOutput:
        b, t, _, d, h, w = images.shape
        slices = pad_to_multiple(scans_to_slices(images), self.size_divisor)
        logits = crop_to(self.network(slices), (h, w))
        return ModelOutput(seg_logits=slices_to_scans(logits, b, t, d), cls_logits=None)


class LatestScanClassifier(_ScanNetwork):
    """A 3D classifier applied to the latest time point only (``images[:, -1]``).

    Args:
        network: maps (B, 1, D, H, W) to (B, 2) malignancy logits.
        size_divisor: spatial sizes the network needs to be multiples of.
    """

    def outputs(self, images: Tensor) -> ModelOutput:
        logits = self.network(pad_to_multiple(images[:, -1], self.size_divisor))
        if logits.shape != (images.shape[0], MALIGNANCY_CLASSES):
            raise ValueError(f"classifier returned shape {tuple(logits.shape)}, expected [B, {MALIGNANCY_CLASSES}]")
        return ModelOutput(seg_logits=None, cls_logits=logits)


class MultiTaskPerTimepoint(_HarnessModel):
    """A multi-task network on every scan (3D) or axial slice (2D), plus a malignancy head.

    The backbone returns ``(seg_logits, pooled)``: (N, K, *S) logits and (N, F) globally
    average-pooled deepest features. The pooled vectors of one patient are averaged over its
    slices (2D) and time points, so the head sees a global average pool of the deepest feature
    over the whole longitudinal stack: ``cls_logits = Linear(Dropout(mean))``, [B, 2].

    Args:
        backbone: the per-scan (or per-slice) multi-task network.
        feature_channels: F, the length of the pooled vector.
        spatial_dims: 3 (per scan) or 2 (per slice).
        size_divisor: spatial sizes the backbone needs to be multiples of.
        dropout: dropout before the linear head (0.0).
    """

    def __init__(self, backbone: nn.Module, feature_channels: int, spatial_dims: int = 3,
                 size_divisor: int | Sequence[int] = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.backbone = backbone
        self.spatial_dims = spatial_dims
        self.size_divisor = as_divisor(size_divisor, spatial_dims)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_channels, MALIGNANCY_CLASSES))

    def outputs(self, images: Tensor) -> ModelOutput:
        b, t, _, d, h, w = images.shape
        if self.spatial_dims == 3:
            seg, pooled = self.backbone(pad_to_multiple(images.flatten(0, 1), self.size_divisor))
            seg_logits = crop_to(seg, (d, h, w)).reshape(b, t, -1, d, h, w)
        else:
            seg, pooled = self.backbone(pad_to_multiple(scans_to_slices(images), self.size_divisor))
            seg_logits = slices_to_scans(crop_to(seg, (h, w)), b, t, d)
        patient_vector = pooled.reshape(b, -1, pooled.shape[-1]).mean(dim=1)
        return ModelOutput(seg_logits=seg_logits, cls_logits=self.head(patient_vector),
                           features={"pooled": patient_vector})


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def preset_settings(method: str, presets: dict[str, dict[str, Any]], context: ModelContext) -> dict[str, Any]:
    """Constructor settings of ``method`` for ``context.preset``, with ``context.params`` applied.

    The settings are recorded in ``context.settings`` (the model configuration of
    ``config.json``).

    Raises:
        UnknownNameError: a preset ``presets`` lacks.
        UsageError: a parameter the preset does not define, or a value of the wrong type.
    """
    try:
        defaults = presets[context.preset]
    except KeyError:
        raise UnknownNameError(f"{method}: unknown preset {context.preset!r}; choose one of {sorted(presets)}") from None
    return resolve_settings(method, defaults, context)


def segmentation_only_recipe(**fields: object) -> Recipe:
    """A recipe whose loss is the segmentation term alone (``fields`` override other settings)."""
    return Recipe(seg_loss_weight=1.0, cls_loss_weight=0.0, **fields)


def classification_only_recipe(**fields: object) -> Recipe:
    """A recipe whose loss is the classification term alone."""
    return Recipe(seg_loss_weight=0.0, cls_loss_weight=1.0, **fields)


def register_latest_scan_classifier(name: str, network: Callable[..., nn.Module], presets: dict[str, dict[str, Any]], *,
                                    description: str, table_row: str, footnote: str) -> Callable[[ModelContext], nn.Module]:
    """Register experiment ``name``, a Table-1 row that classifies the latest scan; returns its builder.

    The builder wraps ``network(**settings)`` ((B, 1, D, H, W) -> (B, 2) logits; settings: the context
    preset's entry of ``presets`` with ``--set`` applied, :func:`preset_settings`) in
    :class:`LatestScanClassifier`. The row sees the latest scan only, no clinical record, and trains
    on the classification loss alone by the release's recipe at learning rate 1e-3 and weight decay
    1e-4; at the cpu preset by the short run, for
    :data:`~mstnet.experiments.recipes.CLASSIFIER_EPOCHS` epochs.
    """

    def build(context: ModelContext) -> nn.Module:
        return LatestScanClassifier(network(**preset_settings(name, presets, context)))

    build.__name__ = build.__qualname__ = f"build_{name}"
    build.__doc__ = f"{table_row} for ``context``, applied to the latest scan."
    recipe = with_cpu_recipe(classification_only_recipe(learning_rate=1e-3, weight_decay=1e-4), epochs=CLASSIFIER_EPOCHS)
    return register_experiment(name, description=description, tasks=("classification",), group="paper-table",
                               table_row=table_row, data_view=DataView(timepoints=1, use_clinical=False), recipe=recipe,
                               footnote=footnote)(build)


def register_multitask_row(name: str, *, description: str, table_row: str, footnote: str, weight_decay: float,
                           cpu_bf16: bool = False) -> Callable[[Callable[[ModelContext], nn.Module]], Callable[[ModelContext], nn.Module]]:
    """The ``register_experiment`` decorator of a Table-1 multi-task row (ACSNet, MLTN).

    The row segments both scans and classifies the patient without the clinical record, on an equal
    sum of the two losses (0.5 each) by the release's recipe at learning rate 1e-3 and ``weight_decay``,
    and at the cpu preset by the short run (:func:`~mstnet.experiments.recipes.with_cpu_recipe`), there
    with bf16 training steps when ``cpu_bf16`` (``Recipe.cpu_bf16``).
    """
    recipe = with_cpu_recipe(Recipe(learning_rate=1e-3, weight_decay=weight_decay, seg_loss_weight=0.5,
                                    cls_loss_weight=0.5), cpu_bf16=cpu_bf16)
    return register_experiment(name, description=description, tasks=("segmentation", "classification"),
                               group="paper-table", table_row=table_row,
                               data_view=DataView(timepoints=2, use_clinical=False), recipe=recipe, footnote=footnote)


__all__ = [
    "LatestScanClassifier",
    "MultiTaskPerTimepoint",
    "PerTimepointSegmentation",
    "SliceWiseSegmentation",
    "classification_only_recipe",
    "count_parameters",
    "crop_to",
    "pad_to_multiple",
    "preset_settings",
    "register_latest_scan_classifier",
    "register_multitask_row",
    "scans_to_slices",
    "segmentation_only_recipe",
    "slices_to_scans",
]

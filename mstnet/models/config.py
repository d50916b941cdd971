"""MST-Net configuration: every size and switch in one frozen dataclass, with named presets.

Presets (see :data:`PRESETS`):

- ``paper``: the published reference configuration, 16 x 512 x 512 volumes, patch
  16 x 128 x 128, hidden 768, 12 blocks, 4 heads, MLP 2048 (409 M parameters in the
  segmentation network). Build it on the meta device to inspect it without allocating.
- ``cpu``: 16 x 96 x 96 crops (any size divisible by the patch works, e.g. 16 x 64 x 64),
  patch 4 x 16 x 16, hidden 96, 4 blocks, decoder widths 32/16/8/4; about 1.0 M parameters.
  The full-resolution decoder convolutions dominate its cost on the CPU.
- ``tiny``: 8 x 32 x 32, for tests.

Example::

    config = mstnet_config("cpu", image_size=(16, 64, 64), clinical_cardinalities=(3, 4), num_numeric=2)
    dataclasses.asdict(config)  # JSON-able record of the model
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

TemporalFusionKind = Literal["cmstf", "cmstf_nodiff", "concat", "mean", "last"]
CrossModalFusionKind = Literal["cmaf", "concat"]

TEMPORAL_FUSIONS = ("cmstf", "cmstf_nodiff", "concat", "mean", "last")
CROSS_MODAL_FUSIONS = ("cmaf", "concat")
PATCH_EMBEDDINGS = ("linear", "conv_stem")
STDM_AXES = ("depth", "time")

NLST_LIKE_CARDINALITIES = (8, 3, 3, 21, 7, 4)
"""Codes per categorical column (unknown code 0 included) for race, cigsmok, gender, age,
scr_res0, scr_iso0, label-encoded as in the release; the harness replaces them with the
cohort's own cardinalities."""


def _is_power_of_two(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


@dataclass(frozen=True)
class MSTNetConfig:
    """Every size and switch of :class:`mstnet.models.mstnet.MSTNet`: architecture only (how it is
    trained, stages and loss weights included, is the experiment's
    :class:`mstnet.experiments.registry.Recipe`).

    Defaults are the paper's reference configuration (the ``paper`` preset).

    Attributes:
        image_size: (D, H, W) of each scan; must be divisible by ``patch_size``.
        patch_size: (pd, ph, pw) ViT patch; each a power of two (the decoder's four
            upsampling stages are derived from it, see :func:`mstnet.models.blocks.upsampling_factors`).
        num_timepoints: T, scans per patient the model is built for (1 or more).
        hidden_size: ViT width (768).
        num_layers: transformer blocks (12); a multiple of 4, tapped after every quarter.
        num_heads: ViT attention heads (4).
        mlp_size: ViT MLP width (2048).
        embedding_dropout: dropout after patch + position embedding (0.1).
        transformer_dropout: dropout in the ViT MLP and after attention (0.1).
        attention_dropout: dropout on attention weights (0.0).
        patch_embedding: "linear" (the paper's Conv3d kernel = stride = patch) or
            "conv_stem" (four strided 3D conv stages, far fewer parameters).
        decoder_channels: widths of the four decoder stages, coarse to fine (512, 256, 128, 64);
            the raw-input stem uses half of the last, then the last.
        num_seg_classes: K of ``seg_logits``: 1 = one sigmoid foreground channel (default),
            2 = softmax over background/foreground.
        use_stdm: apply STDM on the z12 and z9 skips.
        stdm_axis: "depth" (paper: attention across slices of one scan at each (h, w)) or
            "time" (attention across time points at each (d, h, w)).
        stdm_heads: STDM attention heads (2).
        planar: 2D variant: the ViT and decoder run per slice (depth patch 1, no depth
            upsampling, 1 x 3 x 3 convolutions); the classifier still sees the stacked volume.
        use_clinical: feed the clinical record through the clinical encoder and cross-modal fusion.
        clinical_cardinalities: codes per categorical clinical column (code 0 = unknown).
        num_numeric: numeric clinical features (0 = none).
        clinical_embedding_size: shared categorical embedding width (512).
        resnet_channels: widths of the global branch's three ResNet stages (64, 128, 256).
        temporal_fusion: "cmstf" (paper), "cmstf_nodiff" (no difference term), "concat",
            "mean" or "last".
        time_encoding: encode the days between consecutive scans into CMSTF.
        time_encoding_frequencies: sine/cosine pairs of the interval encoding (8).
        fusion_hidden_size: hidden width of the image projection MLP (512).
        fusion_size: width of the image and clinical vectors and of CMAF (256).
        cross_modal_fusion: "cmaf" (paper) or "concat".
        cmaf_heads: CMAF attention heads (4).
        cmaf_dropout: CMAF attention dropout (0.2).
        head_hidden_sizes: classification head hidden widths (256, 128).
        classifier_dropout: dropout in the fusion MLPs and the head (0.0).
        gradient_checkpointing: recompute ViT blocks and decoder stages in backward.
        channels_last_activations: keep MST-Net's activations channels-last inside the model: its
            input scans, the decoder and the global branch run in channels-last-3d memory format
            (faster convolutions on recent GPUs; the same values up to rounding). The harness's
            ``Recipe.channels_last`` only stores every convolution weight channels-last.
    """

    image_size: tuple[int, int, int] = (16, 512, 512)
    patch_size: tuple[int, int, int] = (16, 128, 128)
    num_timepoints: int = 2
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 4
    mlp_size: int = 2048
    embedding_dropout: float = 0.1
    transformer_dropout: float = 0.1
    attention_dropout: float = 0.0
    patch_embedding: Literal["linear", "conv_stem"] = "linear"
    decoder_channels: tuple[int, int, int, int] = (512, 256, 128, 64)
    num_seg_classes: int = 1
    use_stdm: bool = True
    stdm_axis: Literal["depth", "time"] = "depth"
    stdm_heads: int = 2
    planar: bool = False
    use_clinical: bool = True
    clinical_cardinalities: tuple[int, ...] = NLST_LIKE_CARDINALITIES
    num_numeric: int = 0
    clinical_embedding_size: int = 512
    resnet_channels: tuple[int, int, int] = (64, 128, 256)
    temporal_fusion: TemporalFusionKind = "cmstf"
    time_encoding: bool = False
    time_encoding_frequencies: int = 8
    fusion_hidden_size: int = 512
    fusion_size: int = 256
    cross_modal_fusion: CrossModalFusionKind = "cmaf"
    cmaf_heads: int = 4
    cmaf_dropout: float = 0.2
    head_hidden_sizes: tuple[int, int] = (256, 128)
    classifier_dropout: float = 0.0
    gradient_checkpointing: bool = False
    channels_last_activations: bool = False

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "decoder_channels", "clinical_cardinalities",
                     "resnet_channels", "head_hidden_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"MSTNetConfig: {message}")

        choices = {"patch_embedding": PATCH_EMBEDDINGS, "stdm_axis": STDM_AXES, "temporal_fusion": TEMPORAL_FUSIONS,
                   "cross_modal_fusion": CROSS_MODAL_FUSIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if len(self.image_size) != 3 or len(self.patch_size) != 3:
            fail(f"image_size {self.image_size} and patch_size {self.patch_size} must both be (D, H, W)")
        for axis, size, patch in zip("DHW", self.image_size, self.effective_patch_size):
            if not _is_power_of_two(patch):
                fail(f"patch size {patch} along {axis} must be a power of two (the decoder splits it into 4 upsampling stages)")
            if size % patch:
                fail(f"image_size {self.image_size} is not divisible by patch_size {self.effective_patch_size} along {axis}")
        if self.num_timepoints < 1:
            fail(f"num_timepoints={self.num_timepoints} must be at least 1")
        if self.num_layers < 4 or self.num_layers % 4:
            fail(f"num_layers={self.num_layers} must be a positive multiple of 4 (taps after every quarter)")
        if self.hidden_size % self.num_heads:
            fail(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.use_stdm and (self.hidden_size % self.stdm_heads or self.decoder_channels[0] % self.stdm_heads):
            fail(f"STDM widths {self.hidden_size} and {self.decoder_channels[0]} must be divisible by stdm_heads={self.stdm_heads}")
        if len(self.decoder_channels) != 4 or self.decoder_channels[3] < 2:
            fail(f"decoder_channels={self.decoder_channels} must be 4 widths, the last at least 2")
        if self.num_seg_classes not in (1, 2):
            fail(f"num_seg_classes={self.num_seg_classes} must be 1 (sigmoid) or 2 (softmax)")
        if len(self.resnet_channels) != 3 or len(self.head_hidden_sizes) != 2:
            fail("resnet_channels takes 3 widths and head_hidden_sizes 2")
        if any(c < 1 for c in self.clinical_cardinalities):
            fail(f"clinical_cardinalities {self.clinical_cardinalities} must all be >= 1 (code 0 = unknown)")
        if self.use_clinical and not self.clinical_cardinalities and self.num_numeric == 0:
            fail("use_clinical=True but there are no clinical columns (clinical_cardinalities empty and num_numeric=0)")
        if self.num_numeric < 0:
            fail(f"num_numeric={self.num_numeric} must be >= 0")
        if self.cross_modal_fusion == "cmaf" and self.fusion_size % self.cmaf_heads:
            fail(f"fusion_size={self.fusion_size} is not divisible by cmaf_heads={self.cmaf_heads}")
        if self.time_encoding and self.temporal_fusion not in ("cmstf", "cmstf_nodiff"):
            fail(f"time_encoding needs temporal_fusion 'cmstf' or 'cmstf_nodiff', not {self.temporal_fusion!r}")

    @property
    def effective_patch_size(self) -> tuple[int, int, int]:
        """The ViT patch actually used: depth 1 in the planar variant."""
        return (1, *self.patch_size[1:]) if self.planar else self.patch_size

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(gd, gh, gw) of the ViT token grid of one scan (per slice in the planar variant: gd = 1)."""
        depth = 1 if self.planar else self.image_size[0]
        sizes = (depth, *self.image_size[1:])
        return tuple(s // p for s, p in zip(sizes, self.effective_patch_size))


PRESETS: dict[str, MSTNetConfig] = {
    "paper": MSTNetConfig(),
    "cpu": MSTNetConfig(
        image_size=(16, 96, 96), patch_size=(4, 16, 16), hidden_size=96, num_layers=4, num_heads=4, mlp_size=192,
        embedding_dropout=0.0, transformer_dropout=0.0, decoder_channels=(32, 16, 8, 4),
        clinical_embedding_size=32, resnet_channels=(4, 8, 16), fusion_hidden_size=64, fusion_size=32,
        head_hidden_sizes=(32, 16), cmaf_dropout=0.1,
    ),
    "tiny": MSTNetConfig(
        image_size=(8, 32, 32), patch_size=(4, 8, 8), hidden_size=32, num_layers=4, num_heads=2, mlp_size=64,
        embedding_dropout=0.0, transformer_dropout=0.0, decoder_channels=(32, 16, 8, 8),
        clinical_cardinalities=(3, 4), clinical_embedding_size=16, resnet_channels=(4, 8, 8),
        fusion_hidden_size=32, fusion_size=16, head_hidden_sizes=(32, 16), cmaf_dropout=0.0,
    ),
}


def mstnet_config(preset: str = "paper", **overrides: Any) -> MSTNetConfig:
    """The named preset with ``overrides`` applied (lists are accepted for tuple fields).

    Raises:
        KeyError: unknown preset. TypeError: unknown field. ValueError: an invalid combination.
    """
    try:
        base = PRESETS[preset]
    except KeyError:
        raise KeyError(f"unknown MST-Net preset {preset!r}; choose one of {sorted(PRESETS)}") from None
    known = {f.name for f in dataclasses.fields(MSTNetConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown MSTNetConfig field(s) {unknown}; known fields: {sorted(known)}")
    return dataclasses.replace(base, **overrides)

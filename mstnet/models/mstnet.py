"""MST-Net: multimodal spatiotemporal network for pulmonary nodule segmentation and prognosis.

The module tree follows the figure (seed/model.png):

- (a) ``vit`` (visual features, taps z3/z6/z9/z12) and ``clinical`` (textual features);
- (b) ViT-STUnet: ``stdm_z12``, ``stdm_z9`` and ``decoder`` (segmentation per time point,
  shared weights);
- (c) ``classifier``: per time point z12 and the ResNet ``global_branch`` on the
  segmentation output, ``temporal_fusion`` (CMSTF), ``image_projection``,
  ``cross_modal_fusion`` (CMAF) and the ``head``.

Example::

    config = mstnet_config("tiny")
    model = build_mstnet(config)
    out = model(torch.randn(2, 2, 1, 8, 32, 32), torch.zeros(2, 2, dtype=torch.long))
    out.seg_logits.shape  # (2, 2, 1, 8, 32, 32); out.cls_logits.shape == (2, 2)
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from mstnet.models.clinical import ClinicalEncoder
from mstnet.models.config import MSTNetConfig
from mstnet.models.decoder import UNETRDecoder
from mstnet.models.fusion import CrossModalAttentionFusion, TemporalFusion
from mstnet.models.output import ModelOutput, foreground_map
from mstnet.models.resnet3d import GlobalBranchResNet3d
from mstnet.models.stdm import STDM
from mstnet.models.vit import ViTEncoder


class SpatiotemporalClassifier(nn.Module):
    """MST-Net's classification network (Fig. 1c/e) after the clinical encoder.

    Per time point: z12 (C ch) and the ResNet global branch on the foreground probability
    (C ch), concatenated and average-pooled -> a 2C vector. Then temporal fusion
    (2C -> 2C), the image projection MLP (2C -> 512 -> 256), cross-modal fusion with the
    clinical vector (CMAF -> 512, or concatenation) and the head (-> 256 -> 128 -> 2).

    (B*T, C, g...) z12, (B*T, 1, D, H, W) foreground, (B, 256) clinical or None, (B, T) days
    -> (B, 2) logits and a dict of intermediate vectors.
    """

    def __init__(self, config: MSTNetConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        grid = config.token_grid
        if config.planar:
            grid = (config.image_size[0], *grid[1:])
        self.global_branch = GlobalBranchResNet3d(hidden, grid, config.resnet_channels)
        self.temporal_fusion = TemporalFusion(2 * hidden, config.temporal_fusion, config.num_timepoints,
                                              config.time_encoding, config.time_encoding_frequencies,
                                              config.classifier_dropout)
        self.image_projection = nn.Sequential(
            nn.Linear(2 * hidden, config.fusion_hidden_size), nn.ReLU(), nn.Dropout(config.classifier_dropout),
            nn.Linear(config.fusion_hidden_size, config.fusion_size), nn.ReLU(),
        )
        self.cross_modal_fusion = None
        if config.use_clinical and config.cross_modal_fusion == "cmaf":
            self.cross_modal_fusion = CrossModalAttentionFusion(config.fusion_size, config.cmaf_heads, config.cmaf_dropout)
        head_input = 2 * config.fusion_size if config.use_clinical else config.fusion_size
        first, second = config.head_hidden_sizes
        self.head = nn.Sequential(
            nn.Linear(head_input, first), nn.ReLU(), nn.Dropout(config.classifier_dropout),
            nn.Linear(first, second), nn.ReLU(), nn.Linear(second, 2),
        )

    def forward(self, z12: Tensor, foreground: Tensor, clinical: Tensor | None, days: Tensor | None,
                batch: int, timepoints: int) -> tuple[Tensor, dict[str, Tensor]]:
        local = z12.flatten(2).mean(dim=2)
        global_ = self.global_branch(foreground.to(z12.dtype)).flatten(2).mean(dim=2)
        per_timepoint = torch.cat([local, global_], dim=1).reshape(batch, timepoints, -1)
        image = self.image_projection(self.temporal_fusion(per_timepoint, days))
        features = {"timepoint_vectors": per_timepoint, "image_vector": image}
        if clinical is None:
            fused = image
        elif self.cross_modal_fusion is not None:
            fused = self.cross_modal_fusion(image, clinical.to(image.dtype))
        else:
            fused = torch.cat([image, clinical.to(image.dtype)], dim=1)
        features["fused_vector"] = fused
        return self.head(fused), features


class MSTNet(nn.Module):
    """MST-Net (ViT-STUnet segmentation + cross-modal spatiotemporal classification).

    ``forward(images [B, T, 1, D, H, W], clinical_categorical [B, C] long, clinical_numeric
    [B, N] float, days [B, T] float) -> ModelOutput`` with ``seg_logits [B, T, K, D, H, W]``
    (K = ``num_seg_classes``, 1 = sigmoid foreground) and ``cls_logits [B, 2]``.

    Training (the experiment's recipe stages): a joint stage optimises both losses at once
    (:class:`mstnet.models.losses.MultiTaskLoss`); the release's two stages train on the
    segmentation loss, then call :meth:`freeze_segmentation` and train
    :meth:`classification_parameters` on cross-entropy; the frozen segmentation network then
    runs without autograd and stays in eval mode.

    Args:
        config: every size and switch (:class:`MSTNetConfig`).
    """

    def __init__(self, config: MSTNetConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = ViTEncoder(
            image_size=(1, *config.image_size[1:]) if config.planar else config.image_size,
            patch_size=config.effective_patch_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            mlp_size=config.mlp_size,
            embedding_dropout=config.embedding_dropout,
            dropout=config.transformer_dropout,
            attention_dropout=config.attention_dropout,
            patch_embedding=config.patch_embedding,
            gradient_checkpointing=config.gradient_checkpointing,
        )
        self.stdm_z12 = STDM(config.hidden_size, config.stdm_heads, config.stdm_axis) if config.use_stdm else None
        self.stdm_z9 = STDM(config.decoder_channels[0], config.stdm_heads, config.stdm_axis) if config.use_stdm else None
        self.decoder = UNETRDecoder(config.hidden_size, config.effective_patch_size, config.decoder_channels,
                                    config.num_seg_classes, config.planar, config.gradient_checkpointing)
        self.clinical = None
        if config.use_clinical:
            self.clinical = ClinicalEncoder(config.clinical_cardinalities, config.num_numeric,
                                            config.clinical_embedding_size, config.fusion_size)
        self.classifier = SpatiotemporalClassifier(config)
        self.segmentation_frozen = False
        if config.channels_last_activations:
            self.decoder.to(memory_format=torch.channels_last_3d)
            self.classifier.global_branch.to(memory_format=torch.channels_last_3d)

    def segmentation_modules(self) -> list[nn.Module]:
        """The segmentation network: ViT, STDM modules and decoder."""
        return [m for m in (self.vit, self.stdm_z12, self.stdm_z9, self.decoder) if m is not None]

    def classification_modules(self) -> list[nn.Module]:
        """The classification network: clinical encoder (if used) and classifier."""
        return [m for m in (self.clinical, self.classifier) if m is not None]

    def segmentation_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.segmentation_modules() for p in module.parameters()]

    def classification_parameters(self) -> list[nn.Parameter]:
        return [p for module in self.classification_modules() for p in module.parameters()]

    def freeze_segmentation(self) -> None:
        """Second stage of the two-stage recipe: no gradients and eval mode (BatchNorm
        statistics, dropout) for the segmentation network, also after later ``train()`` calls."""
        self.segmentation_frozen = True
        for parameter in self.segmentation_parameters():
            parameter.requires_grad_(False)
        for module in self.segmentation_modules():
            module.eval()

    def unfreeze_segmentation(self) -> None:
        """Undo :meth:`freeze_segmentation`."""
        self.segmentation_frozen = False
        for parameter in self.segmentation_parameters():
            parameter.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> "MSTNet":
        super().train(mode)
        if self.segmentation_frozen:
            for module in self.segmentation_modules():
                module.eval()
        return self

    def _check_images(self, images: Tensor) -> tuple[int, int]:
        config = self.config
        expected = f"[B, {config.num_timepoints}, 1, {', '.join(map(str, config.image_size))}]"
        if images.dim() != 6:
            raise ValueError(f"images must be [B, T, 1, D, H, W] = {expected}; got {images.dim()} dims {tuple(images.shape)}")
        batch, timepoints, channels = images.shape[:3]
        if channels != 1 or tuple(images.shape[3:]) != config.image_size:
            raise ValueError(f"images must be {expected} (one channel, image_size {config.image_size}); got {tuple(images.shape)}")
        if timepoints != config.num_timepoints:
            raise ValueError(f"images hold {timepoints} time points but the model was built for num_timepoints="
                             f"{config.num_timepoints}; shape {tuple(images.shape)}")
        return batch, timepoints

    def _refine(self, stdm: STDM | None, batch: int, timepoints: int):
        """STDM as a skip refinement; in the planar variant (entries ordered b, t, slice) the
        time axis needs the slices moved ahead of the time points."""
        if stdm is None:
            return None
        if not (self.config.planar and stdm.axis == "time"):
            return lambda x: stdm(x, timepoints)
        depth = self.config.image_size[0]

        def refine(x: Tensor) -> Tensor:
            shape = x.shape[1:]
            by_slice = x.reshape(batch, timepoints, depth, *shape).transpose(1, 2).reshape(-1, *shape)
            refined = stdm(by_slice, timepoints)
            return refined.reshape(batch, depth, timepoints, *shape).transpose(1, 2).reshape(-1, *shape)

        return refine

    def segment(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, 1, D, H, W) -> seg logits (B, T, K, D, H, W) and z12 (B*T, C, gd, gh, gw)
        (per-slice maps stacked along depth in the planar variant: gd = D)."""
        batch, timepoints = self._check_images(images)
        depth, height, width = self.config.image_size
        scans = images.reshape(batch * timepoints * depth, 1, 1, height, width) if self.config.planar else \
            images.reshape(batch * timepoints, 1, depth, height, width)
        if self.config.channels_last_activations:
            scans = scans.contiguous(memory_format=torch.channels_last_3d)
        taps = self.vit(scans)
        logits = self.decoder(scans, taps, self._refine(self.stdm_z9, batch, timepoints),
                              self._refine(self.stdm_z12, batch, timepoints))
        z12 = taps[3]
        if self.config.planar:
            logits = logits.reshape(batch * timepoints, depth, *logits.shape[1:]).squeeze(3).transpose(1, 2)
            z12 = z12.reshape(batch * timepoints, depth, *z12.shape[1:]).squeeze(3).transpose(1, 2)
        return logits.reshape(batch, timepoints, *logits.shape[1:]), z12

    def frozen_features(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """What the classifier reads of the segmentation network, per patient.

        (B, T, 1, D, H, W) images -> seg logits (B, T, K, D, H, W) and ``{"z12": (B, T, C, gd, gh,
        gw), "foreground": (B, T, 1, D, H, W)}``. In the two-stage recipe's second stage these
        do not change (the segmentation network is frozen), so the harness may compute them
        once per patient and augmentation and reuse them
        (:mod:`mstnet.experiments.frozen_stage`); :meth:`classify` takes them back.
        """
        batch, timepoints = self._check_images(images)
        seg_logits, z12 = self.segment(images)
        foreground = foreground_map(seg_logits.flatten(0, 1))
        return seg_logits, {"z12": z12.reshape(batch, timepoints, *z12.shape[1:]),
                            "foreground": foreground.reshape(batch, timepoints, *foreground.shape[1:])}

    def classify(
        self,
        frozen: dict[str, Tensor],
        clinical_categorical: Tensor | None = None,
        clinical_numeric: Tensor | None = None,
        days: Tensor | None = None,
    ) -> ModelOutput:
        """The classification network on :meth:`frozen_features`' outputs: ``z12`` (B, T, C, g...)
        and ``foreground`` (B, T, 1, D, H, W), plus the clinical inputs and days (B, T) ->
        ``ModelOutput`` with ``cls_logits`` (B, 2) and no ``seg_logits``."""
        z12 = frozen["z12"]
        batch, timepoints = z12.shape[:2]
        if days is not None and tuple(days.shape) != (batch, timepoints):
            raise ValueError(f"days must be [B, T] = [{batch}, {timepoints}]; got {tuple(days.shape)}")
        return self._classify(frozen, self._clinical_vector(clinical_categorical, clinical_numeric), days)

    def _clinical_vector(self, categorical: Tensor | None, numeric: Tensor | None) -> Tensor | None:
        """(B, C) codes and (B, N) numbers -> (B, fusion_size), or None without the clinical branch."""
        return None if self.clinical is None else self.clinical(categorical, numeric)

    def _classify(self, frozen: dict[str, Tensor], clinical: Tensor | None, days: Tensor | None) -> ModelOutput:
        z12, foreground = frozen["z12"], frozen["foreground"]
        batch, timepoints = z12.shape[:2]
        cls_logits, features = self.classifier(z12.flatten(0, 1), foreground.flatten(0, 1), clinical, days,
                                               batch, timepoints)
        features["z12"] = z12
        if clinical is not None:
            features["clinical_vector"] = clinical
        return ModelOutput(seg_logits=None, cls_logits=cls_logits, features=features)

    def forward(
        self,
        images: Tensor,
        clinical_categorical: Tensor | None = None,
        clinical_numeric: Tensor | None = None,
        days: Tensor | None = None,
    ) -> ModelOutput:
        """See the class docstring; raises ValueError naming the bad input and its expected shape."""
        batch, timepoints = self._check_images(images)
        if days is not None and tuple(days.shape) != (batch, timepoints):
            raise ValueError(f"days must be [B, T] = [{batch}, {timepoints}]; got {tuple(days.shape)}")
        clinical = self._clinical_vector(clinical_categorical, clinical_numeric)
        with torch.no_grad() if self.segmentation_frozen else nullcontext():
            seg_logits, frozen = self.frozen_features(images)
        output = self._classify(frozen, clinical, days)
        return ModelOutput(seg_logits=seg_logits, cls_logits=output.cls_logits, features=output.features)


def build_mstnet(config: MSTNetConfig) -> MSTNet:
    """MST-Net for ``config`` (build under ``with torch.device("meta"):`` to inspect the paper size)."""
    return MSTNet(config)

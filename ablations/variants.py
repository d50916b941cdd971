"""The named ablations of MST-Net: one row of :data:`ABLATIONS` per variant.

Each variant is MST-Net as registered in :mod:`mstnet.experiments.catalog` with a small,
declared change: fields of :class:`mstnet.models.config.MSTNetConfig` (``config``), the data
it sees (``data_view``), its training stages (``stages``), or, for the one variant that drops
the images altogether, its own builder (``clinical-only``). Every other part of the recipe is
MST-Net's registered recipe for each preset (learning rate, epochs, ...), so a variant and the
full model differ only by the declared change. Every row is registered as an
experiment of group ``"ablation"``, so ``mstnet ablate NAME``, ``mstnet run NAME`` and
``mstnet list --group ablation`` find it.

Example::

    from mstnet.experiments.registry import get_experiment
    spec = get_experiment("no-stdm")
    spec.data_view, spec.recipe_for("cpu").stages  # DataView(timepoints=2, ...), ("segmentation", "classification")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from mstnet.experiments.catalog import MSTNET_RECIPES, mstnet_builder, mstnet_search_space, resolved_mstnet_config
from mstnet.experiments.registry import DEFAULT_CLINICAL_SOURCES, DataView, ModelContext, Recipe, register_experiment
from mstnet.models.clinical import ClinicalEncoder
from mstnet.models.config import MSTNetConfig
from mstnet.models.mstnet import SpatiotemporalClassifier
from mstnet.models.output import ModelOutput

FULL_MODEL = "mstnet"
"""The registered experiment every ablation is compared with."""

JOINT_STAGES = ("joint",)
"""One multi-task stage (0.7 x segmentation + 0.3 x classification, the release's joint run)."""


@dataclass(frozen=True)
class Ablation:
    """One named variant of MST-Net.

    Attributes:
        name: registry key, e.g. ``"no-stdm"``.
        description: one line for ``mstnet ablate --list`` and ``mstnet list``.
        question: what comparing it with the full model answers.
        config: overridden fields of ``MSTNetConfig`` (empty: the paper's configuration).
        data_view: time points, modalities and clinical sources fed (the full model: 2 time
            points + the clinical record's history and screening columns, no radiologist reads).
        information: the oracle subset its inputs carry (a key of ``oracle.json``); default
            (None): derived from ``data_view`` (:meth:`DataView.information`).
        stages: training stages replacing MST-Net's two-stage recipe (None: MST-Net's, per preset).
        tasks: the tasks its model solves.
        build: a builder replacing MST-Net's (None: MST-Net with ``config``).
    """

    name: str
    description: str
    question: str
    config: dict[str, Any] = field(default_factory=dict)
    data_view: DataView = DataView(timepoints=2, use_clinical=True)
    information: str | None = None
    stages: tuple[str, ...] | None = None
    tasks: tuple[str, ...] = ("segmentation", "classification")
    build: Callable[[ModelContext], nn.Module] | None = None

    def __post_init__(self) -> None:
        if self.information is None:
            object.__setattr__(self, "information", self.data_view.information())

    def changes(self) -> str:
        """What differs from the full model, as ``key=value`` text."""
        if self.build is not None:
            return "no images: its own model (clinical encoder + classification head)"
        parts = [f"{key}={value!r}" for key, value in self.config.items()]
        if self.data_view.timepoints != 2:
            parts.append(f"timepoints={self.data_view.timepoints}")
        if not self.data_view.use_clinical:
            parts.append("use_clinical=False")
        if self.data_view.clinical_sources != DEFAULT_CLINICAL_SOURCES:
            parts.append(f"clinical_sources={'+'.join(self.data_view.clinical_sources)}")
        if self.stages is not None:
            parts.append(f"stages={','.join(self.stages)}")
        return ", ".join(parts)


class ClinicalOnlyClassifier(nn.Module):
    """MST-Net's classification path on the clinical record alone (no images).

    The clinical encoder of MST-Net (shared categorical embedding + numeric token, mean over
    columns -> ``fusion_size``) and MST-Net's classification head built for an image vector
    of the same width (``fusion_size`` -> 256 -> 128 -> 2), taken from
    :class:`SpatiotemporalClassifier` so it follows any change of MST-Net's head.

    ``forward(images [B, T, 1, D, H, W] (ignored), clinical_categorical [B, C] long,
    clinical_numeric [B, N] float, days (ignored)) -> ModelOutput`` with ``cls_logits [B, 2]``
    and ``seg_logits=None``.

    Args:
        config: MST-Net's configuration; its clinical and head sizes are used.
    """

    def __init__(self, config: MSTNetConfig) -> None:
        super().__init__()
        self.config = config
        self.clinical = ClinicalEncoder(config.clinical_cardinalities, config.num_numeric,
                                        config.clinical_embedding_size, config.fusion_size)
        self.head = SpatiotemporalClassifier(dataclasses.replace(config, use_clinical=False)).head

    def forward(self, images: Tensor | None = None, clinical_categorical: Tensor | None = None,
                clinical_numeric: Tensor | None = None, days: Tensor | None = None) -> ModelOutput:
        clinical = self.clinical(clinical_categorical, clinical_numeric)
        return ModelOutput(seg_logits=None, cls_logits=self.head(clinical), features={"clinical_vector": clinical})

    def config_dict(self) -> dict[str, Any]:
        """The JSON-able configuration written to ``config.json``."""
        return dataclasses.asdict(self.config)


def build_clinical_only(context: ModelContext) -> nn.Module:
    """:class:`ClinicalOnlyClassifier` sized by the context's preset and clinical columns."""
    if not context.clinical_cardinalities and context.num_numeric == 0:
        raise ValueError("clinical-only needs clinical columns; this cohort's clinical table has none")
    return ClinicalOnlyClassifier(resolved_mstnet_config(dataclasses.replace(context, use_clinical=True)))


ABLATIONS: tuple[Ablation, ...] = (
    Ablation(
        "image-only", "MST-Net without the clinical record: no clinical encoder, no CMAF, head on the image vector.",
        "How much does the clinical record (and CMAF) add to the images?",
        data_view=DataView(timepoints=2, use_clinical=False),
    ),
    Ablation(
        "clinical-only", "MST-Net's clinical encoder and classification head alone, no images (no segmentation).",
        "How far does the clinical record alone go?",
        data_view=DataView(timepoints=1, use_clinical=True), information="clinical",
        tasks=("classification",), build=build_clinical_only,
    ),
    Ablation(
        "single-timepoint", "MST-Net on the latest scan only (T = 1; CMSTF sees the pair (f, f), no change).",
        "How much does the earlier scan (growth) add?",
        data_view=DataView(timepoints=1, use_clinical=True),
    ),
    Ablation(
        "three-scan", "MST-Net on the latest three scans (T0, T1, T2) instead of two; CMSTF fuses the three.",
        "Does a third, earlier scan add to two (the spatiotemporal claim, one step further)?",
        data_view=DataView(timepoints=3, use_clinical=True),
    ),
    Ablation(
        "with-reads", "MST-Net whose clinical branch also sees the radiologist's reads (nodule type, spiculation, "
                      "emphysema, upper lobe, nodule count).",
        "How much do the radiologist's reads of the CT add to the images and the clinical record?",
        data_view=DataView(timepoints=2, use_clinical=True, clinical_sources=("history", "screening", "read")),
    ),
    Ablation(
        "planar-2d", "ViT and decoder per axial slice (2D) instead of volumetric; the classifier sees the stack.",
        "Does volumetric (3D) context help over slice-wise processing?",
        config={"planar": True},
    ),
    Ablation(
        "no-stdm", "Without STDM on the z12 and z9 skips of the decoder.",
        "Does the spatial-temporal dependency module help segmentation or classification?",
        config={"use_stdm": False},
    ),
    Ablation(
        "fusion-no-difference", "CMSTF temporal fusion without the difference term f1 - f0.",
        "Does the explicit change term help the temporal fusion?",
        config={"temporal_fusion": "cmstf_nodiff"},
    ),
    Ablation(
        "concat-fusion", "Image and clinical vectors concatenated instead of fused by CMAF.",
        "Does cross-modal attention beat plain concatenation?",
        config={"cross_modal_fusion": "concat"},
    ),
    Ablation(
        "joint-training", "One joint multi-task stage (0.7 segmentation + 0.3 classification) instead of two stages.",
        "Does end-to-end multi-task training beat the paper's two-stage recipe?",
        stages=JOINT_STAGES,
    ),
    Ablation(
        "conv-stem", "A convolutional stem instead of the linear patch projection (201 M parameters at paper size).",
        "Is the huge linear patch projection needed, or does a light conv stem do as well?",
        config={"patch_embedding": "conv_stem"},
    ),
    Ablation(
        "stdm-across-time", "STDM attention across time points (same position at T0 and T1) instead of across slices.",
        "Does STDM gain when its attention is really temporal, as its name promises?",
        config={"stdm_axis": "time"},
    ),
    Ablation(
        "time-aware-fusion", "Three scans (T0, T1, T2) with the days between them encoded into CMSTF.",
        "Do a third scan and the real scan intervals help?",
        config={"time_encoding": True}, data_view=DataView(timepoints=3, use_clinical=True),
    ),
    Ablation(
        "temporal-mean", "The mean of the per-time-point vectors instead of CMSTF.",
        "Does CMSTF beat parameter-free averaging over time?",
        config={"temporal_fusion": "mean"},
    ),
    Ablation(
        "temporal-last", "The latest time point's vector instead of CMSTF (both scans still segmented).",
        "Does fusing time points beat using the latest scan's features?",
        config={"temporal_fusion": "last"},
    ),
    Ablation(
        "temporal-concat", "Per-time-point vectors concatenated and projected (LayerNorm, linear, ReLU) instead of CMSTF.",
        "Does CMSTF's pairwise design beat a plain concatenation over time?",
        config={"temporal_fusion": "concat"},
    ),
)
"""Every named ablation, in the order tables show them."""


def ablation(name: str) -> Ablation:
    """The row of :data:`ABLATIONS` called ``name``."""
    for row in ABLATIONS:
        if row.name == name:
            return row
    raise KeyError(f"no ablation named {name!r}; known: {', '.join(row.name for row in ABLATIONS)}")


def recipes_like_full_model(stages: tuple[str, ...] | None) -> dict[str, Recipe]:
    """MST-Net's registered recipe for every preset (:data:`mstnet.experiments.catalog.MSTNET_RECIPES`, read from
    its module, not the registry, so that the order in which plugins register does not matter), with ``stages``
    replaced when given. A recipe with a length per stage (``stage_epochs``) then trains every new stage for
    its first stage's length: the segmentation stage's, the budget of a stage that segments (the cpu
    recipe's 12/4 epochs become 12 for one joint stage)."""
    if stages is None:
        return dict(MSTNET_RECIPES)
    return {preset: dataclasses.replace(recipe, stages=stages, **(
        {"stage_epochs": None, "epochs": recipe.stage_epochs[0]} if recipe.stage_epochs else {}))
        for preset, recipe in MSTNET_RECIPES.items()}


def _register(row: Ablation) -> None:
    unknown = set(row.config) - {f.name for f in dataclasses.fields(MSTNetConfig)}
    if unknown:
        raise ValueError(f"ablation {row.name!r}: {sorted(unknown)} are not fields of MSTNetConfig")
    register_experiment(
        row.name,
        description=row.description,
        tasks=row.tasks,
        group="ablation",
        information=row.information,
        data_view=row.data_view,
        recipe=recipes_like_full_model(row.stages),
        footnote=f"MST-Net with {row.changes()}.",
        search_space=mstnet_search_space if row.build is None else None,
    )(row.build or mstnet_builder(**row.config))


for _row in ABLATIONS:
    _register(_row)

__all__ = ["ABLATIONS", "Ablation", "ClinicalOnlyClassifier", "FULL_MODEL", "ablation", "build_clinical_only"]

"""The paper's claims as paired comparisons: which experiment, which variant, which ceilings (a declarative table).

The seed paper claims that MST-Net trained on multimodal (scans plus the clinical record),
spatiotemporal (several screening rounds) and volumetric data beats the same model trained on a
single modality, a single time point or planar data, for segmentation and for prognosis. Each
:class:`Claim` is one such comparison: the experiment that has the information (``better``)
against the variant that lacks it (``worse``), the metrics on which it is judged, and the two
information sets whose oracle ceilings (``oracle.json``, :mod:`mstnet.information`) say how much
the lacking information can be worth on this cohort.

Used by ``mstnet reproduce claims`` (which experiments to run), by the claims table
(:mod:`mstnet.reporting.claims_table`) and by the power simulation of the signal-controlled
cohort (:mod:`mstnet.synth.power`). This module imports nothing of the project, so every layer
may read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TWO_STAGE_SEGMENTATION_NOTE = ("vacuous under the two-stage recipe: the segmentation network is trained before, and "
                               "without, the clinical record, so a Dice gap can only be training noise")


@dataclass(frozen=True)
class Claim:
    """One claimed advantage, tested as a paired comparison on the same folds and patients.

    Attributes:
        name: the claim (``multimodal``, ``spatiotemporal``, ``volumetric``).
        better: the experiment that has the information (registry name).
        worse: the variant that lacks it (registry name).
        lacks: what the variant lacks, in words.
        metrics: the table's metrics this claim is judged on (``auc``, ``dice``).
        ceiling: the information sets (keys of ``oracle.json``) of ``better`` and ``worse``:
            their oracle AUCs bound what each can reach. Equal keys: the ceilings cannot tell the
            two apart (the information is the same; only the processing differs).
        required_ceiling_gap: the AUC gap the signal-controlled cohort is built to have between
            the two ceilings (None: no requirement).
        vacuous: metric -> why that comparison cannot test the claim by the paper's own design.
    """

    name: str
    better: str
    worse: str
    lacks: str
    metrics: tuple[str, ...]
    ceiling: tuple[str, str]
    required_ceiling_gap: float | None = None
    vacuous: dict[str, str] = field(default_factory=dict)

    @property
    def comparison(self) -> str:
        """``"mstnet vs image-only"``."""
        return f"{self.better} vs {self.worse}"


CLAIMS: tuple[Claim, ...] = (
    Claim("multimodal", "mstnet", "image-only", "the clinical record", ("auc", "dice"),
          ("scans2+clinical", "scans2"), required_ceiling_gap=0.05, vacuous={"dice": TWO_STAGE_SEGMENTATION_NOTE}),
    Claim("multimodal", "mstnet", "clinical-only", "the images", ("auc",), ("scans2+clinical", "clinical")),
    Claim("spatiotemporal", "mstnet", "single-timepoint", "the earlier scan", ("auc", "dice"),
          ("scans2+clinical", "scans1+clinical"), required_ceiling_gap=0.10),
    Claim("spatiotemporal", "three-scan", "mstnet", "the earliest of three scans", ("auc", "dice"),
          ("scans3+clinical", "scans2+clinical")),
    Claim("volumetric", "mstnet", "planar-2d", "volumetric (3D) processing", ("auc", "dice"),
          ("scans2+clinical", "scans2+clinical")),
)
"""Every claim the claims table tests, in its row order."""

CLAIM_EXPERIMENTS: tuple[str, ...] = tuple(dict.fromkeys(name for claim in CLAIMS for name in (claim.better, claim.worse)))
"""The experiments ``mstnet reproduce claims`` runs (the full model first)."""

CLINICAL_ONLY_FLOOR = 0.65
"""The signal-controlled cohort's clinical-only ceiling AUC is built to be at least this ("well above 0.5")."""

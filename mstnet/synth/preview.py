"""A picture of a cohort: for several patients, the slice through the nodule at every time point with the mask outline."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from mstnet.atomic import atomic_path  # noqa: E402
from mstnet.data.io import read_mask, read_volume  # noqa: E402


def _format_vdt(value: float) -> str:
    if not math.isfinite(value) or abs(value) > 5000:
        return "stable"
    return f"VDT {value:.0f} d" if value > 0 else f"halves in {-value:.0f} d"


def preview_cohort(folder: str | Path, out: str | Path | None = None, patients: int = 6, window: tuple[float, float] = (-1000.0, 400.0)) -> Path:
    """Write a PNG grid: one row per patient (benign and malignant alternating), one column per time point.

    Each panel is the slice through the nodule's centre (from the manifest) in a lung window,
    with the reference mask outlined; rows are titled with the label and, for a synthetic
    cohort, the true VDT.

    Args:
        folder: a cohort folder (``manifest.csv``; ``ground_truth.csv`` when synthetic).
        out: PNG path (default ``<folder>/preview.png``).
        patients: rows.
        window: display window in HU.
    """
    folder = Path(folder)
    manifest = pd.read_csv(folder / "manifest.csv")
    truth_path = folder / "ground_truth.csv"
    truth = pd.read_csv(truth_path).set_index("patient_id") if truth_path.exists() else None
    labels = manifest.groupby("patient_id")["label"].first()
    benign = [p for p in labels.index if labels[p] == 0]
    malignant = [p for p in labels.index if labels[p] == 1]
    chosen: list[str] = []
    while len(chosen) < patients and (benign or malignant):
        for pool in (benign, malignant):
            if pool and len(chosen) < patients:
                chosen.append(pool.pop(0))
    timepoints = sorted(manifest["timepoint"].unique(), key=lambda t: (len(t), t))
    figure, axes = plt.subplots(len(chosen), len(timepoints), figsize=(2.6 * len(timepoints), 2.6 * len(chosen)), squeeze=False)
    for row, patient_id in enumerate(chosen):
        rows = manifest[manifest["patient_id"] == patient_id].set_index("timepoint")
        title = "malignant" if labels[patient_id] == 1 else "benign"
        if truth is not None:
            title += f", {_format_vdt(float(truth.loc[patient_id, 'vdt_days']))}, {truth.loc[patient_id, 'texture']}"
        for column, timepoint in enumerate(timepoints):
            axis = axes[row, column]
            axis.set_axis_off()
            if timepoint not in rows.index:
                continue
            record = rows.loc[timepoint]
            image = read_volume(folder / record["image"]).array
            z = int(round((record["nodule_z1"] + record["nodule_z2"]) / 2)) if pd.notna(record["nodule_z1"]) else image.shape[0] // 2
            axis.imshow(image[z], cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
            if isinstance(record["mask"], str) and record["mask"]:
                mask = read_mask(folder / record["mask"], image_shape=image.shape).array
                if mask[z].any():
                    axis.contour(mask[z].astype(float), levels=[0.5], colors="tab:red", linewidths=0.8)
            axis.set_title(f"{patient_id} {timepoint} (day {record['days']:.0f})", fontsize=7)
        axes[row, 0].text(-0.05, 0.5, title, transform=axes[row, 0].transAxes, rotation=90, ha="right", va="center", fontsize=7)
    figure.tight_layout()
    out = Path(out) if out is not None else folder / "preview.png"
    try:
        with atomic_path(out, ".png") as temporary:
            figure.savefig(temporary, dpi=110)
    finally:
        plt.close(figure)
    return out

"""Report figures from result files: matplotlib (Agg canvas, no pyplot state) and seaborn; PNG and PDF.

Every ``*_figure`` function writes ``<stem>.png`` and ``<stem>.pdf`` into ``out_dir`` (each to
a temporary name, then renamed) and returns the written paths; it returns ``[]`` when the
results hold nothing to draw. The training and learning curves are drawn by
:mod:`mstnet.reporting.curves`, the shared helpers live in :mod:`mstnet.reporting.plotting`.

``gallery.npz`` (one per segmentation fold, written by the harness; read here):

============  ==============  ===================================================================
key           dtype, shape    meaning
============  ==============  ===================================================================
image         float [N,T,H,W] the axial slice through the nodule of each of the T time points of
                              N test cases (intensity as fed to the model, or HU)
mask          bool  [N,T,H,W] ground-truth nodule mask on the same slices
pred          bool  [N,T,H,W] predicted mask on the same slices
patient_id    str   [N]       the case's patient
dice          float [N]       the case's Dice: mean over its scans in ``segmentation.csv``
timepoints    str [N,T]       optional: each case's time-point names (the scans the model saw, e.g.
                              T1, T2 of three); also read: str [T] (every case alike) or an int T
                              (old files: shown as "scan 1".."scan T", never as made-up names)
scan_dice     float [N,T]     optional: each scan's Dice, as in ``segmentation.csv``
============  ==============  ===================================================================

The gallery figure pools the cases of every fold of an experiment and shows the best, the
median and the worst by ``dice``: one row per case, one column per time point, the image in
grey with the ground-truth contour (green) and the predicted contour (magenta), each panel
titled with its time point's name and that scan's Dice.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_curve

from mstnet.metrics import classification_metric_samples, patient_draws, percentile_interval
from mstnet.reporting.ablation_table import ABLATION_METRICS, AblationTable
from mstnet.reporting.curves import learning_curves_figure, training_curves_figure
from mstnet.reporting.size_strata import dice_by_size_figure
from mstnet.reporting.formats import stars
from mstnet.reporting.plotting import (
    display_order,
    figure_style,
    file_stem,
    new_figure,
    palette,
    save_figure,
)
from mstnet.reporting.results import Results
from mstnet.reporting.table_data import COLUMN_BY_KEY, method_name

log = logging.getLogger(__name__)

GALLERY_KEYS: tuple[str, ...] = ("image", "mask", "pred", "patient_id", "dice")
TRUTH_COLOUR, PREDICTION_COLOUR = "#1a9850", "#d01c8b"
FPR_GRID = np.linspace(0.0, 1.0, 201)


def _with_task(results: Results, task: str) -> list[str]:
    """The experiments with values for ``task``, in display order."""
    return [n for n in display_order(results) if results.has_task(n, task)]


def _pooled_predictions(results: Results) -> list[tuple[str, tuple, pd.DataFrame]]:
    """(name, colour, pooled out-of-fold predictions) of every classification experiment, in display order."""
    names = _with_task(results, "classification")
    colours = palette(names)
    return [(name, colours[name], results.predictions[results.predictions["experiment"] == name]) for name in names]


def roc_figure(results: Results, out_dir: Path, n_resamples: int = 1000, seed: int = 0,
               confidence: float = 0.95) -> list[Path]:
    """ROC curves of every classification experiment (pooled out-of-fold) with bootstrap bands.

    The band is the pointwise percentile interval of the TPR at fixed FPR over patient
    resamples; the legend gives the AUC and its bootstrap interval.
    """
    classifiers = _pooled_predictions(results)
    if not classifiers:
        return []
    with figure_style():
        figure = new_figure(6.4, 6.0)
        axes = figure.add_subplot()
        for name, colour, pooled in classifiers:
            labels, probabilities = pooled["label"].to_numpy(), pooled["probability"].to_numpy()
            if np.unique(labels).size < 2:
                log.warning("%s: a single class in the pooled predictions; no ROC curve", name)
                continue
            fpr, tpr, _ = roc_curve(labels, probabilities)
            draws = patient_draws(labels.size, n_resamples, seed)
            curves = []
            for drawn in draws:
                if np.unique(labels[drawn]).size == 2:
                    resampled_fpr, resampled_tpr, _ = roc_curve(labels[drawn], probabilities[drawn])
                    curves.append(np.interp(FPR_GRID, resampled_fpr, resampled_tpr))
            auc = classification_metric_samples(labels, probabilities, np.arange(labels.size)[None, :])["auc"][0]
            low, high = percentile_interval(classification_metric_samples(labels, probabilities, draws)["auc"], confidence)
            axes.plot(fpr, tpr, color=colour, linewidth=2,
                      label=f"{method_name(results, name)}  AUC {auc:.3f} [{low:.3f}, {high:.3f}]")
            if curves:
                tail = (1.0 - confidence) / 2.0 * 100.0
                band_low, band_high = np.percentile(np.array(curves), [tail, 100.0 - tail], axis=0)
                axes.fill_between(FPR_GRID, band_low, band_high, color=colour, alpha=0.15, linewidth=0)
        axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
                 ylabel="True positive rate (sensitivity)", title="ROC, pooled out-of-fold predictions")
        axes.set_aspect("equal")
        axes.legend(loc="lower right", frameon=True)
        return save_figure(figure, out_dir, "roc_curves")


def fold_box_figure(results: Results, out_dir: Path) -> list[Path]:
    """Per-fold Dice (%) and HD95 (mm) of every segmentation experiment: box plot with the folds as points."""
    names = _with_task(results, "segmentation")
    if not names:
        return []
    frame = results.fold_metrics[results.fold_metrics["experiment"].isin(names)].copy()
    frame["method"] = [method_name(results, n) for n in frame["experiment"]]
    frame["Dice (%)"] = 100.0 * frame["dice"]
    frame["HD95 (mm)"] = frame["hd95"]
    order = [method_name(results, n) for n in names]
    with figure_style():
        figure = new_figure(max(6.0, 1.3 * len(names) + 2.0), 4.6)
        for index, column in enumerate(("Dice (%)", "HD95 (mm)")):
            axes = figure.add_subplot(1, 2, index + 1)
            sns.boxplot(data=frame, x="method", y=column, order=order, ax=axes, color="#d9e6f2", fliersize=0,
                        width=0.6)
            sns.stripplot(data=frame, x="method", y=column, order=order, ax=axes, color="#08306b", size=5,
                          jitter=0.15)
            axes.set(xlabel="", title=f"{column.split(' ')[0]} per fold")
            axes.tick_params(axis="x", rotation=30)
            for label in axes.get_xticklabels():
                label.set_horizontalalignment("right")
        return save_figure(figure, out_dir, "fold_dice_hd95")


def ablation_figure(table: AblationTable | None, out_dir: Path) -> list[Path]:
    """Variant minus reference (percentage points) per metric, 95% paired intervals and significance stars."""
    if table is None or table.frame.empty:
        return []
    metrics = [m for m in ABLATION_METRICS if np.isfinite(table.frame[f"{m}_diff"].astype(float)).any()]
    if not metrics:
        return []
    variants = list(table.frame["experiment"])
    with figure_style():
        figure = new_figure(3.4 * len(metrics), 1.0 + 0.55 * len(variants) + 1.0)
        for index, metric in enumerate(metrics):
            axes = figure.add_subplot(1, len(metrics), index + 1, sharey=figure.axes[0] if index else None)
            diff = 100.0 * table.frame[f"{metric}_diff"].to_numpy(float)
            low = 100.0 * table.frame[f"{metric}_ci_low"].to_numpy(float)
            high = 100.0 * table.frame[f"{metric}_ci_high"].to_numpy(float)
            positions = np.arange(len(variants))
            colours = ["#c0392b" if d < 0 else "#2e86c1" for d in np.nan_to_num(diff)]
            axes.barh(positions, np.nan_to_num(diff), color=colours, alpha=0.8, height=0.6)
            error = np.vstack([np.nan_to_num(diff - low), np.nan_to_num(high - diff)])
            axes.errorbar(np.nan_to_num(diff), positions, xerr=np.clip(error, 0, None), fmt="none", ecolor="black",
                          capsize=3, linewidth=1)
            for position, value, upper, lower, p_value in zip(positions, diff, high, low, table.frame[f"{metric}_p"]):
                mark = stars(p_value)
                if mark and np.isfinite(value):
                    edge = upper if value >= 0 else lower
                    axes.text(edge, position, f" {mark}" if value >= 0 else f"{mark} ", va="center",
                              ha="left" if value >= 0 else "right", fontsize=11, fontweight="bold")
            axes.axvline(0.0, color="black", linewidth=0.8)
            if index == 0:
                axes.set_yticks(positions, variants)
                axes.set_ylim(len(variants) - 0.4, -0.6)
            else:
                axes.tick_params(labelleft=False)
            axes.set(xlabel="difference (pp)", title=f"Δ{COLUMN_BY_KEY[metric].label}")
            axes.margins(x=0.25)
        figure.suptitle(f"Ablations against {table.reference} (95% paired bootstrap intervals; * p<0.05, ** p<0.01, "
                        "*** p<0.001)")
        return save_figure(figure, out_dir, "ablation_differences")


def calibration_figure(results: Results, out_dir: Path, n_bins: int = 10) -> list[Path]:
    """Reliability diagram (``sklearn.calibration.calibration_curve``, uniform bins) of every classifier."""
    classifiers = _pooled_predictions(results)
    if not classifiers:
        return []
    with figure_style():
        figure = new_figure(6.4, 6.8)
        grid = figure.add_gridspec(2, 1, height_ratios=(3, 1))
        axes = figure.add_subplot(grid[0])
        histogram = figure.add_subplot(grid[1], sharex=axes)
        for name, colour, pooled in classifiers:
            fraction, mean_predicted = calibration_curve(pooled["label"], pooled["probability"], n_bins=n_bins,
                                                         strategy="uniform")
            brier = float(np.mean((pooled["probability"] - pooled["label"]) ** 2))
            axes.plot(mean_predicted, fraction, marker="o", color=colour, linewidth=1.5,
                      label=f"{method_name(results, name)} (Brier {brier:.3f})")
            histogram.hist(pooled["probability"], bins=np.linspace(0, 1, n_bins + 1), histtype="step",
                           color=colour, linewidth=1.5)
        axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
        axes.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction malignant", title="Calibration (pooled out-of-fold)")
        axes.legend(loc="upper left")
        histogram.set(xlabel="predicted probability of malignancy", ylabel="patients")
        return save_figure(figure, out_dir, "calibration")


def read_gallery(path: Path) -> dict[str, np.ndarray]:
    """Load and check one ``gallery.npz`` (format in the module docstring); names time points."""
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in GALLERY_KEYS if key not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}; expected {list(GALLERY_KEYS)}")
        gallery = {key: archive[key] for key in archive.files}
    image = gallery["image"]
    if image.ndim != 4:
        raise ValueError(f"{path}: image must be [N, T, H, W], got shape {image.shape}")
    for key in ("mask", "pred"):
        if gallery[key].shape != image.shape:
            raise ValueError(f"{path}: {key} has shape {gallery[key].shape}, image has {image.shape}")
    for key in ("patient_id", "dice"):
        if gallery[key].shape != (image.shape[0],):
            raise ValueError(f"{path}: {key} must have one entry per case ({image.shape[0]}), got {gallery[key].shape}")
    n_cases, n_timepoints = image.shape[:2]
    names = gallery.get("timepoints")
    if names is not None and names.shape == (n_timepoints,):
        names = np.broadcast_to(names, (n_cases, n_timepoints))
    if names is None or names.shape != (n_cases, n_timepoints):
        names = np.broadcast_to(np.array([f"scan {t + 1}" for t in range(n_timepoints)]), (n_cases, n_timepoints))
    gallery["timepoints"] = np.asarray(names).astype(str)
    scan_dice = gallery.get("scan_dice")
    if scan_dice is None or scan_dice.shape != (n_cases, n_timepoints):
        scan_dice = np.full((n_cases, n_timepoints), np.nan)
    gallery["scan_dice"] = np.asarray(scan_dice, dtype=np.float64)
    return gallery


def _display_window(image: np.ndarray) -> tuple[float, float]:
    if image.min() < -200.0:  # Hounsfield units: a lung window
        return -1000.0, 400.0
    low, high = np.percentile(image, [1, 99])
    return float(low), float(max(high, low + 1e-6))


def gallery_figure(results: Results, experiment: str, out_dir: Path) -> list[Path]:
    """Best, median and worst cases by Dice of ``experiment`` (all folds pooled), contours on each time point."""
    paths = [path for (name, _), path in sorted(results.galleries.items()) if name == experiment]
    if not paths:
        return []
    cases = []
    for path in paths:
        gallery = read_gallery(path)
        for i in range(gallery["image"].shape[0]):
            cases.append({key: gallery[key][i] for key in ("image", "mask", "pred", "patient_id", "dice",
                                                            "timepoints", "scan_dice")})
    cases.sort(key=lambda case: float(case["dice"]))
    chosen = {"worst": 0, "median": len(cases) // 2, "best": len(cases) - 1}
    picks = [(label, cases[index]) for label, index in sorted(chosen.items(), key=lambda item: -item[1])]
    n_timepoints = max(case["image"].shape[0] for _, case in picks)
    with figure_style():
        figure = new_figure(2.6 * n_timepoints + 0.6, 2.7 * len(picks))
        for row, (label, case) in enumerate(picks):
            low, high = _display_window(case["image"])
            for t in range(case["image"].shape[0]):
                axes = figure.add_subplot(len(picks), n_timepoints, row * n_timepoints + t + 1)
                axes.imshow(case["image"][t], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
                for mask, colour in ((case["mask"][t], TRUTH_COLOUR), (case["pred"][t], PREDICTION_COLOUR)):
                    if mask.any():  # padded, so a mask touching or filling the slice still gets a closed outline
                        rows, columns = mask.shape
                        axes.contour(np.arange(-1, columns + 1), np.arange(-1, rows + 1), np.pad(mask, 1).astype(float),
                                     levels=[0.5], colors=[colour], linewidths=1.5)
                axes.set_xticks([]), axes.set_yticks([])
                axes.grid(False)
                scan_dice = float(case["scan_dice"][t])
                axes.set_title(f"{case['timepoints'][t]}" + (f", Dice {scan_dice:.2f}" if np.isfinite(scan_dice) else ""),
                               fontsize=10)
                if t == 0:
                    axes.set_ylabel(f"{label}\n{case['patient_id']}\nmean Dice {float(case['dice']):.2f}", fontsize=10)
        handles = [Line2D([], [], color=TRUTH_COLOUR, label="ground truth"),
                   Line2D([], [], color=PREDICTION_COLOUR, label="prediction")]
        figure.legend(handles=handles, loc="outside lower center", ncols=2)
        figure.suptitle(f"{method_name(results, experiment)}: best, median, worst test case by Dice")
        return save_figure(figure, out_dir, f"gallery_{file_stem(experiment)}")


def optuna_figures(results: Results, out_dir: Path) -> list[Path]:
    """Optimisation history and parameter importances of every Optuna study (``<experiment>/tuning/study.db``).

    A study that cannot be read, or has too few finished trials for importances, is skipped
    with a logged warning.
    """
    if not results.studies:
        return []
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    written: list[Path] = []
    for experiment, database in results.studies.items():
        storage = f"sqlite:///{database}"
        try:
            study_names = optuna.get_all_study_names(storage=storage)
        except Exception as error:  # a corrupt or foreign database must not stop the report
            log.warning("%s: not a readable Optuna study (%s); skipped", database, error)
            continue
        for study_name in study_names:
            study = optuna.load_study(study_name=study_name, storage=storage)
            suffix = file_stem(experiment) + ("" if len(study_names) == 1 else f"_{file_stem(study_name)}")
            complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if not complete:
                log.warning("%s: study %r has no finished trial; skipped", database, study_name)
                continue
            plots = {"optuna_history": optuna_plots.plot_optimization_history,
                     "optuna_importances": optuna_plots.plot_param_importances}
            for stem, plot in plots.items():
                with figure_style(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    try:
                        axes = plot(study)
                    except (ValueError, RuntimeError) as error:
                        log.warning("%s: %s of study %r not drawn (%s)", database, stem, study_name, error)
                        continue
                    figure = axes.figure
                    figure.set_size_inches(7.0, 4.5)
                    figure.set_layout_engine("constrained")
                    axes.set_title(f"{method_name(results, experiment)}: {axes.get_title()}")
                    try:
                        written += save_figure(figure, out_dir, f"{stem}_{suffix}")
                    finally:
                        plt.close(figure)
    return written


def all_figures(results: Results, out_dir: Path, ablations: AblationTable | None = None, n_resamples: int = 1000,
                seed: int = 0) -> dict[str, list[Path]]:
    """Every figure the results allow; section name -> written paths (PNG and PDF)."""
    out_dir = Path(out_dir)
    figures = {
        "ROC curves": roc_figure(results, out_dir, n_resamples=n_resamples, seed=seed),
        "Calibration": calibration_figure(results, out_dir),
        "Per-fold Dice and HD95": fold_box_figure(results, out_dir),
        "Dice by nodule size": dice_by_size_figure(results, out_dir),
        "Ablations": ablation_figure(ablations, out_dir),
        "Training curves": training_curves_figure(results, out_dir),
        "Learning curves": learning_curves_figure(results, out_dir),
    }
    segmentation_names = [n for n in display_order(results) if any(name == n for name, _ in results.galleries)]
    figures["Segmentation gallery"] = [p for n in segmentation_names for p in gallery_figure(results, n, out_dir)]
    figures["Optuna"] = optuna_figures(results, out_dir)
    return {section: paths for section, paths in figures.items() if paths}


def png_paths(paths: Sequence[Path]) -> list[Path]:
    """The PNG files of a list of written figure files."""
    return [Path(p) for p in paths if Path(p).suffix == ".png"]


"""Training and learning curves from the fold files: ``history.csv``, ``timing.csv``, ``run.json``, ``config.json``.

Two figures, both of training-seed replicate 0 (``<experiment>/fold<k>/``):

- ``training_curves``: train (solid) and inner-validation (dashed) loss per epoch, one panel
  per (experiment, training stage), one colour per fold, titled with the stage and labelled
  with the loss that stage minimises (``Dice+CE`` for segmentation, cross-entropy for
  classification, the recipe's weighted sum for a joint stage); a star marks each fold's
  chosen epoch (``run.json`` ``selected_epoch``) on its validation curve. Epochs are counted
  from 1 within their stage, as in ``train.log``.
- ``learning_curves``: inner-validation Dice (top) and AUC (bottom) against optimizer steps
  (left) and cumulative wall seconds (right), one colour per row: the mean over folds at each
  epoch, the range over folds as a light band, and a dot at each fold's chosen epoch. Dice
  is drawn for segmentation and joint stages, AUC for classification and joint stages, so a
  two-stage row's Dice comes from its segmentation stage and its AUC from its classification
  stage, its step count running on across both. Each stage is its own line: no line joins
  the last epoch of one stage to the first of the next. Rows whose folds lack ``timing.csv``
  appear in the steps panels only; rows with a fold short of its plateau
  (``run.json`` ``plateau_reached`` false) say so in the legend.

The data behind both figures comes from pure functions (:func:`fold_points`,
:func:`learning_curve_data`, :func:`chosen_epochs`, :func:`stage_segments`) that return pandas
frames, so what is drawn can be checked without looking at pixels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from mstnet.reporting.plotting import display_order, figure_style, new_figure, palette, save_figure
from mstnet.reporting.results import Results, ResultsError
from mstnet.reporting.table_data import method_name
from mstnet.results_files import CONFIG_FILE, HISTORY_FILE, RUN_FILE, TIMING_FILE

DEFAULT_STAGE = "joint"
"""The stage of a ``history.csv`` written before stages were recorded (one stage on every loss)."""
POINT_COLUMNS: tuple[str, ...] = ("experiment", "fold", "stage", "stage_index", "epoch", "step", "seconds",
                                  "train_loss", "val_loss", "val_dice", "val_auc")
CURVE_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "dice": ("val_dice", ("segmentation", "joint"), "inner-validation Dice"),
    "auc": ("val_auc", ("classification", "joint"), "inner-validation AUC"),
}
"""metric -> (``history.csv`` column, the stages it is drawn for, axis label)."""
CURVE_AXES: dict[str, str] = {"step": "optimizer steps", "seconds": "wall seconds (training + inner validation)"}
"""x column of the learning curves -> axis label."""


def fold_points(history: pd.DataFrame, timing: pd.DataFrame | None = None) -> pd.DataFrame:
    """One fold's epochs: its ``history.csv`` rows with ``stage_index`` (0, 1, ... in order of
    appearance) and the cumulative ``seconds`` of ``timing.csv`` (NaN without one).

    Columns missing from an older ``history.csv`` are added: ``stage`` as :data:`DEFAULT_STAGE`,
    ``step``, ``val_dice`` and ``val_auc`` as NaN.
    """
    frame = history.copy()
    frame["stage"] = frame["stage"].fillna(DEFAULT_STAGE) if "stage" in frame else DEFAULT_STAGE
    for column in ("step", "val_loss", "val_dice", "val_auc"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else math.nan
    order = list(dict.fromkeys(frame["stage"]))
    frame["stage_index"] = [order.index(stage) for stage in frame["stage"]]
    frame["epoch"] = frame["epoch"].astype(int)
    frame = frame.drop(columns="seconds", errors="ignore")
    if timing is None:
        frame["seconds"] = math.nan
    else:
        seconds = timing[["stage", "epoch", "seconds"]].astype({"epoch": int, "seconds": float})
        frame = frame.merge(seconds, on=["stage", "epoch"], how="left", validate="one_to_one")
    return frame


def learning_curve_data(points: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The mean curve of each row for ``metric`` (a key of :data:`CURVE_METRICS`).

    One row per (experiment, stage, epoch) of the stages the metric is drawn for, where some
    fold has a finite value: ``value`` (mean over those folds), ``low`` and ``high`` (their
    range), ``n_folds``, ``step`` (mean over them) and ``seconds`` (mean over them, NaN unless
    every one of them has a time).
    """
    column, stages, _ = CURVE_METRICS[metric]
    rows = points[points["stage"].isin(stages) & np.isfinite(points[column].astype(float))]
    keys = ["experiment", "stage_index", "stage", "epoch"]
    if rows.empty:
        return pd.DataFrame(columns=[*keys, "value", "low", "high", "n_folds", "step", "seconds", "metric"])
    grouped = rows.groupby(keys, sort=False)
    frame = grouped.agg(value=(column, "mean"), low=(column, "min"), high=(column, "max"), n_folds=("fold", "nunique"),
                        step=("step", "mean"))
    frame["seconds"] = grouped["seconds"].agg(lambda seconds: seconds.mean(skipna=False))
    frame = frame.reset_index().assign(metric=metric)
    order = {name: rank for rank, name in enumerate(dict.fromkeys(points["experiment"]))}
    frame["rank"] = frame["experiment"].map(order)
    return frame.sort_values(["rank", "stage_index", "epoch"]).drop(columns="rank").reset_index(drop=True)


def chosen_epochs(points: pd.DataFrame, selections: pd.DataFrame) -> pd.DataFrame:
    """The epoch rows (columns of ``points``) that each fold chose, one per (experiment, fold, stage).

    ``selections``: experiment, fold, stage, selected_epoch (NaN where ``run.json`` names none).
    """
    chosen = selections.dropna(subset=["selected_epoch"]).astype({"selected_epoch": int})
    chosen = chosen[["experiment", "fold", "stage", "selected_epoch"]].rename(columns={"selected_epoch": "epoch"})
    return points.merge(chosen, on=["experiment", "fold", "stage", "epoch"], how="inner")


def stage_segments(frame: pd.DataFrame, x: str, y: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stage, x, y) of each stage of ``frame`` (one line each, in stage order, epochs ascending,
    points without a finite x or y left out): the lines a curve is drawn as."""
    segments = []
    ordered = frame.sort_values(["stage_index", "epoch"])
    for (_, stage), part in ordered.groupby(["stage_index", "stage"], sort=True):
        xs, ys = part[x].to_numpy(float), part[y].to_numpy(float)
        finite = np.isfinite(xs) & np.isfinite(ys)
        if finite.any():
            segments.append((str(stage), xs[finite], ys[finite]))
    return segments


def loss_label(stage: str, tasks: tuple[str, ...] | list[str], recipe: dict[str, Any] | None = None) -> str:
    """The loss a stage minimises, e.g. ``"Dice+CE loss"`` or ``"0.7 Dice+CE + 0.3 CE loss"``.

    A segmentation stage trains on MONAI's Dice + cross-entropy, a classification stage on
    cross-entropy, a joint stage on the recipe's ``seg_loss_weight`` and ``cls_loss_weight`` sum
    of the terms its tasks have (``"weighted"`` when ``config.json`` holds no recipe).
    """
    if stage == "segmentation":
        return "Dice+CE loss"
    if stage == "classification":
        return "cross-entropy loss"
    weights = {task: _weight((recipe or {}).get(key))
               for task, key in (("segmentation", "seg_loss_weight"), ("classification", "cls_loss_weight"))}
    terms = {task: name for task, name in (("segmentation", "Dice+CE"), ("classification", "CE"))
             if task in tasks and weights[task] != 0}
    if len(terms) == 1:
        return f"{next(iter(terms.values()))} loss"
    if all(weights[task] is not None for task in terms):
        return " + ".join(f"{weights[task]:g} {name}" for task, name in terms.items()) + " loss"
    return "weighted " + " + ".join(terms.values()) + " loss"


def _weight(value: Any) -> float | None:
    """A recorded loss weight, or None when it is missing or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _optional_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path}: not valid JSON ({error})") from None
    return payload if isinstance(payload, dict) else {}


def _read_timing(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ResultsError(f"{path}: not a readable CSV ({error})") from None
    missing = [column for column in ("stage", "epoch", "seconds") if column not in frame.columns]
    if missing:
        raise ResultsError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame


def fold_folder(results: Results, experiment: str, fold: int) -> Path | None:
    """The replicate-0 folder of (experiment, fold) holding its ``history.csv``, in any of the RUNS_DIRs."""
    name = Path(results.experiments.at[experiment, "folder"]).name
    for runs_dir in results.runs_dirs:
        candidate = Path(runs_dir) / name / f"fold{fold}"
        if (candidate / HISTORY_FILE).is_file():
            return candidate
    return None


def _selected(value: Any, stages: list[str]) -> dict[str, int]:
    """``run.json``'s ``selected_epoch`` as stage -> epoch (older files: one epoch for a one-stage fold)."""
    if isinstance(value, dict):
        return {str(stage): int(epoch) for stage, epoch in value.items() if isinstance(epoch, (int, float))}
    if isinstance(value, (int, float)) and not isinstance(value, bool) and len(stages) == 1:
        return {stages[0]: int(value)}
    return {}


def read_curves(results: Results) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(points, folds) of every fold with a ``history.csv`` (replicate 0).

    points: :data:`POINT_COLUMNS`, one row per epoch (:func:`fold_points`). folds: experiment,
    fold, stage, selected_epoch, plateau_reached (``run.json``; None when not recorded),
    seg_loss_weight and cls_loss_weight (``config.json`` recipe), one row per stage of a fold.
    """
    points, folds = [], []
    for (experiment, fold), history in results.histories.groupby(["experiment", "fold"], sort=False):
        folder = fold_folder(results, experiment, int(fold))
        timing = _read_timing(folder / TIMING_FILE) if folder else None
        run = _optional_json(folder / RUN_FILE) if folder else {}
        recipe = (_optional_json(folder / CONFIG_FILE) if folder else {}).get("recipe") or {}
        frame = fold_points(history.drop(columns=["experiment", "fold"]).dropna(axis=1, how="all"), timing)
        frame.insert(0, "experiment", experiment)
        frame.insert(1, "fold", int(fold))
        points.append(frame[list(POINT_COLUMNS)])
        stages = list(dict.fromkeys(frame["stage"]))
        selected = _selected(run.get("selected_epoch"), stages)
        reached = run.get("plateau_reached")
        folds += [{"experiment": experiment, "fold": int(fold), "stage": stage,
                   "selected_epoch": selected.get(stage, math.nan),
                   "plateau_reached": reached if isinstance(reached, bool) else None,
                   "seg_loss_weight": recipe.get("seg_loss_weight"), "cls_loss_weight": recipe.get("cls_loss_weight")}
                  for stage in stages]
    if not points:
        return pd.DataFrame(columns=list(POINT_COLUMNS)), pd.DataFrame(columns=[
            "experiment", "fold", "stage", "selected_epoch", "plateau_reached", "seg_loss_weight", "cls_loss_weight"])
    return pd.concat(points, ignore_index=True), pd.DataFrame(folds)


def plateau_note(folds: pd.DataFrame, experiment: str) -> str:
    """``""``, or e.g. ``"short of plateau in 2 of 5 folds"`` when some fold of ``experiment`` is."""
    verdicts = folds[folds["experiment"] == experiment].drop_duplicates("fold")["plateau_reached"]
    known = verdicts.dropna()
    short = int((known == False).sum())  # noqa: E712 - a column of booleans and None
    return f"short of plateau in {short} of {len(known)} folds" if short else ""


def _training_panel(axes: Axes, history: pd.DataFrame, chosen: pd.DataFrame, colours: dict) -> None:
    """Train and validation loss of every fold of one (experiment, stage), the chosen epochs starred."""
    for fold, part in history.groupby("fold"):
        part = part.sort_values("epoch")
        axes.plot(part["epoch"] + 1, part["train_loss"], color=colours[fold], linewidth=1.5)
        if part["val_loss"].notna().any():
            axes.plot(part["epoch"] + 1, part["val_loss"], color=colours[fold], linewidth=1.5, linestyle="--")
    for row in chosen.itertuples():
        loss = row.val_loss if np.isfinite(row.val_loss) else row.train_loss
        axes.plot([row.epoch + 1], [loss], marker="*", markersize=11, color=colours[row.fold],
                  markeredgecolor="black", markeredgewidth=0.6, linestyle="none", zorder=3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def training_curves_figure(results: Results, out_dir: Path, columns: int = 3) -> list[Path]:
    """Train and validation loss per epoch: one panel per (experiment, stage), naming the stage's loss
    and starring each fold's chosen epoch (see the module docstring)."""
    points, folds = read_curves(results)
    if points.empty:
        return []
    chosen = chosen_epochs(points, folds)
    panels = [(name, index, stage) for name in display_order(results)
              for index, stage in points.loc[points["experiment"] == name, ["stage_index", "stage"]]
              .drop_duplicates().sort_values("stage_index").itertuples(index=False)]
    rows, width = math.ceil(len(panels) / columns), min(columns, len(panels))
    fold_ids = sorted(points["fold"].unique())
    colours = dict(zip(fold_ids, sns.color_palette("viridis", n_colors=len(fold_ids))))
    with figure_style():
        figure = new_figure(4.4 * width, 3.4 * rows)
        for number, (name, index, stage) in enumerate(panels):
            axes = figure.add_subplot(rows, width, number + 1)
            in_panel = (points["experiment"] == name) & (points["stage_index"] == index)
            marked = chosen[(chosen["experiment"] == name) & (chosen["stage_index"] == index)]
            _training_panel(axes, points[in_panel], marked, colours)
            recipe = folds[folds["experiment"] == name].iloc[0].to_dict()
            axes.set(title=f"{method_name(results, name)}: {stage} stage", xlabel="epoch of the stage",
                     ylabel=loss_label(stage, results.experiments.at[name, "tasks"], recipe))
        handles = [Line2D([], [], color=colours[f], label=f"fold {f}") for f in fold_ids]
        handles += [Line2D([], [], color="black", label="train"),
                    Line2D([], [], color="black", linestyle="--", label="inner validation"),
                    Line2D([], [], color="grey", marker="*", markersize=11, markeredgecolor="black", linestyle="none",
                           label="chosen epoch")]
        figure.legend(handles=handles, loc="outside right upper")
        return save_figure(figure, out_dir, "training_curves")


def _learning_panel(axes: Axes, curve: pd.DataFrame, chosen: pd.DataFrame, x: str, colour: tuple) -> None:
    """One row's mean curve (a line per stage), its range over folds and its chosen epochs."""
    for _, xs, ys in stage_segments(curve, x, "value"):
        axes.plot(xs, ys, color=colour, linewidth=2)
    for (_, xs, low), (_, _, high) in zip(stage_segments(curve, x, "low"), stage_segments(curve, x, "high")):
        axes.fill_between(xs, low, high, color=colour, alpha=0.15, linewidth=0)
    marks = chosen[np.isfinite(chosen[x].astype(float))]
    axes.plot(marks[x], marks["value"], marker="o", markersize=6, color=colour, markeredgecolor="black",
              markeredgewidth=0.6, linestyle="none", zorder=3)


def learning_curves_figure(results: Results, out_dir: Path) -> list[Path]:
    """Inner-validation Dice and AUC against optimizer steps and wall seconds (see the module docstring)."""
    points, folds = read_curves(results)
    curves = {metric: learning_curve_data(points, metric) for metric in CURVE_METRICS}
    curves = {metric: curve for metric, curve in curves.items() if np.isfinite(curve["step"].astype(float)).any()
              or np.isfinite(curve["seconds"].astype(float)).any()}
    if not curves:
        return []
    x_columns = [x for x in CURVE_AXES if any(np.isfinite(c[x].astype(float)).any() for c in curves.values())]
    names = [n for n in display_order(results) if any((c["experiment"] == n).any() for c in curves.values())]
    colours, chosen = palette(names), chosen_epochs(points, folds)
    with figure_style():
        figure = new_figure(5.4 * len(x_columns) + 2.6, 3.8 * len(curves))
        for row, (metric, curve) in enumerate(curves.items()):
            column, stages, label = CURVE_METRICS[metric]
            marks = chosen[chosen["stage"].isin(stages)].rename(columns={column: "value"})
            for number, x in enumerate(x_columns):
                axes = figure.add_subplot(len(curves), len(x_columns), row * len(x_columns) + number + 1)
                for name in names:
                    _learning_panel(axes, curve[curve["experiment"] == name],
                                    marks[marks["experiment"] == name], x, colours[name])
                axes.set(xlabel=CURVE_AXES[x], ylabel=label, title=f"{label} against {CURVE_AXES[x].split(' (')[0]}")
        handles = [Line2D([], [], color=colours[n], linewidth=2, label=method_name(results, n)
                          + (f" ({note})" if (note := plateau_note(folds, n)) else "")) for n in names]
        handles += [Line2D([], [], color="grey", marker="o", markeredgecolor="black", linestyle="none",
                           label="chosen epoch (one per fold)")]
        figure.legend(handles=handles, loc="outside right upper", title="mean over folds; band: range")
        return save_figure(figure, out_dir, "learning_curves")

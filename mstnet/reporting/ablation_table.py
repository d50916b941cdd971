"""The ablation table: each variant minus the reference, with paired bootstrap intervals and paired
p-values (DeLong for AUC, exact McNemar for accuracy, paired bootstrap for F1, Wilcoxon on per-patient
mean Dice), and its renderings (Markdown, LaTeX, HTML, CSV).

With several training seeds, each patient's probability and each scan's Dice are averaged over an
experiment's seeds first (:class:`~mstnet.reporting.results.Results` does that).
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mstnet.metrics import (bootstrap_mean_ci, bootstrap_p_value, classification_metric_samples, delong_test,
                            mcnemar_exact, patient_draws, percentile_interval, wilcoxon_per_patient)
from mstnet.reporting.formats import (LATEX_PREAMBLE, MISSING, latex_escape, latex_float, latex_notes, latex_stack,
                                      markdown_stars, stars)
from mstnet.reporting.results import Results
from mstnet.reporting.table_data import (COLUMN_BY_KEY, classification_average, method_name, paired_predictions,
                                         paired_scans, patient_thresholds)

log = logging.getLogger(__name__)


ABLATION_METRICS: tuple[str, ...] = ("auc", "accuracy", "f1", "dice")
ABLATION_TESTS = {"auc": "DeLong", "accuracy": "exact McNemar", "f1": "paired bootstrap",
                  "dice": "Wilcoxon signed-rank on per-patient mean Dice"}


@dataclass(frozen=True)
class AblationTable:
    """Ablation variants against the reference.

    Attributes:
        frame: one row per variant: ``experiment``, ``description``, ``information``,
            ``oracle_auc``, ``n_patients``, ``n_scans``; per metric of :data:`ABLATION_METRICS`:
            ``<m>_reference``, ``<m>_variant``, ``<m>_diff`` (variant - reference, pooled, on
            the paired patients/scans), ``<m>_ci_low``, ``<m>_ci_high``, ``<m>_p``; when the
            reference or a variant has several training seeds, ``n_seeds_reference`` and
            ``n_seeds_variant`` (the values then come from per-patient / per-scan means over seeds).
        reference: the reference experiment.
        notes: footnote lines.
    """

    frame: pd.DataFrame
    reference: str
    notes: tuple[str, ...] = ()


def ablation_row(results: Results, reference: str, variant: str, n_resamples: int, seed: int,
                 confidence: float = 0.95) -> dict:
    """Paired differences variant - reference for AUC, accuracy, F1 (patients) and Dice (scans)."""
    meta = results.experiments.loc[variant]
    row: dict = {"experiment": variant, "description": meta["description"], "information": meta["information"],
                 "oracle_auc": results.oracle.get(meta["information"], math.nan), "n_patients": 0, "n_scans": 0}
    for metric in ABLATION_METRICS:
        row.update({f"{metric}_{part}": math.nan for part in ("reference", "variant", "diff", "ci_low", "ci_high", "p")})
    if results.has_task(variant, "classification") and results.has_task(reference, "classification"):
        paired = paired_predictions(results, reference, variant)
        average = classification_average(results, reference)
        threshold_ref = patient_thresholds(results, reference, paired["fold_reference"])
        threshold_var = patient_thresholds(results, variant, paired["fold_other"])
        labels = paired["label"].to_numpy()
        reference_prob, variant_prob = paired["probability_reference"].to_numpy(), paired["probability_other"].to_numpy()
        identity = np.arange(len(paired))[None, :]
        draws = patient_draws(len(paired), n_resamples, seed)
        point_ref = classification_metric_samples(labels, reference_prob, identity, threshold_ref, average)
        point_var = classification_metric_samples(labels, variant_prob, identity, threshold_var, average)
        samples_ref = classification_metric_samples(labels, reference_prob, draws, threshold_ref, average)
        samples_var = classification_metric_samples(labels, variant_prob, draws, threshold_var, average)
        row["n_patients"] = len(paired)
        for metric in ("auc", "accuracy", "f1"):
            row[f"{metric}_reference"], row[f"{metric}_variant"] = float(point_ref[metric][0]), float(point_var[metric][0])
            row[f"{metric}_diff"] = row[f"{metric}_variant"] - row[f"{metric}_reference"]
            differences = samples_var[metric] - samples_ref[metric]
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = percentile_interval(differences, confidence)
            if metric == "auc":
                row["auc_p"] = delong_test(labels, reference_prob, variant_prob)["p_value"]
            elif metric == "accuracy":
                row["accuracy_p"] = mcnemar_exact((reference_prob >= threshold_ref) == labels.astype(bool),
                                                  (variant_prob >= threshold_var) == labels.astype(bool))
            else:
                row["f1_p"] = bootstrap_p_value(differences)
    if results.has_task(variant, "segmentation") and results.has_task(reference, "segmentation"):
        paired = paired_scans(results, reference, variant)
        if len(paired):
            row["n_scans"] = len(paired)
            row["dice_reference"], row["dice_variant"] = float(paired["dice_reference"].mean()), float(paired["dice_other"].mean())
            row["dice_diff"] = row["dice_variant"] - row["dice_reference"]
            differences = (paired["dice_other"] - paired["dice_reference"]).to_numpy(float)
            row["dice_ci_low"], row["dice_ci_high"] = bootstrap_mean_ci(
                differences, groups=paired["patient_id"].to_numpy(), n_resamples=n_resamples, seed=seed,
                confidence=confidence)
            row["dice_p"] = wilcoxon_per_patient(paired["dice_reference"], paired["dice_other"], paired["patient_id"])
    return row


def ablation_table(results: Results, reference: str = "mstnet", n_resamples: int = 1000,
                   seed: int = 0, confidence: float = 0.95) -> AblationTable | None:
    """Every ``group == "ablation"`` experiment against ``reference``; None without ablations or reference."""
    variants = results.names(group="ablation")
    if not variants:
        return None
    if reference not in results.experiments.index:
        log.warning("ablations found but the reference experiment %r is not in the results; no ablation table",
                    reference)
        return None
    rows = [ablation_row(results, reference, v, n_resamples, seed, confidence) for v in variants]
    seeds = {name: len(results.seeds(name)) for name in [reference, *variants]}
    if any(count > 1 for count in seeds.values()):
        for row in rows:
            row["n_seeds_reference"], row["n_seeds_variant"] = seeds[reference], seeds[row["experiment"]]
    oracle_reference = results.oracle.get(results.experiments.at[reference, "information"])
    notes = (
        f"Differences are variant minus {method_name(results, reference)} in percentage points, pooled over the "
        "out-of-fold test patients both have (Dice: over the scans both segmented), with 95% paired bootstrap "
        f"intervals ({n_resamples} resamples over patients, seed {seed}).",
        "Paired p-values: " + ", ".join(f"{COLUMN_BY_KEY[m].label} {t}" for m, t in ABLATION_TESTS.items())
        + "; * p < 0.05, ** p < 0.01, *** p < 0.001.",
        "Oracle AUC: the ceiling of the information the variant sees (oracle.json key in brackets)"
        + (f"; the full model's information: {100 * oracle_reference:.1f}." if oracle_reference is not None else "."),
    )
    if any(count > 1 for count in seeds.values()):
        notes += ("Training seeds: " + ", ".join(f"{name} {count}" for name, count in seeds.items())
                  + "; each patient's probability and each scan's Dice are averaged over an experiment's seeds "
                  "before the differences, intervals and tests.",)
    return AblationTable(pd.DataFrame(rows), reference, notes)


def _difference_cell(row: pd.Series, metric: str) -> tuple[str, str, str] | None:
    diff = row[f"{metric}_diff"]
    if not np.isfinite(diff):
        return None
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    ci = f"[{100 * low:+.1f}, {100 * high:+.1f}]" if np.isfinite(low) and np.isfinite(high) else ""
    return f"{100 * diff:+.2f}", ci, stars(row[f"{metric}_p"])


def _oracle_text(row: pd.Series) -> str:
    value = row["oracle_auc"]
    return f"{100 * value:.1f} ({row['information']})" if np.isfinite(value) else f"{MISSING} ({row['information']})"


def ablation_markdown(table: AblationTable) -> str:
    """The ablation table as GitHub Markdown."""
    header = ["Variant", *[f"Δ{COLUMN_BY_KEY[m].label} (pp)" for m in ABLATION_METRICS], "Oracle AUC"]
    lines = [f"**Ablations against {table.reference}**", "", "| " + " | ".join(header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    for _, row in table.frame.iterrows():
        cells = []
        for metric in ABLATION_METRICS:
            parts = _difference_cell(row, metric)
            cells.append(MISSING if parts is None else f"{parts[0]}{markdown_stars(parts[2])} {parts[1]}".strip())
        lines.append(f"| {row['experiment']} | " + " | ".join(cells) + f" | {_oracle_text(row)} |")
    lines += ["", *[f"- {note}" for note in table.notes]]
    return "\n".join(lines) + "\n"


def ablation_latex(table: AblationTable) -> str:
    """The ablation table as a booktabs LaTeX ``table`` that fits the text width (differences with their CI
    under them; shrunk only if still wider than the text)."""
    n_columns = 2 + len(ABLATION_METRICS)
    header = "Variant & " + " & ".join(f"$\\Delta${COLUMN_BY_KEY[m].label} (pp)" for m in ABLATION_METRICS) + r" & Oracle AUC \\"
    body = []
    for _, row in table.frame.iterrows():
        cells = []
        for metric in ABLATION_METRICS:
            parts = _difference_cell(row, metric)
            cells.append(MISSING if parts is None else latex_stack(
                latex_escape(parts[0]) + (f"$^{{{parts[2]}}}$" if parts[2] else ""), latex_escape(parts[1])))
        oracle, _, information = _oracle_text(row).partition(" ")
        body.append(latex_escape(row["experiment"]) + " & " + " & ".join(cells) + " & "
                    + latex_stack(latex_escape(oracle), latex_escape(information)) + r" \\")
    return "\n".join([LATEX_PREAMBLE, *latex_float(f"Ablations against {latex_escape(table.reference)}",
                                                   f"l{'c' * (n_columns - 1)}", header, body, latex_notes(table.notes)),
                      ""])


def ablation_html(table: AblationTable) -> str:
    """The ablation table as HTML (class ``results``)."""
    head = "".join(f"<th>&Delta;{html.escape(COLUMN_BY_KEY[m].label)} (pp)</th>" for m in ABLATION_METRICS)
    body = []
    for _, row in table.frame.iterrows():
        cells = []
        for metric in ABLATION_METRICS:
            parts = _difference_cell(row, metric)
            if parts is None:
                cells.append(f"<td>{MISSING}</td>")
                continue
            star = f"<sup class=\"stars\">{parts[2]}</sup>" if parts[2] else ""
            ci = f"<br><span class=\"ci\">{html.escape(parts[1])}</span>" if parts[1] else ""
            cells.append(f"<td>{html.escape(parts[0])}{star}{ci}</td>")
        body.append(f"<tr><th scope=\"row\" title=\"{html.escape(str(row['description']))}\">"
                    f"{html.escape(row['experiment'])}</th>{''.join(cells)}<td>{html.escape(_oracle_text(row))}</td></tr>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    return (f"<table class=\"results\"><caption>Ablations against {html.escape(table.reference)}</caption>"
            f"<thead><tr><th>Variant</th>{head}<th>Oracle AUC</th></tr></thead><tbody>{''.join(body)}</tbody>"
            f"</table><ul class=\"notes\">{notes}</ul>")


def ablation_csv(table: AblationTable) -> str:
    """The ablation frame with raw numbers (fractions) and p-values."""
    return table.frame.to_csv(index=False)

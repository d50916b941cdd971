"""The footnotes of the results tables: cohort and design, what a cell holds, averaging and
thresholds, surface-distance convention, paired tests, training seeds, ceilings, recipes."""

from __future__ import annotations

import pandas as pd

from mstnet.reporting.published import PUBLISHED_LABEL, PUBLISHED_SOURCE
from mstnet.reporting.results import Results
from mstnet.reporting.table_data import fold_settings, method_name


CONVENTION_TEXT = {
    "monai": "MONAI convention: HD95 = max of the two directed 95th percentiles, ASD = mean of the pooled "
             "symmetric surface distances",
    "medpy": "medpy convention: HD95 = 95th percentile of the pooled surface distances, ASD = mean of the two "
             "directed means",
}


def _cohort_note(results: Results) -> str:
    parts = []
    for cohort in results.cohorts:
        if not cohort.get("name"):
            parts.append(f"{cohort.get('runs_dir', '?')} (no cohort.json)")
            continue
        detail = ", ".join(str(x) for x in (cohort.get("note"), f"{cohort['patients']} patients" if "patients" in cohort
                                            else None, f"{cohort['malignant']} malignant" if "malignant" in cohort else None)
                           if x)
        parts.append(f"{cohort['name']} ({detail})" if detail else str(cohort["name"]))
    evaluated = sorted(set(results.fold_metrics["fold"].groupby(results.fold_metrics["experiment"]).size()))
    designed = {c.get("cv_folds") for c in results.cohorts} - {None}
    if len(designed) == 1 and evaluated == [next(iter(designed))]:
        design = f"{evaluated[0]}-fold cross-validation"
    elif len(designed) == 1:
        design = f"{'/'.join(map(str, evaluated))} of the {next(iter(designed))} folds of a cross-validation"
    else:
        design = f"{'/'.join(map(str, evaluated))} cross-validation fold(s) per experiment"
    return f"Measured on {'; '.join(dict.fromkeys(parts))}; {design}, out-of-fold test patients."


def table_notes(results: Results, names: list[str], reference: str, n_resamples: int, seed: int,
                marks: dict[str, str], with_published: bool, oracle_shown: bool) -> tuple[str, ...]:
    """The footnote lines of a results table (cohort, units, CIs, averaging, convention, tests, rows)."""
    classification = [n for n in names if results.has_task(n, "classification")]
    segmentation = [n for n in names if results.has_task(n, "segmentation")]
    notes = [_cohort_note(results), CELL_NOTE.format(n_resamples=n_resamples, seed=seed), BOLD_NOTE]
    if classification:
        averages = fold_settings(results, classification, "average")
        thresholds = fold_settings(results, classification, "threshold")
        average_text = " / ".join("binary (malignant class; specificity = benign recall)" if a == "binary" else
                                  "support-weighted over both classes" if a == "weighted" else str(a) for a in averages)
        if results.threshold_rule == "validation":
            threshold_text = (f"at each fold's threshold chosen on its inner validation split (Youden's J; "
                              f"{min(thresholds):.2f} to {max(thresholds):.2f})")
        else:
            threshold_text = f"at a probability threshold of {' / '.join(f'{t:g}' for t in thresholds)}"
        notes.append(f"Precision, recall, specificity and F1 are {average_text}, {threshold_text}; AUC is "
                     f"threshold-free. {UNDEFINED_NOTE}")
    if segmentation:
        conventions = fold_settings(results, segmentation, "convention")
        notes.append("Surface distances: " + "; ".join(CONVENTION_TEXT.get(c, f"{c} convention") for c in conventions)
                     + "; per scan, in mm, then averaged.")
    if reference in names or reference in results.experiments.index:
        notes.append(f"Paired comparison with {method_name(results, reference)} on the same patients: DeLong test on "
                     "the pooled AUC; Wilcoxon signed-rank test on per-patient mean Dice (each patient's Dice averaged "
                     "over the scans both methods segmented, then one pair per patient, so a patient's time points "
                     "are not counted as independent pairs); * p < 0.05, ** p < 0.01, *** p < 0.001 (p-values in the "
                     "CSV).")
    replicated = {n: len(results.seeds(n)) for n in names if len(results.seeds(n)) > 1}
    if replicated:
        notes.append(SEEDS_NOTE.format(rows=", ".join(f"{method_name(results, n)} {k}" for n, k in replicated.items())))
    if oracle_shown:
        notes.append("Oracle ceiling: AUC of the known generating risk given everything (all scans, the clinical "
                     "record and the radiologist's reads).")
    ceilings = {n: results.experiments.at[n, "information"] for n in classification
                if results.experiments.at[n, "information"] in results.oracle}
    if ceilings:
        keys = ", ".join(f"{method_name(results, n)} {k}" for n, k in ceilings.items())
        notes.append("'ceiling' after an AUC: the Bayes-optimal AUC of the inputs that row sees, on the same patients "
                     f"(oracle.json, the generator's own posterior; information sets: {keys}).")
    if with_published:
        notes.append(f"Rows '{PUBLISHED_LABEL}': {PUBLISHED_SOURCE}; another cohort, shown for reference only.")
    notes += training_notes(results, names)
    for name, mark in marks.items():
        notes.append(f"[{mark}] {method_name(results, name)}: {results.experiments.at[name, 'footnote']}")
    return tuple(notes)


def training_notes(results: Results, names: list[str]) -> list[str]:
    """Footnotes on training: the recipe each deep row used (run.json ``recipe_summary``, with its
    optimizer steps per fold) and every row whose folds fell short of their plateau."""
    runs = results.runs
    if runs.empty or "recipe_summary" not in runs.columns:
        return []
    recipes, short = [], []
    for name in names:
        rows = runs[runs["experiment"] == name]
        summaries = sorted(set(rows["recipe_summary"].dropna()))
        if not summaries:
            continue
        steps = rows["optimizer_steps"].dropna() if "optimizer_steps" in rows else pd.Series(dtype=float)
        step_text = f", {int(steps.median())} optimizer steps per fold" if len(steps) else ""
        recipes.append(f"{method_name(results, name)}: {' | '.join(summaries)}{step_text}")
        if "plateau_reached" in rows:
            flagged = rows[rows["plateau_reached"] == False]  # noqa: E712 - a column of booleans and NaN
            if len(flagged):
                gains = "; ".join(f"fold {int(r.fold)}{f' seed {int(r.seed)}' if getattr(r, 'seed', 0) else ''} "
                                  f"{r.short_of_plateau}" for r in flagged.itertuples())
                short.append(f"{method_name(results, name)} ({len(flagged)} of {len(rows)} folds: {gains})")
    notes = [f"Training recipes: {'; '.join(recipes)}."] if recipes else []
    if short:
        notes.append("Short of the plateau (inner-validation Dice or AUC still gained at least 1 point over the last "
                     f"third of a stage): {'; '.join(short)}. Their numbers measure the training budget as much as "
                     "the method.")
    return notes


CELL_NOTE = ("Cells: the pooled value (all out-of-fold test patients together for Acc, Pre, Rec, Spec, F1 and AUC, "
             "each at its fold's threshold; the mean over all test scans for Dice, Jaccard, HD95 and ASD), then in "
             "brackets the 95% percentile bootstrap CI of that pooled value ({n_resamples} resamples over patients, "
             "a patient's scans drawn together, seed {seed}); after the semicolon, mean ± std over folds, with "
             "'(k of n folds)' when the metric is undefined in the other folds. Percent, except HD95 and ASD in mm. "
             "'-': the method does not do that task.")
"""The footnote saying what each number of a cell is (formatted with ``n_resamples`` and ``seed``)."""
SEEDS_NOTE = ("Trained with several training seeds on the same folds ({rows} seeds): the cell value is the mean over "
              "seeds of each seed's pooled value, '± x sd over n seeds' the sample standard deviation (ddof=1) between "
              "the seeds' pooled values, the bracketed CI the bootstrap of that mean (each resample's patients scored "
              "in every seed), the fold mean ± std over the folds' values averaged over seeds; the paired tests use "
              "each patient's mean probability and each scan's mean Dice over seeds.")
"""The footnote of tables with rows of several training seeds (formatted with ``rows``: "name n, ...")."""
BOLD_NOTE = ("Bold: the best pooled value per column, the statistic whose interval is printed (lower is better for "
             "HD95 and ASD); the ROC figure shows the same pooled AUCs, so both rank the methods alike.")
UNDEFINED_NOTE = ("A ratio with a zero denominator is undefined and left out, not counted as 0: precision with no "
                  "positive prediction, recall with no malignant patient, specificity with no benign one; F1 is "
                  "undefined only with neither a malignant patient nor a positive prediction (with malignant "
                  "patients and no positive prediction it is 0).")

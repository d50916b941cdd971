"""``mstnet data synth``, ``preview``, ``oracle`` and ``power``: the embedded synthetic cohort and its ceilings."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from mstnet.commands import key_value_pairs

console = Console()


def parse_settings(items: list[str] | None) -> dict[str, str]:
    """``["growth.malignant_vdt_sigma=0.7", "shape=[16,64,64]"]`` -> ``{key: raw value}`` (typed by the config)."""
    return {key: value.strip() for key, value in key_value_pairs(items, " (dotted keys for nested parameters)").items()}


def oracle_table(report: dict) -> Table:
    """``oracle.json``'s AUCs as a grid: scans seen (rows) by clinical record and reads (columns), then ``everything``."""
    from mstnet.information import MAX_SCANS, information_key

    auc = report["auc"]
    text = lambda key: "-" if auc.get(key) is None else f"{auc[key]:.3f}"  # noqa: E731
    table = Table(title=f"Oracle AUC ({report['patients']} patients, {report['malignant']} malignant)")
    table.add_column("scans seen")
    variants = ((False, False, "alone"), (True, False, "+clinical"), (False, True, "+reads"), (True, True, "+clinical+reads"))
    for _, _, name in variants:
        table.add_column(name, justify="right")
    for scans in range(MAX_SCANS + 1):
        table.add_row(f"scans{scans}" if scans else "none", *(
            "" if not (scans or clinical or reads) else text(information_key(scans, clinical, reads))
            for clinical, reads, _ in variants))
    table.add_row("everything", text("everything"), "", "", "")
    return table


def power_table(frame, title: str) -> Table:
    """:func:`mstnet.synth.power.ceiling_power`'s frame as a table: one row per comparison and cohort size."""
    table = Table(title=title)
    for column in ("comparison", "ceilings", "required gap", "population gap", "N", "mean gap", "power"):
        table.add_column(column, justify="left" if column in ("comparison", "ceilings") else "right")
    for _, row in frame.iterrows():
        required = "-" if row["required_gap"] != row["required_gap"] else f"{100 * row['required_gap']:.0f}"
        table.add_row(row["comparison"], f"{row['better_information']} vs {row['worse_information']}", required,
                      f"{100 * row['population_gap']:.1f}", str(row["n_patients"]), f"{100 * row['mean_gap']:.1f}",
                      f"{row['power']:.2f} ± {row['standard_error']:.2f}")
    return table


def synth_command(
    out: Path = typer.Option(..., help="cohort folder to create"),
    preset: str = typer.Option("cpu", help="tiny | cpu | paper"),
    seed: int = typer.Option(0, help="master seed"),
    patients: int | None = typer.Option(None, help="number of patients (default: the preset's)"),
    malignant_fraction: float | None = typer.Option(None, help="expected share of malignant patients"),
    workers: int | None = typer.Option(None, help="processes (default: CPU count); results do not depend on it"),
    set_: list[str] = typer.Option(None, "--set", help="any parameter, key=value (dotted keys for nested ones)"),
) -> None:
    """Generate a synthetic longitudinal cohort with known ground truth (not NLST)."""
    from mstnet.synth import synth_config, synthesize_cohort

    overrides: dict[str, object] = dict(parse_settings(set_))
    overrides["seed"] = seed
    if patients is not None:
        overrides["n_patients"] = patients
    if malignant_fraction is not None:
        overrides["malignant_fraction"] = malignant_fraction
    try:
        config = synth_config(preset, **overrides)
    except (KeyError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    folder = synthesize_cohort(config, out, workers=workers)
    report = json.loads((folder / "oracle.json").read_text())
    console.print(f"cohort: {folder} ({config.n_patients} patients x {config.n_timepoints} time points)")
    console.print(oracle_table(report))


def preview_command(
    folder: Path = typer.Argument(..., help="cohort folder (manifest.csv)"),
    out: Path | None = typer.Option(None, help="PNG path (default: FOLDER/preview.png)"),
    patients: int = typer.Option(6, help="patients (rows)"),
) -> None:
    """Slices through the nodule at every time point with the mask outline, one row per patient."""
    from mstnet.synth.preview import preview_cohort

    console.print(f"preview: {preview_cohort(folder, out, patients=patients)}")


def oracle_command(folder: Path = typer.Argument(..., help="synthetic cohort folder (ground_truth.csv, cohort.json)")) -> None:
    """Oracle AUC ceilings of a synthetic cohort (printed and written to FOLDER/oracle.json)."""
    import pandas as pd

    from mstnet.synth.oracle import oracle_report, synth_config_from_json, write_oracle
    from mstnet.synth.shape_bank import load_shape_bank

    truth_path, config_path = folder / "ground_truth.csv", folder / "cohort.json"
    if not truth_path.exists() or not config_path.exists():
        raise typer.BadParameter(f"{folder} is not a synthetic cohort: ground_truth.csv and cohort.json are needed")
    stored = json.loads(config_path.read_text())
    config = synth_config_from_json(stored["config"])
    bank = load_shape_bank(config.bank_spacing_mm)
    if stored.get("shape_bank") not in (None, bank.summary):
        console.print("[yellow]warning: the cached shape bank differs from the one this cohort was drawn from[/yellow]")
    report = oracle_report(pd.read_csv(truth_path), config, bank)
    path = write_oracle(folder, report)
    console.print(oracle_table(report))
    console.print(f"written: {path}")


def power_command(
    preset: str = typer.Option("claims", help="synthetic-cohort preset whose generator is simulated"),
    sizes: str = typer.Option("150,200,250,300", help="comma-separated cohort sizes"),
    population: int = typer.Option(20_000, min=100, help="patients of the simulated population"),
    cohorts: int = typer.Option(1000, min=1, help="cohorts drawn per size"),
    target: float = typer.Option(0.8, min=0.0, max=1.0, help="power the claims' ceiling comparisons must reach"),
    out: Path | None = typer.Option(None, help="CSV to write (default: print only)"),
    set_: list[str] = typer.Option(None, "--set", help="any generator parameter, key=value (dotted keys for nested ones)"),
) -> None:
    """Simulated power of the claims' paired ceiling tests at each cohort size (tabular draws, no images)."""
    from mstnet.atomic import write_text_atomic
    from mstnet.synth import synth_config
    from mstnet.synth.power import ceiling_power, smallest_powered_size

    try:
        config = synth_config(preset, **parse_settings(set_))
        size_list = [int(size) for size in sizes.split(",") if size.strip()]
    except (KeyError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None
    frame = ceiling_power(config, size_list, population=population, cohorts=cohorts)
    console.print(power_table(frame, f"Power of the paired ceiling test (preset {preset}, {cohorts} cohorts per size, "
                                     f"population {population})"))
    chosen = smallest_powered_size(frame, target)
    console.print(f"smallest size with power >= {target} for every required comparison: "
                  f"{chosen if chosen is not None else 'none of ' + sizes}")
    if out is not None:
        console.print(f"written: {write_text_atomic(out, frame.to_csv(index=False))}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    data = groups["data"]
    data.command("synth")(synth_command)
    data.command("preview")(preview_command)
    data.command("oracle")(oracle_command)
    data.command("power")(power_command)

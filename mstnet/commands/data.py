"""``mstnet data validate SOURCE`` and ``mstnet data summary SOURCE``: check and describe a cohort folder."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def summarise_cohort(cohort) -> dict[str, object]:
    """Counts, label balance, time points, days, and image size and spacing ranges (from headers) of a cohort."""
    from mstnet.data.cohort import CohortError
    from mstnet.data.io import read_volume_info

    shapes, spacings, unreadable = [], [], 0
    for patient in cohort:
        for scan in patient.scans:
            try:
                info = read_volume_info(scan.image)
            except CohortError:
                unreadable += 1
                continue
            shapes.append(info.shape)
            spacings.append(info.spacing)
    labels = Counter(cohort.labels)
    scans = [scan for patient in cohort for scan in patient.scans]

    def value_range(values: list[tuple], axis: int) -> str:
        column = [v[axis] for v in values]
        return f"{min(column):g} - {max(column):g}" if column else "-"

    return {
        "patients": len(cohort),
        "scans": len(scans),
        "malignant": labels.get(1, 0),
        "benign": labels.get(0, 0),
        "time points per patient": dict(sorted(Counter(len(p.scans) for p in cohort).items())),
        "time point names": dict(sorted(Counter(s.timepoint for s in scans).items())),
        "days": f"{min(s.days for s in scans):g} - {max(s.days for s in scans):g}" if scans else "-",
        "scans with mask": sum(s.mask is not None for s in scans),
        "scans with nodule location": sum(s.nodule is not None for s in scans),
        "size D": value_range(shapes, 0), "size H": value_range(shapes, 1), "size W": value_range(shapes, 2),
        "spacing z (mm)": value_range(spacings, 0), "spacing y (mm)": value_range(spacings, 1),
        "spacing x (mm)": value_range(spacings, 2),
        "unreadable images": unreadable,
        "clinical categorical": ", ".join(cohort.clinical_schema.categorical) or "-",
        "clinical numeric": ", ".join(cohort.clinical_schema.numeric) or "-",
    }


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    data = groups["data"]

    @data.command("validate")
    def validate_command(
        source: Path = typer.Argument(..., help="cohort folder (manifest, NLST layout or LIDC DICOM) or its CSV"),
        min_timepoints: int = typer.Option(1, "--min-timepoints", help="report patients with fewer scans"),
        read_data: bool = typer.Option(False, "--read-data", help="read all image data, not only headers (slower; finds "
                                       "NaN / inf voxels, mask values other than 0 and 1, empty masks, truncated files)"),
        binarize_masks: str | None = typer.Option(None, "--binarize-masks", metavar="nonzero|half",
                                                  help="accept masks with values other than 0 and 1: nonzero = every "
                                                       "value other than 0 is foreground, half = values >= 0.5 are"),
        folds: int = typer.Option(5, "--folds", min=0, help="report a label with fewer patients than this many "
                                  "cross-validation folds (0: no check)"),
        segmentation: bool | None = typer.Option(None, "--segmentation/--no-segmentation",
                                                 help="the experiment trains segmentation: masks must exist and, with "
                                                      "--read-data, not all be empty [default: when any scan has a mask]"),
    ) -> None:
        """Report every problem of a cohort at once; exit code 1 when there is any."""
        from mstnet.data.io import MASK_BINARIZATIONS
        from mstnet.data.validate import CohortNeeds, validate_source

        if binarize_masks is not None and binarize_masks not in MASK_BINARIZATIONS:
            raise typer.BadParameter(f"expected one of {', '.join(MASK_BINARIZATIONS)}, got {binarize_masks!r}",
                                     param_hint="--binarize-masks")

        def needs(cohort) -> CohortNeeds:
            uses_masks = segmentation if segmentation is not None else any(
                scan.mask is not None for patient in cohort for scan in patient.scans)
            return CohortNeeds(min_timepoints=min_timepoints, n_folds=folds or None, segmentation=uses_masks)

        cohort, problems = validate_source(source, needs, read_data=read_data, binarize_masks=binarize_masks)
        if not problems:
            console.print(f"[green]{source}: {len(cohort)} patients, no problems found[/green]")
            return
        table = Table("patient", "time point", "column", "file", "problem", title=f"{len(problems)} problem(s) in {source}")
        for problem in problems:
            table.add_row(problem.patient_id or "", problem.timepoint or "", problem.column or "", problem.file or "",
                          problem.message)
        console.print(table)
        raise typer.Exit(code=1)

    @data.command("summary")
    def summary_command(
        source: Path = typer.Argument(..., help="cohort folder (manifest, NLST layout or LIDC DICOM) or its CSV"),
    ) -> None:
        """Counts, label balance, time points, spacing and size ranges of a cohort."""
        from mstnet.data.cohort import CohortError
        from mstnet.data.sources import load_cohort

        try:
            cohort = load_cohort(source)
        except CohortError as error:
            console.print(f"[red]{error}[/red]\nrun `mstnet data validate {source}` for a table of all problems")
            raise typer.Exit(code=1) from None
        table = Table("", "value", title=f"cohort {cohort.name} ({source})")
        for key, value in summarise_cohort(cohort).items():
            table.add_row(key, str(value))
        console.print(table)

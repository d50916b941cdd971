"""``mstnet model summary PRESET``: MST-Net parameters per module and FLOPs per forward."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table


def parse_image_size(text: str | None) -> tuple[int, int, int] | None:
    """``"16x64x64"`` -> (16, 64, 64)."""
    if not text:
        return None
    try:
        size = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 3:
        raise typer.BadParameter(f"--image-size takes DxHxW such as 16x64x64; got {text!r}")
    return size


def summary_command(
    preset: str = typer.Argument(..., help="MST-Net preset: paper, cpu or tiny."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    image_size: str | None = typer.Option(None, "--image-size", help="Override the scan size, DxHxW (e.g. 16x64x64)."),
    flops: bool = typer.Option(True, "--flops/--no-flops", help="Count FLOPs of one forward pass (meta device)."),
) -> None:
    """Parameters per module and FLOPs per forward of MST-Net, built on the meta device."""
    from mstnet.models.summary import model_summary

    overrides: dict[str, Any] = {}
    size = parse_image_size(image_size)
    if size is not None:
        overrides["image_size"] = size
    try:
        summary = model_summary(preset, flops=flops, **overrides)
    except (KeyError, ValueError) as error:
        raise typer.BadParameter(str(error.args[0] if error.args else error)) from None
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table(title=f"MST-Net, preset {preset}, input {summary['input_shape']}")
    table.add_column("module")
    table.add_column("parameters", justify="right")
    table.add_column("release", justify="right")
    table.add_column("difference", justify="right")
    reference = summary.get("reference_params", {})
    for name, count in summary["modules"].items():
        ref = reference.get(name)
        table.add_row(name, f"{count / 1e6:,.3f} M", f"{ref / 1e6:,.3f} M" if ref else "",
                      f"{summary['relative_difference'][name]:+.2%}" if ref else "")
    table.add_row("total", f"{summary['total_params'] / 1e6:,.3f} M", "", "")
    console = Console()
    console.print(table)
    if summary["flops_per_forward"] is not None:
        console.print(f"FLOPs per forward (1 patient, {summary['input_shape'][1]} time points): "
                      f"{summary['flops_per_forward'] / 1e9:,.2f} GFLOP")
        for name, value in summary["flops_by_module"].items():
            console.print(f"  {name}: {value / 1e9:,.3f} GFLOP")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["model"].command("summary")(summary_command)

"""The ``mstnet`` command line: ``mstnet data ...``, ``mstnet model ...``, ``mstnet run`` and friends."""

from __future__ import annotations

import importlib
import logging
import pkgutil

import typer

import mstnet.commands

GROUP_HELP = {
    "data": "Cohorts: synthesize, validate, summarise, preview, oracle ceilings.",
    "model": "Models: parameter and FLOP summaries.",
}


def build_app() -> typer.Typer:
    """Assemble the CLI from every module in :mod:`mstnet.commands`."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, help="MST-Net benchmark and ablation suite.")
    groups = {name: typer.Typer(no_args_is_help=True, help=text) for name, text in GROUP_HELP.items()}
    for name, group in groups.items():
        app.add_typer(group, name=name)
    for module_info in sorted(pkgutil.iter_modules(mstnet.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"mstnet.commands.{module_info.name}")
        module.register(app, groups)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_app()()


if __name__ == "__main__":
    main()

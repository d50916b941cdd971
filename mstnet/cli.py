"""The ``mstnet`` command line: ``mstnet data ...``, ``mstnet model ...``, ``mstnet run`` and friends.

Failures are one line on stderr (``error: ...``, with the valid choices where they help):
exit code 2 for usage errors (:class:`mstnet.errors.UsageError`, click's own), 1 for data
errors (:class:`mstnet.errors.DataError`) and anything unexpected. ``--debug`` anywhere on
the command line (or ``MSTNET_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

import typer

import mstnet.commands
from mstnet.errors import DataError, UsageError

GROUP_HELP = {
    "data": "Cohorts: synthesize, validate, summarise, preview, oracle ceilings.",
    "model": "Models: parameter and FLOP summaries.",
}


DISTRIBUTION = "mstnet-bench"


def version_text() -> str:
    """``mstnet-bench X.Y.Z (torch A.B.C, git <commit>)``: the installed package, torch, and the
    source checkout's commit when the package runs from one."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    try:
        package = version(DISTRIBUTION)
    except PackageNotFoundError:
        package = "unknown (not installed)"
    try:
        import torch

        parts = [f"torch {torch.__version__}"]
    except ImportError:
        parts = ["torch not installed"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if commit:
        parts.append(f"git {commit}")
    return f"{DISTRIBUTION} {package} ({', '.join(parts)})"


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(version_text() + "\n")
        raise typer.Exit(0)


def build_app() -> typer.Typer:
    """Assemble the CLI from every module in :mod:`mstnet.commands`."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, help="MST-Net benchmark and ablation suite.")

    @app.callback()
    def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                              help="show the package, torch and git versions and exit")) -> None:
        """MST-Net benchmark and ablation suite."""

    groups = {name: typer.Typer(no_args_is_help=True, help=text) for name, text in GROUP_HELP.items()}
    for name, group in groups.items():
        app.add_typer(group, name=name)
    for module_info in sorted(pkgutil.iter_modules(mstnet.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"mstnet.commands.{module_info.name}")
        module.register(app, groups)
    return app


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``mstnet`` with ``argv`` (default ``sys.argv[1:]``); exits with the command's code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MSTNET_DEBUG", "") not in ("", "0")
    args = [arg for arg in args if arg != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = typer.main.get_command(build_app())
    try:
        code = command.main(args=args, prog_name="mstnet", standalone_mode=False)
    except typer.Exit as done:
        code = done.exit_code
    except typer.TyperException as error:  # click's usage errors (vendored by typer): bad option, missing argument
        if debug:
            raise
        if type(error).__name__ == "NoArgsIsHelpError":
            sys.stdout.write(error.format_message() + "\n")
            sys.exit(2)
        context = getattr(error, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        _fail(f"{error.format_message()}{hint}", getattr(error, "exit_code", 2))
    except (UsageError, DataError) as error:
        if debug:
            raise
        _fail(str(error), error.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted; the same command resumes where it stopped", 130)
    except Exception as error:  # noqa: BLE001 - the command line's last resort: one line, not a traceback
        if debug:
            raise
        _fail(f"{type(error).__name__}: {error} (rerun with --debug for the traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

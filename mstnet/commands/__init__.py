"""Command modules of the ``mstnet`` CLI.

Each module here defines ``register(app, groups)``: it adds its commands to the top-level
Typer ``app`` or to one of the sub-command ``groups`` (``data``, ``model``). The CLI finds
the modules by listing this package, so adding a command never edits a shared file.

Shared by the command modules: :func:`with_launch_options` gives a command the ``--launcher``
option and the SLURM settings (docs/slurm.md) as one :class:`LaunchRequest` argument;
:func:`key_value_pairs` splits the ``--set key=value`` options.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


def key_value_pairs(items: list[str] | None, hint: str = "") -> dict[str, str]:
    """``["a=1", "b.c=[2, 3]"]`` -> ``{"a": "1", "b.c": "[2, 3]"}`` (keys stripped; ``--set`` without ``=`` refused)."""
    import typer

    pairs: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set takes key=value{hint}; got {item!r}")
        key, value = item.split("=", 1)
        pairs[key.strip()] = value
    return pairs


@dataclass(frozen=True)
class LaunchRequest:
    """``--launcher`` and the SLURM settings of one command line (``--launcher-config``, ``--partition``, ...)."""

    launcher: str = "local"
    launcher_config: Path | None = None
    partition: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_limit: str | None = None
    sbatch: list[str] | None = None

    def make_launcher(self, runs_dir: Path, device: str) -> Any:
        """:func:`mstnet.experiments.launcher.make_launcher` of these options: None for ``--launcher local``."""
        from mstnet.experiments.launcher import make_launcher

        return make_launcher(self.launcher, runs_dir, device, self.launcher_config, self.partition,
                             self.gpus_per_task, self.cpus_per_task, self.mem_gb, self.time_limit, self.sbatch)


def _launch_options() -> dict[str, tuple[Any, Any]]:
    """Each :class:`LaunchRequest` field's command-line type and Typer option (declared in
    :mod:`mstnet.commands.experiments` with ``run`` and ``reproduce``)."""
    from mstnet.commands import experiments as shared

    options = (shared.LAUNCHER_OPTION, shared.LAUNCHER_CONFIG_OPTION, shared.PARTITION_OPTION, shared.GPUS_OPTION,
               shared.CPUS_OPTION, shared.MEM_OPTION, shared.TIME_OPTION, shared.SBATCH_OPTION)
    types = (str, Path | None, str | None, int | None, int | None, float | None, str | None, list[str])
    return {field.name: (kind, option) for field, kind, option in zip(fields(LaunchRequest), types, options)}


def with_launch_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with the ``--launcher`` and SLURM options in place of its ``launch: LaunchRequest`` parameter:
    Typer sees the eight options there, ``command`` is called with them as one :class:`LaunchRequest`."""
    options = _launch_options()
    signature = inspect.signature(command, eval_str=True)
    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        if parameter.name != "launch":
            parameters.append(parameter)
            continue
        parameters += [inspect.Parameter(name, parameter.kind, default=option, annotation=kind)
                       for name, (kind, option) in options.items()]

    @functools.wraps(command)
    def with_launch(**arguments: Any) -> Any:
        launch = LaunchRequest(**{name: arguments.pop(name) for name in options})
        return command(**arguments, launch=launch)

    with_launch.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_launch.__annotations__ = {**{p.name: p.annotation for p in parameters}, "return": signature.return_annotation}
    return with_launch

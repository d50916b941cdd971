"""The settings of a SLURM launch (:class:`SlurmSettings`): from ``--launcher-config FILE`` (TOML or JSON)
and the command-line options, which win (docs/slurm.md; used by :mod:`mstnet.experiments.launcher`)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mstnet.errors import UsageError

SLURM_DIR = ".slurm"
"""submitit's folder (scripts, pickles, logs) inside RUNS_DIR, unless ``log_dir`` says otherwise."""


@dataclass(frozen=True)
class SlurmSettings:
    """What each array task asks SLURM for, and how the launcher submits and waits.

    Attributes:
        partition: ``--partition`` (None: the cluster's default).
        gpus_per_task: ``--gpus-per-task`` (None or 0: none).
        cpus_per_task: ``--cpus-per-task`` (None: the cluster's default, usually 1); also the
            task's torch threads.
        mem_gb: ``--mem`` in GB (None: the cluster's default).
        time_min: ``--time`` in minutes per task (default 24 h). A task that reaches it is
            requeued by submitit and resumes from its last epoch.
        sbatch: extra sbatch flags, ``{"account": "rad", "qos": "long", "exclusive": True}``.
        setup: shell lines run in the batch script before the task (``module load ...``).
        max_parallel: array tasks running at once (``--array=0-N%max_parallel``; None: 256).
        job_name: ``--job-name``.
        log_dir: submitit's folder (scripts, pickles, logs); default ``RUNS_DIR/.slurm``.
        poll_s: seconds between checks of the array while waiting.
    """

    partition: str | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 24 * 60
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    max_parallel: int | None = None
    job_name: str = "mstnet"
    log_dir: Path | None = None
    poll_s: float = 5.0


CONFIG_KEYS = {"partition": str, "gpus_per_task": int, "cpus_per_task": int, "mem_gb": (int, float),
               "time": (int, str), "time_min": int, "sbatch": dict, "setup": list, "max_parallel": int,
               "job_name": str, "log_dir": str, "poll_s": (int, float)}


def parse_time(value: int | str) -> int:
    """A SLURM time limit as minutes: ``90``, ``"90"``, ``"MM:SS"``, ``"HH:MM:SS"``, ``"D-HH[:MM[:SS]]"``.

    Raises:
        UsageError: anything else, or a limit under one minute.
    """
    if isinstance(value, bool):
        raise UsageError(f"time limit {value!r}: give minutes or [D-]HH:MM:SS")
    if isinstance(value, int):
        minutes = value
    else:
        text = str(value).strip()
        match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if not match:
            raise UsageError(f"time limit {value!r}: give minutes or [D-]HH:MM:SS, e.g. 90, 12:00:00, 2-00:00:00")
        days, first, second, third = match.groups()
        numbers = [int(part) for part in (first, second, third) if part is not None]
        if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
            hours, mins, secs = (numbers + [0, 0])[:3]
            minutes = int(days) * 1440 + hours * 60 + mins + (secs + 59) // 60
        elif len(numbers) == 1:  # MM
            minutes = numbers[0]
        elif len(numbers) == 2:  # MM:SS
            minutes = numbers[0] + (numbers[1] + 59) // 60
        else:  # HH:MM:SS
            minutes = numbers[0] * 60 + numbers[1] + (numbers[2] + 59) // 60
    if minutes < 1:
        raise UsageError(f"time limit {value!r}: at least one minute")
    return minutes


def parse_sbatch_flags(items: Sequence[str] | None) -> dict[str, Any]:
    """``["account=rad", "--qos=long", "exclusive"]`` -> ``{"account": "rad", "qos": "long", "exclusive": True}``."""
    flags: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise UsageError(f"--sbatch takes KEY=VALUE (an sbatch long option without its dashes); got {item!r}")
        flags[key] = value if sep else True
    return flags


def read_launcher_config(path: Path) -> dict[str, Any]:
    """The settings of a ``--launcher-config`` file: TOML (``.toml``) or JSON, at top level or under ``[slurm]``.

    Raises:
        UsageError: a missing or unreadable file, an unknown key, a value of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--launcher-config {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ModuleNotFoundError:
        raise UsageError(f"--launcher-config {path}: reading TOML on Python 3.10 needs `pip install tomli`; "
                         "or write the file as JSON") from None
    except ValueError as error:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        raise UsageError(f"--launcher-config {path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--launcher-config {path}: expected a table of settings, got {type(data).__name__}")
    if isinstance(data.get("slurm"), dict):
        data = data["slurm"]
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise UsageError(f"--launcher-config {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(CONFIG_KEYS))}")
    for key, value in data.items():
        kind = CONFIG_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise UsageError(f"--launcher-config {path}: {key} must be {names}; got {value!r}")
    return data


def slurm_settings(config: Path | None = None, partition: str | None = None, gpus_per_task: int | None = None,
                   cpus_per_task: int | None = None, mem_gb: float | None = None, time_limit: str | None = None,
                   sbatch: Sequence[str] | None = None, runs_dir: Path | None = None) -> SlurmSettings:
    """The settings of a launch: the config file's, then the command line's (which win)."""
    values: dict[str, Any] = {}
    if config is not None:
        data = read_launcher_config(config)
        for key, value in data.items():
            if key in ("time", "time_min"):
                values["time_min"] = parse_time(value)
            elif key == "setup":
                values["setup"] = tuple(str(line) for line in value)
            elif key == "log_dir":
                values["log_dir"] = Path(value).expanduser()
            elif key == "sbatch":
                values["sbatch"] = {str(k).lstrip("-"): v for k, v in value.items()}
            else:
                values[key] = value
    overrides = {"partition": partition, "gpus_per_task": gpus_per_task, "cpus_per_task": cpus_per_task,
                 "mem_gb": mem_gb}
    values.update({key: value for key, value in overrides.items() if value is not None})
    if time_limit is not None:
        values["time_min"] = parse_time(int(time_limit) if str(time_limit).isdigit() else time_limit)
    if sbatch:
        values["sbatch"] = {**values.get("sbatch", {}), **parse_sbatch_flags(sbatch)}
    if values.get("log_dir") is None and runs_dir is not None:
        values["log_dir"] = Path(runs_dir) / SLURM_DIR
    for key in ("gpus_per_task", "cpus_per_task", "max_parallel", "mem_gb", "poll_s"):
        if values.get(key) is not None and values[key] < (0 if key == "gpus_per_task" else 0.001):
            raise UsageError(f"launcher setting {key} must be positive; got {values[key]!r}")
    return SlurmSettings(**values)

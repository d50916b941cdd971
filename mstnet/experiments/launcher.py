"""Run the experiment grid on SLURM, one job-array task per (experiment, seed, fold), through submitit.

``mstnet run|reproduce|ablate --launcher slurm`` hands the folds that
:func:`mstnet.experiments.reproduce.run_group` would train here to a :class:`Launcher`:

1. Everything is checked and the folder's files are written first, in the submitting process
   (``preflight``, ``commit_runs``; the cohort, the embedded synthetic one included, is built
   and cached by ``prepare_runs`` before that), so bad input fails before anything is submitted.
2. Finished folds (``run.json`` present with the same configuration) are not submitted; every
   other (experiment, fold) becomes one task of one SLURM job array (``executor.map_array``); with
   ``--seeds N`` each training-seed replicate of it is a task of its own.
   A task runs :func:`mstnet.experiments.runner.run_experiment` on its fold, which resumes an
   unfinished fold from its ``last.pt``; results go to the shared results folder.
3. The submitting process waits for the array (submitit's result files; ``squeue`` for the
   tasks still queued or running, ``sacct`` for how the others ended where accounting is on), then reports each failed task with its id, its log
   file and the last lines of its error, and which folds are missing (:class:`TasksFailed`).
   Submitting the same command again runs only the missing folds.

``mstnet tune --launcher slurm --slurm-workers K`` submits K tasks per outer fold, all joining
that fold's Optuna study in one storage (:meth:`Launcher.run_tuning`).

Settings (:class:`SlurmSettings`) come from ``--launcher-config FILE`` (TOML or JSON) and the
command-line options, which win. Logs and submitit's files are kept in ``RUNS_DIR/.slurm/``.
``backend="local"`` runs the same tasks as local processes through submitit's
``LocalExecutor`` (the unit tests use it); ``--launcher local`` is the plain process pool.

Where the parts live: the settings in :mod:`mstnet.experiments.slurm_settings`, what one array
task runs in :mod:`mstnet.experiments.array_tasks`, and what SLURM says of a task in
:mod:`mstnet.experiments.slurm_scheduler`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mstnet.atomic import write_text_atomic
from mstnet.errors import UsageError
from mstnet.experiments.array_tasks import FoldTask, TuneTask
from mstnet.experiments.slurm_scheduler import ACTIVE_STATES, SchedulerUnavailable, scheduler_states
from mstnet.experiments.slurm_settings import SLURM_DIR, SlurmSettings, slurm_settings

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "slurm")
TASKS_FILE = "tasks.json"
ERROR_LINES = 12


# --------------------------------------------------------------------------- settings


def make_launcher(launcher: str, runs_dir: Path, device: str = "auto", config: Path | None = None,
                  partition: str | None = None, gpus_per_task: int | None = None, cpus_per_task: int | None = None,
                  mem_gb: float | None = None, time_limit: str | None = None,
                  sbatch: Sequence[str] | None = None) -> "Launcher | None":
    """The launcher of ``--launcher``: None for ``local`` (the process pool), a :class:`Launcher` for ``slurm``.

    Raises:
        UsageError: an unknown launcher, SLURM options without ``--launcher slurm``, bad settings,
            or ``slurm`` where ``sbatch`` is not on the PATH.
    """
    if launcher not in LAUNCHERS:
        raise UsageError(f"--launcher must be one of {', '.join(LAUNCHERS)}; got {launcher!r}")
    given = {"--launcher-config": config, "--partition": partition, "--gpus-per-task": gpus_per_task,
             "--cpus-per-task": cpus_per_task, "--mem-gb": mem_gb, "--time": time_limit, "--sbatch": sbatch or None}
    if launcher == "local":
        used = [name for name, value in given.items() if value is not None]
        if used:
            raise UsageError(f"{', '.join(used)} only apply with --launcher slurm")
        return None
    settings = slurm_settings(config, partition, gpus_per_task, cpus_per_task, mem_gb, time_limit, sbatch, runs_dir)
    if shutil.which("sbatch") is None:
        raise UsageError("--launcher slurm: sbatch is not on the PATH (submit from a SLURM login node; "
                         "scripts/slurm-local-cluster start makes a one-node cluster on this machine)")
    return Launcher(settings, backend="slurm", device=device)


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class TaskFailure:
    """A task that ended without its result: the id, what it ran, how it ended and where its log is."""

    task_id: str
    label: str
    state: str
    log_path: Path
    last_lines: tuple[str, ...]

    def describe(self) -> str:
        lines = [f"task {self.task_id} ({self.label}): {self.state}; log {self.log_path}"]
        lines += [f"    | {line}" for line in self.last_lines] or ["    | (the log is empty)"]
        return "\n".join(lines)


class TasksFailed(RuntimeError):
    """Tasks of an array failed; ``missing`` names the folds without results (rerun the command to resume them)."""

    exit_code = 1

    def __init__(self, failures: Sequence[TaskFailure], missing: Sequence[str], total: int):
        self.failures, self.missing, self.total = list(failures), list(missing), total
        super().__init__(self.report())

    def report(self) -> str:
        lines = [f"{len(self.failures)} of {self.total} task(s) failed:"] if self.failures else []
        lines += [failure.describe() for failure in self.failures]
        if self.missing:
            lines.append(f"missing folds ({len(self.missing)}): {', '.join(self.missing)}; "
                         "the same command resubmits only these, and unfinished ones resume from their last epoch")
        return "\n".join(lines)


LOG_SETTLE_S = 3.0
"""How long a failed task's log may still grow after its state reads failed: the task writes its result (the
state) before the Python traceback reaches stderr, so the log is read once its size has stopped changing."""


def _settled_size(path: Path, timeout_s: float = LOG_SETTLE_S, poll_s: float = 0.2) -> None:
    """Wait (at most ``timeout_s``) until ``path``'s size is the same in two reads ``poll_s`` apart."""
    deadline = time.monotonic() + timeout_s
    previous = -1
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else -1
        if size == previous:
            return
        previous = size
        time.sleep(poll_s)


def _tail(path: Path, lines: int = ERROR_LINES) -> tuple[str, ...]:
    _settled_size(Path(path))
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ()
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return tuple(kept[-lines:])


# --------------------------------------------------------------------------- the launcher


def pending_folds(prepared: Any, specs: Sequence[Any], folds: Sequence[int], seeds: int = 1) -> list[tuple]:
    """The array's tasks: every (experiment, seed replicate, fold) without a complete ``run.json``, experiment
    by experiment, seed by seed. A task is ``(experiment, fold)`` for replicate 0 and ``(experiment, fold,
    seed)`` for replicate s >= 1, as its folder is ``<experiment>/fold<k>`` or ``<experiment>/seed<s>/fold<k>``."""
    from mstnet.experiments.runner import fold_is_complete, training_seeds

    return [(spec.name, fold, seed) if seed else (spec.name, fold)
            for spec in specs for seed in training_seeds(spec, seeds) for fold in folds
            if not fold_is_complete(prepared.runs_dir, spec.name, fold, prepared.splits, seed)]


def _task_names(task: tuple) -> tuple[str, str]:
    """(key in ``tasks.json``, label in messages) of a task of :func:`pending_folds`."""
    name, fold, seed = (*task, 0)[:3]
    return (f"{name}/seed{seed}/fold{fold}" if seed else f"{name}/fold{fold}",
            f"{name} seed {seed} fold {fold}" if seed else f"{name} fold {fold}")


@dataclass
class _Pending:
    key: str
    label: str
    job: Any
    missing_polls: int = 0


class Launcher:
    """Submits tasks as one submitit job array and waits for them.

    Args:
        settings: what each task asks for (:class:`SlurmSettings`).
        backend: ``"slurm"`` (sbatch) or ``"local"`` (submitit's ``LocalExecutor``: the same
            tasks as local processes; used by the tests).
        device: the device each task resolves where it runs (``auto``: its CUDA GPU when it has one).
    """

    def __init__(self, settings: SlurmSettings, backend: str = "slurm", device: str = "auto"):
        try:
            import submitit  # noqa: F401
        except ModuleNotFoundError:
            raise UsageError("--launcher slurm needs submitit: pip install submitit") from None
        if backend not in ("slurm", "local"):
            raise ValueError(f"backend must be slurm or local; got {backend!r}")
        self.settings, self.backend, self.device = settings, backend, device

    # -- submission

    def sbatch_parameters(self) -> dict[str, Any]:
        """The parameters of submitit's ``SlurmExecutor`` (hence of the batch script) for these settings."""
        settings = self.settings
        parameters: dict[str, Any] = {"time": settings.time_min, "job_name": settings.job_name,
                                      "additional_parameters": dict(settings.sbatch), "setup": list(settings.setup)}
        if settings.partition:
            parameters["partition"] = settings.partition
        if settings.gpus_per_task:
            parameters["gpus_per_task"] = settings.gpus_per_task
        if settings.cpus_per_task:
            parameters["cpus_per_task"] = settings.cpus_per_task
        if settings.mem_gb:
            parameters["mem"] = f"{max(1, int(round(settings.mem_gb * 1024)))}M"
        if settings.max_parallel:
            parameters["array_parallelism"] = settings.max_parallel
        return parameters

    def executor(self, folder: Path) -> Any:
        import submitit

        if self.backend == "local":
            executor = submitit.LocalExecutor(folder=str(folder))
            executor.update_parameters(timeout_min=self.settings.time_min)
            return executor
        executor = submitit.SlurmExecutor(folder=str(folder))
        executor.update_parameters(**self.sbatch_parameters())
        return executor

    def _folder(self, runs_dir: Path) -> Path:
        folder = Path(self.settings.log_dir or Path(runs_dir) / SLURM_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _refuse_active(self, folder: Path, keys: Sequence[str]) -> None:
        """Refuse to submit a fold that an earlier array of this folder still has queued or running."""
        record = folder / TASKS_FILE
        if self.backend != "slurm" or not record.exists():
            return
        earlier = {key: job_id for key, job_id in json.loads(record.read_text()).items() if key in keys}
        if not earlier:
            return
        states = scheduler_states(list(earlier.values()))
        active = {key: job_id for key, job_id in earlier.items() if states.get(job_id) in ACTIVE_STATES}
        if active:
            arrays = sorted({job_id.split("_")[0] for job_id in active.values()})
            raise UsageError("still queued or running from an earlier submission: "
                             f"{', '.join(f'{key} (task {job_id}, {states[job_id]})' for key, job_id in active.items())}; "
                             f"wait for them to end or scancel {' '.join(arrays)}, then submit again")

    def _record(self, folder: Path, submitted: dict[str, str]) -> None:
        record = folder / TASKS_FILE
        known = json.loads(record.read_text()) if record.exists() else {}
        write_text_atomic(record, json.dumps({**known, **submitted}, indent=2, sort_keys=True) + "\n")

    def submit(self, function: Callable[..., Any], arguments: Sequence[tuple], keys: Sequence[str],
               labels: Sequence[str], runs_dir: Path) -> list[_Pending]:
        """Submit ``function(*arguments[i])`` for every i as one array; returns the pending tasks."""
        folder = self._folder(runs_dir)
        self._refuse_active(folder, keys)
        executor = self.executor(folder)
        jobs = executor.map_array(function, *zip(*arguments))
        self._record(folder, {key: str(job.job_id) for key, job in zip(keys, jobs)})
        first = str(jobs[0].job_id).split("_")[0]
        log.info("submitted %d task(s) as %s array %s; logs in %s", len(jobs), self.backend, first, folder)
        return [_Pending(key, label, job) for key, label, job in zip(keys, labels, jobs)]

    # -- waiting

    def wait(self, pending: Sequence[_Pending]) -> tuple[list[tuple[_Pending, Any]], list[TaskFailure]]:
        """Wait until every task has ended; ``(results, failures)``.

        A task has ended when submitit's result file is there (a result or a Python error), or when
        SLURM no longer runs it (cancelled, killed, timed out, out of memory, a node failure).
        """
        from submitit.core.utils import pickle_load

        waiting, results, failures = list(pending), [], []
        total, reported, clock = len(pending), -1, time.monotonic()
        try:
            while waiting:
                try:
                    states = scheduler_states([str(p.job.job_id) for p in waiting]) if self.backend == "slurm" else {}
                except SchedulerUnavailable as error:
                    log.warning("squeue failed (%s); trying again in %.0f s", error, self.settings.poll_s)
                    time.sleep(self.settings.poll_s)
                    continue
                still = []
                for task in waiting:
                    job = task.job
                    result_file = Path(job.paths.result_pickle)
                    if result_file.exists():
                        outcome, value = _load_result(pickle_load, result_file)
                        if outcome == "success":
                            results.append((task, value))
                        else:
                            failures.append(self._failure(task, "FAILED (Python error)"))
                        continue
                    if self.backend == "local":
                        if job.done():
                            failures.append(self._failure(task, "ended without a result"))
                        else:
                            still.append(task)
                        continue
                    state = states.get(str(job.job_id))
                    if state in ACTIVE_STATES:
                        still.append(task)
                        continue
                    # Ended (or forgotten by squeue) without a result file: give a shared file
                    # system two more looks before calling it a failure.
                    task.missing_polls += 1
                    if task.missing_polls < 3 and state in (None, "COMPLETED", "UNKNOWN"):
                        still.append(task)
                        continue
                    failures.append(self._failure(task, state or "ended (no longer known to squeue)"))
                waiting = still
                done = total - len(waiting)
                if done != reported:
                    log.info("%d of %d task(s) ended (%d failed), %.0f s", done, total, len(failures),
                             time.monotonic() - clock)
                    reported = done
                if waiting:
                    time.sleep(self.settings.poll_s)
        except KeyboardInterrupt:
            ids = sorted({str(p.job.job_id).split("_")[0] for p in waiting})
            log.warning("stopped waiting: the array keeps running (scancel %s stops it); the same command "
                        "waits for nothing it finished and resubmits the rest once it has ended", " ".join(ids))
            raise
        return results, failures

    @staticmethod
    def _failure(task: _Pending, state: str) -> TaskFailure:
        job = task.job
        stderr, stdout = Path(job.paths.stderr), Path(job.paths.stdout)
        lines = _tail(stderr) or _tail(stdout)
        return TaskFailure(str(job.job_id), task.label, state, stderr if stderr.exists() or not stdout.exists() else stdout,
                           lines)

    # -- what the commands call

    def run_folds(self, prepared: Any, specs: Sequence[Any], options: Any, folds: Sequence[int],
                  runner: Callable[..., Any] | None = None, seeds: int = 1) -> list[tuple]:
        """Train every unfinished (experiment, seed replicate, fold) of ``seeds`` replicates as one array
        task; returns the tasks submitted (:func:`pending_folds`).

        ``run_group`` calls this after its checks and ``commit_runs``. ``runner(name, prepared,
        options, fold)`` (the replicate in ``options.seed_index``) replaces :func:`mstnet.experiments.array_tasks.train_fold` (tests).

        Raises:
            TasksFailed: a task failed, or a fold has no results after the array.
        """
        from mstnet.experiments.runner import fold_is_complete, training_seeds

        todo = pending_folds(prepared, specs, folds, seeds)
        skipped = sum(len(training_seeds(spec, seeds)) for spec in specs) * len(folds) - len(todo)
        if skipped:
            log.info("%d fold(s) already complete with the same configuration: not submitted", skipped)
        if not todo:
            return []
        # Tasks start in the submitting folder (sbatch's default); absolute paths do not depend on it.
        prepared = replace(prepared, runs_dir=Path(prepared.runs_dir).resolve())
        options = replace(options, progress=False,
                          cache_dir=Path(options.cache_dir).resolve() if options.cache_dir is not None else None)
        task = FoldTask(prepared, options, device=self.device, runner=runner)
        names = [_task_names(item) for item in todo]
        pending = self.submit(task, [(*item, 0)[:3] for item in todo], [key for key, _ in names],
                              [label for _, label in names], prepared.runs_dir)
        _, failures = self.wait(pending)
        missing = [_task_names((spec.name, fold, seed))[1] for spec in specs for seed in training_seeds(spec, seeds)
                   for fold in folds if not fold_is_complete(prepared.runs_dir, spec.name, fold, prepared.splits, seed)]
        if failures or missing:
            raise TasksFailed(failures, missing, len(todo))
        return todo

    def run_tuning(self, arguments: dict[str, Any], folds: Sequence[int], workers: int,
                   study_names: dict[int, str]) -> list[dict[str, Any]]:
        """``workers`` Optuna workers per outer fold, each running ``arguments["n_trials"]`` trials of
        that fold's study (``study_names[fold]``) in the shared storage.

        Raises:
            TasksFailed: a worker failed (the studies keep every trial that finished).
        """
        runs_dir = Path(arguments["runs_dir"]).resolve()
        arguments = {**arguments, "runs_dir": runs_dir,
                     "data": Path(arguments["data"]).resolve() if arguments.get("data") is not None else None}
        tasks = [(fold, worker) for fold in folds for worker in range(workers)]
        task = TuneTask({**arguments, "study_names": dict(study_names), "progress": False})
        pending = self.submit(task, tasks, [f"tune/{study_names[f]}/worker{w}" for f, w in tasks],
                              [f"tuning fold {f}, worker {w}" for f, w in tasks], runs_dir)
        results, failures = self.wait(pending)
        if failures:
            raise TasksFailed(failures, [], len(tasks))
        return [value for _, value in results]


def _load_result(pickle_load: Callable[[Path], Any], path: Path) -> tuple[str, Any]:
    """submitit's result file: ``("success", value)`` or ``("error", traceback)``; retried while it is being written."""
    for attempt in range(5):
        try:
            outcome, value = pickle_load(path)
            return str(outcome), value
        except (EOFError, OSError, ValueError):
            if attempt == 4:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def check_tuning(name: str, preset: str, runs_dir: Path, folds: Sequence[int], study_names: dict[int, str],
                 storage: str, data: Path | None = None, epochs: int | None = None, params: dict[str, Any] | None = None,
                 split_seed: int = 0, binarize_masks: str | None = None) -> None:
    """The checks :func:`mstnet.experiments.tuning.tune` makes, in the submitting process, for every fold,
    then the folder's files and the studies (so workers only join them)."""
    import optuna
    import torch

    from mstnet.experiments.presets import run_preset
    from mstnet.experiments.registry import get_experiment
    from mstnet.experiments.reproduce import commit_runs, preflight, prepare_runs
    from mstnet.experiments.runner import RunOptions
    from mstnet.experiments.tuning import make_storage, study_dir

    spec = get_experiment(name)
    if spec.kind != "torch":
        raise UsageError(f"experiment {name!r} is {spec.kind}; tuning trains torch experiments only")
    options = RunOptions(preset=run_preset(preset, epochs=epochs), device=torch.device("cpu"), params=dict(params or {}),
                         cache_dir=Path(runs_dir) / ".cache", progress=False, evaluate_test=False)
    prepared = prepare_runs(Path(runs_dir), options.preset, data=data, seed=split_seed, write=False,
                            binarize_masks=binarize_masks)
    for fold in folds:
        base = study_dir(Path(runs_dir), name, study_names[fold])
        preflight(replace(prepared, runs_dir=base / "preflight"), [spec], options, [fold])
    commit_runs(prepared)
    for fold in folds:
        optuna.create_study(study_name=study_names[fold], storage=make_storage(storage), direction="maximize",
                            load_if_exists=True)


__all__ = [
    "LAUNCHERS", "Launcher", "TaskFailure", "TasksFailed", "check_tuning", "make_launcher", "pending_folds",
]

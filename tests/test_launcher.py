"""The SLURM launcher (mstnet/experiments/launcher.py) without a cluster: settings, the batch script,
the scheduler's answers, and whole arrays through submitit's LocalExecutor (the same tasks as local
processes): the task list, finished folds not resubmitted, the failure report.

The real cluster is tests/test_slurm.py."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import cloudpickle
import pytest

from harness_cohort import write_growth_cohort
from mstnet.cli import main
from mstnet.errors import UsageError
from mstnet.experiments.launcher import Launcher, TasksFailed, make_launcher, pending_folds
from mstnet.experiments.slurm_scheduler import scheduler_states
from mstnet.experiments.slurm_settings import (
    SlurmSettings,
    parse_sbatch_flags,
    parse_time,
    read_launcher_config,
    slurm_settings,
)
from mstnet.experiments.presets import run_preset
from mstnet.experiments.registry import get_experiment
from mstnet.experiments.reproduce import prepare_runs, run_group
from mstnet.experiments.runner import RunOptions, fold_dir_of, fold_is_complete, run_experiment
from mstnet.experiments.training import resolve_device

pytest.importorskip("submitit")
# The fake fold runners below run in submitit's worker processes, where this test module
# cannot be imported by name: pickle them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = SlurmSettings(poll_s=0.2)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("text, minutes", [(90, 90), ("90", 90), ("12:00:00", 720), ("1:30", 2), ("2-00:00:00", 2880),
                                           ("1-12", 2160), ("0:30:01", 31)])
def test_time_limits_in_slurm_formats(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["soon", "0", "1:2:3:4", "", True])
def test_bad_time_limits_are_refused(text):
    with pytest.raises(UsageError):
        parse_time(text)


def test_sbatch_flags():
    assert parse_sbatch_flags(["account=rad", "--qos=long", "exclusive", "constraint=a100|h100"]) == {
        "account": "rad", "qos": "long", "exclusive": True, "constraint": "a100|h100"}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_sbatch_flags(["=x"])


def test_config_file_toml_and_json_and_the_command_line_wins(tmp_path):
    toml = tmp_path / "slurm.toml"
    toml.write_text('[slurm]\npartition = "gpu"\ngpus_per_task = 1\ncpus_per_task = 8\nmem_gb = 64\ntime = "12:00:00"\n'
                    'setup = ["module load cuda"]\nmax_parallel = 4\n[slurm.sbatch]\naccount = "rad"\n')
    settings = slurm_settings(toml, partition="a100", sbatch=["qos=long"], runs_dir=tmp_path / "runs")
    assert settings == SlurmSettings(partition="a100", gpus_per_task=1, cpus_per_task=8, mem_gb=64, time_min=720,
                                     sbatch={"account": "rad", "qos": "long"}, setup=("module load cuda",),
                                     max_parallel=4, log_dir=tmp_path / "runs" / ".slurm")
    as_json = tmp_path / "slurm.json"
    as_json.write_text(json.dumps({"partition": "cpu", "time": 30, "poll_s": 1}))
    assert slurm_settings(as_json, time_limit="45") == SlurmSettings(partition="cpu", time_min=45, poll_s=1)


@pytest.mark.parametrize("content, message", [('partitoin = "gpu"', "unknown key"), ('gpus_per_task = "one"', "must be int"),
                                              ("partition = [", "not valid TOML")])
def test_bad_config_files_are_refused(tmp_path, content, message):
    path = tmp_path / "slurm.toml"
    path.write_text(content + "\n")
    with pytest.raises(UsageError, match=message):
        read_launcher_config(path)


def test_launcher_choice(tmp_path, monkeypatch):
    assert make_launcher("local", tmp_path) is None
    with pytest.raises(UsageError, match="--partition only apply with --launcher slurm"):
        make_launcher("local", tmp_path, partition="gpu")
    with pytest.raises(UsageError, match="local, slurm"):
        make_launcher("kubernetes", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    with pytest.raises(UsageError, match="sbatch is not on the PATH"):
        make_launcher("slurm", tmp_path)


def test_batch_script_carries_every_setting(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    settings = SlurmSettings(partition="gpu", gpus_per_task=1, cpus_per_task=8, mem_gb=64, time_min=720,
                             sbatch={"account": "rad", "exclusive": True}, setup=("module load cuda/12.4",), max_parallel=3)
    script = _make_sbatch_string(command="python -m task", folder=tmp_path / "%j", map_count=10,
                                 **Launcher(settings, backend="local").sbatch_parameters())
    for line in ["#SBATCH --partition=gpu", "#SBATCH --gpus-per-task=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=65536M", "#SBATCH --time=720", "#SBATCH --account=rad", "#SBATCH --exclusive",
                 "#SBATCH --array=0-9%3", "#SBATCH --job-name=mstnet", "module load cuda/12.4"]:
        assert line in script.splitlines(), (line, script)


def test_the_cli_refuses_slurm_options_without_slurm_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", "logreg-clinical", "--preset", "tiny", "--out", str(tmp_path / "runs"), "--partition", "gpu"])
    assert done.value.code == 2
    assert "--partition only apply with --launcher slurm" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- the scheduler's answers


def _fake_tool(folder: Path, name: str, output: str, code: int = 0) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {code}\n")
    path.chmod(0o755)


def test_scheduler_states_from_squeue_then_sacct(tmp_path, monkeypatch):
    _fake_tool(tmp_path, "squeue", "57_0 RUNNING\n57_4 PENDING\n99_0 RUNNING")
    _fake_tool(tmp_path, "sacct", "57_1|COMPLETED\n57_2|CANCELLED by 0\n57_[3,5-6]|CANCELLED by 0")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    states = scheduler_states([f"57_{k}" for k in range(7)])
    assert states == {"57_0": "RUNNING", "57_4": "PENDING", "57_1": "COMPLETED", "57_2": "CANCELLED",
                      "57_3": "CANCELLED", "57_5": "CANCELLED", "57_6": "CANCELLED"}


def test_scheduler_states_without_accounting(tmp_path, monkeypatch):
    _fake_tool(tmp_path, "squeue", "57_0 COMPLETED\n57_1 RUNNING")
    _fake_tool(tmp_path, "sacct", "Slurm accounting storage is disabled", code=1)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert scheduler_states(["57_0", "57_1", "57_2"]) == {"57_0": "COMPLETED", "57_1": "RUNNING"}


# --------------------------------------------------------------------------- arrays through LocalExecutor


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    return write_growth_cohort(tmp_path_factory.mktemp("cohort"), n_patients=20)


def _prepared(cohort_dir: Path, runs_dir: Path):
    return prepare_runs(runs_dir, run_preset("tiny"), data=cohort_dir)


def _options(runs_dir: Path) -> RunOptions:
    return RunOptions(preset=run_preset("tiny"), device=resolve_device("cpu"), cache_dir=runs_dir / ".cache",
                      progress=False)


def fake_fold(name, prepared, options, fold):
    """A stand-in for training: writes what marks a fold complete, and logs which process did it."""
    folder = fold_dir_of(prepared.runs_dir, name, fold)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text("{}")
    (folder / "run.json").write_text(json.dumps({"status": "complete", "splits_hash": prepared.splits.hash,
                                                 "pid": os.getpid(), "device": str(getattr(options, "device", None))}))


def failing_fold(name, prepared, options, fold):
    if fold == 1:
        print("loading fold 1 ...", file=sys.stderr, flush=True)
        raise RuntimeError("out of patience on fold 1")
    if fold == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # killed from outside: no result file at all
    fake_fold(name, prepared, options, fold)


def test_the_task_list_leaves_out_finished_folds(tmp_path, cohort_dir):
    prepared = _prepared(cohort_dir, tmp_path / "runs")
    specs = [get_experiment("logreg-clinical"), get_experiment("growth-rule")]
    fake_fold("growth-rule", prepared, None, 0)
    fake_fold("logreg-clinical", prepared, None, 2)
    assert pending_folds(prepared, specs, [0, 1, 2]) == [("logreg-clinical", 0), ("logreg-clinical", 1),
                                                         ("growth-rule", 1), ("growth-rule", 2)]


def test_unfinished_folds_run_as_tasks_and_finished_ones_are_not_resubmitted(tmp_path, cohort_dir):
    prepared = _prepared(cohort_dir, tmp_path / "runs")
    specs = [get_experiment("logreg-clinical"), get_experiment("growth-rule")]
    fake_fold("growth-rule", prepared, None, 0)  # finished before the submission
    fake_fold("logreg-clinical", prepared, None, 0)
    finished = [fold_dir_of(prepared.runs_dir, name, 0) / "run.json" for name in ("growth-rule", "logreg-clinical")]
    before = [(path.stat().st_mtime_ns, path.read_bytes()) for path in finished]

    launcher = Launcher(FAST, backend="local", device="cpu")
    submitted = launcher.run_folds(prepared, specs, _options(prepared.runs_dir), [0, 1], runner=fake_fold)

    assert submitted == [("logreg-clinical", 1), ("growth-rule", 1)]
    assert [(path.stat().st_mtime_ns, path.read_bytes()) for path in finished] == before
    records = [json.loads((fold_dir_of(prepared.runs_dir, n, k) / "run.json").read_text()) for n, k in submitted]
    assert len({r["pid"] for r in records}) == 2 and os.getpid() not in {r["pid"] for r in records}  # a process per task
    assert {r["device"] for r in records} == {"cpu"}
    record = json.loads((prepared.runs_dir / ".slurm" / "tasks.json").read_text())
    assert sorted(record) == ["growth-rule/fold1", "logreg-clinical/fold1"]
    # A second submission has nothing left to do and submits nothing.
    assert launcher.run_folds(prepared, specs, _options(prepared.runs_dir), [0, 1], runner=fake_fold) == []


def test_failed_tasks_are_reported_with_id_log_and_last_lines_then_the_missing_folds(tmp_path, cohort_dir):
    prepared = _prepared(cohort_dir, tmp_path / "runs")
    launcher = Launcher(FAST, backend="local", device="cpu")
    with pytest.raises(TasksFailed) as caught:
        launcher.run_folds(prepared, [get_experiment("logreg-clinical")], _options(prepared.runs_dir), [0, 1, 2],
                           runner=failing_fold)
    failed = caught.value
    assert failed.total == 3
    assert failed.missing == ["logreg-clinical fold 1", "logreg-clinical fold 2"]
    by_label = {failure.label: failure for failure in failed.failures}
    assert sorted(by_label) == ["logreg-clinical fold 1", "logreg-clinical fold 2"]
    raised = by_label["logreg-clinical fold 1"]
    assert raised.state.startswith("FAILED")
    assert raised.log_path.is_file() and raised.log_path.parent == prepared.runs_dir.resolve() / ".slurm"
    assert any("out of patience on fold 1" in line for line in raised.last_lines), raised.last_lines
    killed = by_label["logreg-clinical fold 2"]
    assert killed.state == "ended without a result"
    report = failed.report()
    assert report.startswith("2 of 3 task(s) failed:")
    assert f"task {raised.task_id} (logreg-clinical fold 1): FAILED" in report
    assert str(raised.log_path) in report and "    | " in report
    assert "missing folds (2): logreg-clinical fold 1, logreg-clinical fold 2" in report
    assert fold_is_complete(prepared.runs_dir, "logreg-clinical", 0, prepared.splits)
    assert pending_folds(prepared, [get_experiment("logreg-clinical")], [0, 1, 2]) == [
        ("logreg-clinical", 1), ("logreg-clinical", 2)]  # what a resubmission runs


def test_run_group_checks_before_submitting(tmp_path, cohort_dir):
    prepared = prepare_runs(tmp_path / "runs", run_preset("tiny"), data=cohort_dir, write=False)
    launcher = Launcher(FAST, backend="local", device="cpu")
    with pytest.raises(UsageError, match="no such fold"):
        run_group(prepared, [get_experiment("logreg-clinical")], _options(prepared.runs_dir), folds=[7], launcher=launcher)
    assert not (tmp_path / "runs").exists()  # nothing written, nothing submitted


def test_a_real_fold_through_the_executor_equals_the_local_one(tmp_path, cohort_dir):
    spec = get_experiment("logreg-clinical")
    local = _prepared(cohort_dir, tmp_path / "local")
    run_experiment(spec, local.cohort, local.splits, local.runs_dir, _options(local.runs_dir), folds=[0])
    launched = prepare_runs(tmp_path / "launched", run_preset("tiny"), data=cohort_dir, write=False)
    run_group(launched, [spec], _options(launched.runs_dir), folds=[0],
              launcher=Launcher(FAST, backend="local", device="cpu"))
    for name in ("predictions.csv", "metrics.json"):
        assert (fold_dir_of(launched.runs_dir, spec.name, 0) / name).read_bytes() == \
            (fold_dir_of(local.runs_dir, spec.name, 0) / name).read_bytes()


def test_a_fold_still_queued_from_an_earlier_array_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / ".slurm"
    folder.mkdir()
    (folder / "tasks.json").write_text(json.dumps({"mstnet/fold0": "57_3", "mstnet/fold1": "57_4"}))
    _fake_tool(tmp_path, "squeue", "57_3 RUNNING\n57_4 COMPLETED")
    _fake_tool(tmp_path, "sacct", "", code=1)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    launcher = Launcher(FAST, backend="slurm")
    with pytest.raises(UsageError, match=r"mstnet/fold0 \(task 57_3, RUNNING\).*scancel 57"):
        launcher._refuse_active(folder, ["mstnet/fold0", "mstnet/fold1"])
    launcher._refuse_active(folder, ["mstnet/fold1"])  # ended: may be submitted again


def test_tuning_workers_join_one_study(tmp_path, cohort_dir):
    import optuna

    from mstnet.experiments.launcher import check_tuning
    from mstnet.experiments.tuning import make_storage

    storage = f"journal:{tmp_path / 'journal.log'}"
    names = {0: "scan-tiny-fold0"}
    arguments = dict(name="scan", n_trials=1, storage=storage, timeout=None, pruner="median", preset="tiny",
                     runs_dir=tmp_path / "runs", data=cohort_dir, device="cpu", epochs=1, params={}, seed=3,
                     split_seed=0, binarize_masks=None)
    check_tuning("scan", "tiny", tmp_path / "runs", [0], names, storage, data=cohort_dir, epochs=1)
    results = Launcher(FAST, backend="local", device="cpu").run_tuning(arguments, [0], 2, names)
    assert sorted(r["worker"] for r in results) == [0, 1]
    study = optuna.load_study(study_name="scan-tiny-fold0", storage=make_storage(storage))
    assert len(study.trials) == 2 and {t.state.name for t in study.trials} == {"COMPLETE"}
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 2  # seeds 3 and 4: apart

"""``mstnet reproduce --launcher slurm`` on a real one-node SLURM cluster (scripts/slurm-local-cluster).

`.ci/run` starts the cluster before the tests and stops it after. Where it is not running (or could
not start), these tests are skipped, and the skip reason carries slurmctld's own log lines.

One scenario, about 2 minutes on 2 cores (the paper table, tiny preset, one fold, one epoch):

1. ``--launcher slurm``: seven array tasks through sbatch; the MST-Net task is killed with
   ``scancel`` once it runs, so the command reports it (task id, log, last lines), writes the
   report of the six other rows, names the missing fold and exits 1;
2. the same command again: only the killed task is submitted; the six finished folds are not
   touched (``run.json``, ``attempts.json`` byte-identical, same mtimes);
3. beside it, the local run (``--launcher local``) for reference, with one torch thread as in a
   1-CPU SLURM task: the table equals it, and so does every per-patient, per-scan and per-epoch file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness_cohort import write_growth_cohort

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "scripts" / "slurm-local-cluster"
MSTNET = [sys.executable, "-m", "mstnet.cli"]
KILLED = "mstnet/fold0"

pytestmark = pytest.mark.slurm


def cluster_problem() -> str | None:
    """None when the one-node cluster takes jobs; otherwise why not, with slurmctld's log lines."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return "SLURM is not installed: scripts/slurm-local-cluster start installs slurm-wlm and munge (as root)"
    status = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True, text=True, timeout=60)
    if status.returncode == 0:
        return None
    base = Path(os.environ.get("MSTNET_SLURM_DIR", "/var/spool/mstnet-slurm"))
    error = base / "start-error.txt"
    detail = [line.strip() for line in (error.read_text() if error.exists() else status.stdout + status.stderr).splitlines()
              if line.strip() and not line.startswith("---")]
    log = base / "slurmctld.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    own = ([line.strip() for line in lines if "fatal" in line][-2:]
           + [line.strip() for line in lines if "error" in line and "pmix" not in line][-2:])
    # slurmctld's own words first: a terminal cuts pytest's summary lines at its width.
    return (f"SLURM cluster not running: slurmctld says: {' / '.join(own) or '(no error in its log)'}; "
            f"scripts/slurm-local-cluster: {detail[0] if detail else 'not running'}")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)
    root = tmp_path_factory.mktemp("slurm")
    cohort = write_growth_cohort(root / "cohort", n_patients=20)
    config = root / "slurm.toml"
    config.write_text("[slurm]\npoll_s = 1\njob_name = \"mstnet-test\"\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # one torch thread, as in a 1-CPU task

    def command(out: str, *extra: str) -> list[str]:
        return [*MSTNET, "reproduce", "paper-table", "--preset", "tiny", "--data", str(cohort), "--epochs", "1",
                "--folds", "0", "--out", str(root / out), "--report", str(root / f"{out}-report"), *extra]

    slurm = command("slurm", "--launcher", "slurm", "--launcher-config", str(config))
    runs = root / "slurm"
    times = {}
    clock = time.monotonic()
    first = subprocess.Popen(slurm, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    killed_id = None
    try:
        killed_id = _scancel_when_running(runs, first)
        out, err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
            _cancel_our_tasks(runs)
    times["first submission"] = time.monotonic() - clock
    finished = {path: (path.stat().st_mtime_ns, path.read_bytes())
                for path in sorted(runs.glob("*/fold0/run.json")) + sorted(runs.glob("*/fold0/attempts.json"))
                if not str(path.relative_to(runs)).startswith(KILLED)}

    # The resubmission (its one task) and the local reference run use one core each: run them together.
    clock = time.monotonic()
    local = subprocess.Popen(command("local"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                             cwd=root)
    try:
        second = subprocess.run(slurm, capture_output=True, text=True, env=env, timeout=300, cwd=root)
        times["second submission"] = time.monotonic() - clock
        _, local_err = local.communicate(timeout=300)
        times["local run"] = time.monotonic() - clock
    finally:
        if local.poll() is None:
            local.kill()
        _cancel_our_tasks(runs)
    assert local.returncode == 0, local_err[-3000:]
    print(f"timings: {', '.join(f'{k} {v:.0f} s' for k, v in times.items())}")
    return {"root": root, "runs": runs, "first": (first.returncode, out, err), "second": second,
            "killed_id": killed_id, "finished": finished}


def _tasks(runs: Path) -> dict[str, str]:
    record = runs / ".slurm" / "tasks.json"
    return json.loads(record.read_text()) if record.exists() else {}


def _scancel_when_running(runs: Path, process: subprocess.Popen, timeout: float = 180) -> str:
    """scancel the MST-Net task as soon as SLURM runs it; its array task id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the submission ended first: {process.stderr.read()[-3000:]}"
        task_id = _tasks(runs).get(KILLED)
        if task_id:
            state = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i %T"], capture_output=True, text=True).stdout
            if f"{task_id} RUNNING" in state.splitlines():
                subprocess.run(["scancel", task_id], check=True)
                return task_id
        time.sleep(0.2)
    raise AssertionError(f"the {KILLED} task did not start within {timeout:.0f} s")


def _cancel_our_tasks(runs: Path) -> None:
    ids = sorted({task_id.split("_")[0] for task_id in _tasks(runs).values()})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def test_a_cancelled_task_is_reported_and_a_resubmission_runs_only_it(scenario):
    code, out, err = scenario["first"]
    task_id, runs = scenario["killed_id"], scenario["runs"]
    assert code == 1, err[-3000:]
    assert "1 of 7 task(s) failed:" in err, err[-3000:]
    assert f"task {task_id} (mstnet fold 0): CANCELLED; log {runs.resolve() / '.slurm'}" in err, err[-3000:]
    assert "    | " in err  # the last lines of the task's log
    assert "missing folds (1): mstnet fold 0" in err and "the report lacks 1 fold(s): mstnet fold 0" in err
    assert (scenario["root"] / "slurm-report" / "paper_table.csv").exists()  # the six other rows, reported
    assert len(scenario["finished"]) == 12  # run.json and attempts.json of the six finished folds

    second = scenario["second"]
    assert second.returncode == 0, second.stderr[-3000:]
    assert "6 fold(s) already complete with the same configuration: not submitted" in second.stderr
    assert "submitted 1 task(s) as slurm array" in second.stderr
    for path, (mtime, content) in scenario["finished"].items():
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, content), f"{path} was redone"
    record = json.loads((runs / "mstnet" / "fold0" / "run.json").read_text())
    assert record["status"] == "complete"


def test_the_table_equals_the_local_run(scenario):
    root = scenario["root"]
    assert (root / "slurm-report" / "paper_table.csv").read_bytes() == (root / "local-report" / "paper_table.csv").read_bytes()
    compared = 0
    for local in sorted(path for path in (root / "local").glob("*/fold0/*.csv")
                        if path.name in ("predictions.csv", "segmentation.csv", "history.csv")):
        launched = root / "slurm" / local.relative_to(root / "local")
        assert launched.read_bytes() == local.read_bytes(), launched
        compared += 1
    assert compared >= 7

"""What SLURM says of the tasks of a job array: queued or running (``squeue``), or how they ended (``sacct``)."""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from collections.abc import Sequence

# SLURM job states in which a task may still run (everything else has ended).
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                 "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "PREEMPTED"}


def _base_state(text: str) -> str:
    """``"CANCELLED by 0"`` -> ``"CANCELLED"``."""
    return text.strip().split(" ")[0].upper() if text.strip() else "UNKNOWN"


class SchedulerUnavailable(RuntimeError):
    """``squeue`` did not answer (the controller is down or busy)."""


def scheduler_states(job_ids: Sequence[str]) -> dict[str, str]:
    """SLURM's state of each array task id (``"57_3"``).

    ``squeue`` says which tasks are still queued or running (it knows a job as soon as sbatch
    returns); for the others, ``sacct`` says how they ended where accounting is on. A task that
    neither knows is left out (``squeue`` forgets ended jobs after ``MinJobAge``).

    Raises:
        SchedulerUnavailable: ``squeue`` failed.
    """
    wanted = {str(job_id) for job_id in job_ids}
    if not wanted:
        return {}
    squeue = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i %T", "-u", getpass.getuser()],
                            capture_output=True, text=True)
    if squeue.returncode != 0:
        raise SchedulerUnavailable((squeue.stderr or squeue.stdout).strip() or f"squeue exited with {squeue.returncode}")
    states: dict[str, str] = {}
    for line in squeue.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in wanted:
            states[parts[0]] = _base_state(parts[1])
    ended = {job_id for job_id in wanted if states.get(job_id) not in ACTIVE_STATES}
    if not ended or shutil.which("sacct") is None:
        return states
    arrays = sorted({job_id.split("_")[0] for job_id in ended})
    sacct = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)],
                           capture_output=True, text=True)
    if sacct.returncode != 0:  # accounting off ("Slurm accounting storage is disabled")
        return states
    for line in sacct.stdout.splitlines():
        job_id, _, state = line.partition("|")
        job_id = job_id.strip()
        match = re.fullmatch(r"(\d+)_\[(.+)\]", job_id)  # tasks that never started: "57_[3-9%2]"
        ids = [f"{match.group(1)}_{task}" for task in _expand_ranges(match.group(2))] if match else [job_id]
        for task_id in ids:
            if task_id in ended:
                states[task_id] = _base_state(state)
    return states


def _expand_ranges(text: str) -> list[int]:
    """``"3-5,8%2"`` -> ``[3, 4, 5, 8]``."""
    numbers: list[int] = []
    for part in text.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit():
            numbers += list(range(int(low), int(high) + 1)) if high.isdigit() else [int(low)]
    return numbers

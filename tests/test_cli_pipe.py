"""The command line as a script sees it: stdout is a pipe, not a terminal.

Each test starts the installed ``mstnet`` in a subprocess with stdout and stderr piped, as
``mstnet list | cat`` would: listings must print one tab-separated row per line with full
names (no box drawing, nothing cut at 80 columns), ``--json`` must print JSON, and a bad
value must exit with 2 and exactly one line on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness_cohort import write_growth_cohort

BOX_DRAWING = set("┏┓┗┛┃━│─┡┩╇┳┻╭╮╰╯…")


def _mstnet() -> list[str]:
    script = Path(sys.executable).with_name("mstnet")
    if script.exists():
        return [str(script)]
    found = shutil.which("mstnet")
    return [found] if found else [sys.executable, "-m", "mstnet.cli"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "COLUMNS": "80", "MSTNET_DEBUG": ""}
    return subprocess.run([*_mstnet(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL, env=environment, cwd=cwd, timeout=600)


def _rows(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.splitlines()]


def test_list_in_a_pipe_prints_one_full_row_per_experiment():
    from mstnet.experiments.registry import list_experiments

    done = _run("list")
    assert done.returncode == 0, done.stderr
    assert not BOX_DRAWING & set(done.stdout), done.stdout[:400]
    rows = _rows(done.stdout)
    specs = list_experiments()
    assert len(rows) == len(specs)
    assert {len(row) for row in rows} == {5}
    names = [row[0] for row in rows]
    assert names == [spec.name for spec in specs]
    for name in ("smp2d-deeplabv3plus", "fusion-no-difference"):
        assert name in names, names
    by_name = {row[0]: row for row in rows}
    assert by_name["mstnet"][4] == next(s for s in specs if s.name == "mstnet").description  # not cut either


def test_list_json_prints_the_registry_entries():
    from mstnet.experiments.registry import list_experiments

    listing = _run("list", "--json", "--group", "ablation")
    assert listing.returncode == 0, listing.stderr
    records = json.loads(listing.stdout)
    assert [record["name"] for record in records] == [spec.name for spec in list_experiments(group="ablation")]
    assert "fusion-no-difference" in {record["name"] for record in records}
    assert {"name", "group", "tasks", "description", "footnote", "information"} <= set(records[0])


def test_ablate_list_in_a_pipe_keeps_the_changes_column_whole():
    from mstnet.commands.ablate import ablation_rows

    done = _run("ablate", "--list")
    assert done.returncode == 0, done.stderr
    assert not BOX_DRAWING & set(done.stdout)
    rows = _rows(done.stdout)
    expected = ablation_rows()
    assert [row[0] for row in rows] == [row["name"] for row in expected]
    assert [row[1] for row in rows] == [" ".join(row["changes"].split()) for row in expected]
    listing = _run("ablate", "--list", "--json")
    assert listing.returncode == 0 and json.loads(listing.stdout) == expected


def test_version_names_the_package_and_torch():
    done = _run("--version")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("mstnet-bench ") and "torch " in line and "\n" not in line


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return write_growth_cohort(tmp_path_factory.mktemp("pipe") / "cohort", n_patients=20)


@pytest.mark.parametrize("args, words", [
    (["run", "nosuch"], ["'nosuch'"]),
    (["run", "mstnet", "--preset", "huge"], ["'huge'", "tiny", "cpu", "paper"]),
    (["list", "--group", "bogus"], ["'bogus'", "paper-table", "ablation"]),
    (["run", "mstnet", "--preset", "tiny", "--folds", "9", "--data", "{cohort}"], ["--folds 9", "0-4"]),
])
def test_bad_values_exit_2_with_one_line_on_stderr(cohort, tmp_path, args, words):
    args = [arg.format(cohort=cohort) for arg in args]
    done = _run(*args, "--out", str(tmp_path / "runs")) if args[0] == "run" else _run(*args)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert done.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_plain_forces_rows_where_a_terminal_would_get_a_table(capsys, monkeypatch):
    """``--plain`` (in process; stdout made to look like a terminal)."""
    from mstnet.cli import main

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    with pytest.raises(SystemExit) as done:
        main(["list", "--plain", "--group", "reference"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert not BOX_DRAWING & set(out) and all(len(row) == 5 for row in _rows(out))
    with pytest.raises(SystemExit):
        main(["list", "--group", "reference"])
    assert BOX_DRAWING & set(capsys.readouterr().out)  # the terminal's table, for contrast

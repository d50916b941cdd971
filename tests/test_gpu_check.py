"""``mstnet gpu-check`` / ``make gpu-check`` (mstnet/commands/gpu.py): the skip without CUDA, and the
whole code path run on the CPU with the tiny preset (the same functions the CUDA check runs)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from mstnet.cli import main
from mstnet.commands import gpu
from mstnet.experiments import step_profile


def test_without_cuda_it_says_skipped_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as done:
        main(["gpu-check", "--out", str(tmp_path / "gpu")])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == "no CUDA device: skipped"
    assert not (tmp_path / "gpu").exists()


def test_largest_batch_doubles_then_bisects_to_the_memory_limit(monkeypatch):
    tried = []

    def fake_step(model, config, batch_size, device, **_):
        tried.append(batch_size)
        if batch_size > 5:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"peak_memory_mib": 100.0 * batch_size, "patients_per_s": float(batch_size)}

    monkeypatch.setattr(step_profile, "time_step", fake_step)
    result = step_profile.largest_batch("tiny", "cpu", limit=64)
    assert result["largest"] == 5 and result["limited_by"] == "memory"
    assert tried == [1, 2, 4, 8, 6, 5]
    assert result["peak_memory_mib"] == 500.0
    tried.clear()
    assert step_profile.largest_batch("tiny", "cpu", limit=3)["largest"] == 3 and tried == [1, 2, 3]


def test_the_whole_check_on_the_cpu_with_the_tiny_preset(tmp_path):
    report = gpu.gpu_check(tmp_path, preset="tiny", device="cpu", max_batch=2, repeats=1, log=lambda _: None)

    assert json.loads((tmp_path / "gpu-check.json").read_text()) == json.loads(json.dumps(report))
    assert report["ceiling"]["dtype"] == "float32" and report["ceiling"]["flop_per_s"] > 0
    step = report["batch1"]
    assert step["batch"] == 1 and min(step["forward_s"], step["backward_s"], step["optimizer_s"]) > 0
    assert step["steps_per_s"] == pytest.approx(1 / step["step_s"])
    assert step["flops_per_step"] > 0 and 0 < step["ceiling_fraction"] < 1
    assert step["peak_memory_mib"] is None  # torch.cuda.max_memory_allocated: CUDA only
    assert report["model"]["image_size"] == [8, 32, 32] and report["model"]["parameters"] > 0
    assert report["largest_batch"]["largest"] == 2 and report["largest_batch"]["limited_by"] == "--max-batch"
    checkpointing = report["gradient_checkpointing"]
    assert checkpointing["plain"]["step_s"] > 0 and checkpointing["checkpointed"]["step_s"] > 0

    manifest = pd.read_csv(tmp_path / "cohort-tiny-10" / "manifest.csv").drop_duplicates("patient_id")
    assert len(manifest) == 10 and min(manifest["label"].value_counts()) >= 5  # five folds, both labels in each
    for key, folder in (("epoch", "run-single"), ("epoch_torchrun", "run-torchrun-1")):
        run = report[key]
        assert run["ok"], run.get("log_tail")
        assert (tmp_path / folder / "mstnet" / "fold0" / "run.json").exists()
        assert run["epochs"] == 2  # one epoch per stage: segmentation, then classification
    assert report["epoch_torchrun"]["command"].startswith("torchrun --standalone --nproc_per_node=1 -m mstnet.cli run mstnet")

    summary = (tmp_path / "gpu-check.md").read_text()
    for text in ("# GPU check: MST-Net `tiny` preset on cpu", "batch 1: forward", "largest batch that fits | 2",
                 "gradient checkpointing", "one epoch under torchrun, 1 process(es)", "fraction of the matmul ceiling"):
        assert text in summary, text

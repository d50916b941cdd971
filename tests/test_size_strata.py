"""Dice and volume agreement by nodule size (mstnet.reporting.size_strata) against a hand computation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mstnet.reporting.build import build_report
from mstnet.reporting.results import ResultsError, load_results
from mstnet.reporting.size_strata import dice_by_size, dice_by_size_figure, equivalent_diameter_mm, size_labels
from tests.fake_runs import write_fake_runs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return load_results(write_fake_runs(tmp_path_factory.mktemp("runs") / "fake"))


def test_equivalent_diameter_is_the_sphere_of_that_volume():
    radius = 3.5
    assert equivalent_diameter_mm([4.0 / 3.0 * np.pi * radius**3])[0] == pytest.approx(2 * radius)


def test_each_bin_holds_the_mean_dice_and_median_volume_ratio_of_its_scans(results):
    table = dice_by_size(results)
    scans = results.segmentation
    for row in table.itertuples():
        mine = scans[scans["experiment"] == row.experiment]
        diameter = (6.0 * mine["reference_volume_mm3"] / np.pi) ** (1.0 / 3.0)
        lower, upper = {"<=6 mm": (0, 6), "6-10 mm": (6, 10), "10-15 mm": (10, 15), "15-20 mm": (15, 20),
                        "20-25 mm": (20, 25), ">25 mm": (25, np.inf)}[row.size_bin]
        inside = mine[(diameter > lower) & (diameter <= upper)]
        assert row.scans == len(inside) > 0
        assert row.dice == pytest.approx(inside["dice"].mean())
        assert row.volume_ratio_median == pytest.approx((inside["predicted_volume_mm3"] / inside["reference_volume_mm3"]).median())
    per_experiment = table.groupby("experiment")["scans"].sum()
    for name, total in per_experiment.items():
        assert total == (scans["experiment"] == name).sum()
    assert set(table["size_bin"]) <= set(size_labels()) and len(set(table["size_bin"])) > 2


def test_figure_and_csv_are_written_and_results_without_volumes_give_none(results, tmp_path):
    written = dice_by_size_figure(results, tmp_path)
    assert sorted(p.name for p in written) == ["dice_by_size.csv", "dice_by_size.pdf", "dice_by_size.png"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "dice_by_size.csv"), dice_by_size(results),
                                  check_dtype=False)
    older = replace(results, segmentation=results.segmentation.drop(columns=["reference_volume_mm3",
                                                                             "predicted_volume_mm3"]))
    assert dice_by_size(older).empty and dice_by_size_figure(older, tmp_path / "none") == []


@pytest.mark.parametrize("bad", ["abc", -1.0])
def test_a_bad_volume_is_refused_naming_file_column_and_scan_before_a_report_is_written(tmp_path, bad):
    runs = write_fake_runs(tmp_path / "runs")
    path = runs / "unetr" / "fold1" / "segmentation.csv"
    scans = pd.read_csv(path, dtype={"patient_id": str, "timepoint": str})
    scans["predicted_volume_mm3"] = scans["predicted_volume_mm3"].astype(object)
    scans.loc[2, "predicted_volume_mm3"] = bad
    scans.to_csv(path, index=False)
    with pytest.raises(ResultsError, match=rf"{path}: predicted_volume_mm3 of {scans.at[2, 'patient_id']} "
                                           rf"{scans.at[2, 'timepoint']} is .*expected a volume in mm\^3 >= 0"):
        build_report([runs], tmp_path / "report", n_resamples=20)
    assert not (tmp_path / "report").exists()


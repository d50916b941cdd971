"""Parsing of `mstnet run --set key=value` and `--folds`."""

import pytest
import typer

from mstnet.commands.experiments import parse_assignments, parse_folds


def test_set_values_are_typed_as_json_where_they_parse():
    params = parse_assignments(["learning_rate=3e-4", "channels_last=false", "stage_epochs=[2, 3]", "name=acs net",
                                "stages=segmentation,classification", "note=a=b"])
    assert params == {"learning_rate": 3e-4, "channels_last": False, "stage_epochs": [2, 3], "name": "acs net",
                      "stages": ("segmentation", "classification"), "note": "a=b"}
    assert isinstance(params["learning_rate"], float)


def test_set_without_equals_names_the_item():
    with pytest.raises(typer.BadParameter, match="'learning_rate'"):
        parse_assignments(["learning_rate"])


def test_folds():
    assert parse_folds("0, 2,4") == [0, 2, 4]
    assert parse_folds(None) is None
    with pytest.raises(typer.BadParameter, match="'0,x'"):
        parse_folds("0,x")

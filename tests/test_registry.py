"""The experiment registry loads its plugins whole or fails whole, and registration order does not matter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mstnet.experiments import registry
from mstnet.experiments.registry import PluginError, get_experiment, list_experiments

PLUGIN_INIT = """
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
"""
GOOD_PLUGIN = """
from mstnet.experiments.registry import register_experiment

register_experiment("{name}", description="registers fine", tasks=("classification",))(lambda context: None)
"""


@pytest.fixture
def plugin_package(tmp_path, monkeypatch):
    """A function writing a plugin package of the given modules and making it the registry's only plugin, on a
    fresh, empty registry (restored afterwards)."""
    created: list[str] = []

    def make(package: str, modules: dict[str, str]) -> None:
        folder = tmp_path / package
        folder.mkdir()
        (folder / "__init__.py").write_text(PLUGIN_INIT)
        for name, source in modules.items():
            (folder / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(package)
        monkeypatch.setattr(registry, "_PLUGIN_PACKAGES", (package,))

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_plugins_loading", False)
    monkeypatch.setattr(registry, "_plugin_error", None)
    yield make
    for name in [m for m in sys.modules if any(m == p or m.startswith(f"{p}.") for p in created)]:
        del sys.modules[name]


def test_a_plugin_raising_at_import_names_its_module_and_error_on_every_lookup(plugin_package):
    plugin_package("plugins_raise", {
        "a_good": GOOD_PLUGIN.format(name="fine-one"),
        "b_broken": 'raise RuntimeError("the broken plugin failed")\n',
    })
    with pytest.raises(PluginError) as first:
        list_experiments()
    assert "'plugins_raise.b_broken'" in str(first.value)
    assert "RuntimeError: the broken plugin failed" in str(first.value)
    # Asked again, the registry raises the same error instead of answering from what loaded before the failure.
    for lookup in (lambda: get_experiment("fine-one"), lambda: get_experiment("missing"), list_experiments):
        with pytest.raises(PluginError) as again:
            lookup()
        assert str(again.value) == str(first.value)
        assert "no experiment named" not in str(again.value)


def test_a_plugin_with_a_syntax_error_is_named(plugin_package):
    plugin_package("plugins_syntax", {"broken_syntax": "def oops(:\n"})
    with pytest.raises(PluginError, match=r"broken_syntax\.py.*SyntaxError"):
        get_experiment("anything")
    with pytest.raises(PluginError, match=r"broken_syntax\.py.*SyntaxError"):
        get_experiment("anything")


def test_a_lookup_while_plugins_load_is_refused_as_order_dependent(plugin_package):
    plugin_package("plugins_lookup", {
        "a_asks": """
            from mstnet.experiments.registry import get_experiment
            get_experiment("z-registers-later")
        """,
        "z_registers": GOOD_PLUGIN.format(name="z-registers-later"),
    })
    with pytest.raises(PluginError, match=r"'plugins_lookup\.a_asks'.*RuntimeError: .*registration order"):
        list_experiments()


def test_plugins_that_load_register_every_experiment(plugin_package):
    plugin_package("plugins_fine", {"one": GOOD_PLUGIN.format(name="fine-a"), "two": GOOD_PLUGIN.format(name="fine-b")})
    assert [spec.name for spec in list_experiments()] == ["fine-a", "fine-b"]
    assert get_experiment("fine-b").description == "registers fine"


def test_importing_the_ablations_first_gives_the_same_registry():
    names = sorted(spec.name for spec in list_experiments())
    script = ("import ablations.variants\n"
              "from mstnet.experiments.registry import list_experiments\n"
              "print(' '.join(sorted(spec.name for spec in list_experiments())))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == names


def test_every_trained_row_mirrors_at_test_time_on_the_cpu_preset_only():
    """The cpu recipes carry test-time mirroring (mstnet.experiments.recipes.TEST_TIME_MIRRORING); the release's
    recipes (paper and tiny presets) leave it off."""
    trained = [spec for spec in list_experiments() if spec.kind == "torch" and spec.group in ("paper-table", "reference", "ablation")]
    assert len(trained) > 20
    for spec in trained:
        assert spec.recipe_for("cpu").test_time_mirroring, spec.name
        assert not spec.recipe_for("paper").test_time_mirroring, spec.name
        assert not spec.recipe_for("tiny").test_time_mirroring, spec.name

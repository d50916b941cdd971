"""Registered comparison methods (Table 1 rows and standard references): every module here registers its experiments on import.

Adding one is one new file with one `register_experiment` call; `mstnet list` shows it and
tests/test_baselines_harness.py runs one fold of it. Its documentation is a row of the Methods table of
README.md here, which the same test asks for by name.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

"""Command modules of the ``mstnet`` CLI.

Each module here defines ``register(app, groups)``: it adds its commands to the top-level
Typer ``app`` or to one of the sub-command ``groups`` (``data``, ``model``). The CLI finds
the modules by listing this package, so adding a command never edits a shared file.
"""

"""The two kinds of failure the command line tells apart, and their exit codes.

- :class:`UsageError` (exit code 2): the command was called wrongly: an unknown experiment,
  preset or ``--set`` key, a value of the wrong type, a fold or epoch count out of range, a
  results folder that holds another configuration.
- :class:`DataError` (exit code 1): the input cannot be used as given: a cohort
  (:class:`mstnet.data.cohort.CohortError`) or result files
  (:class:`mstnet.reporting.results.ResultsError`).

``mstnet`` prints either as one line (``error: ...``), plus the valid choices where they
help; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

from collections.abc import Iterable


class UsageError(ValueError):
    """A command called with a value it cannot take; the message names the value and the valid ones."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A name (experiment, preset, ablation) that is not registered.

    Also a :class:`KeyError`, so a lookup that fails reads like a mapping lookup.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DataError(ValueError):
    """Input (a cohort, result files) that cannot be used as given; the message locates the problem."""

    exit_code = 1


def choices(values: Iterable[object], limit: int = 12) -> str:
    """``'a', 'b', 'c'`` (the first ``limit`` of ``values``, then how many more)."""
    values = [str(v) for v in values]
    shown = ", ".join(values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")

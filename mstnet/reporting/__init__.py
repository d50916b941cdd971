"""Reports from result files only: tables (CSV, Markdown, LaTeX, HTML), figures and ``index.html``.

Reads the files of ``docs/results-format.md``; never imports the training code.

Example::

    from mstnet.reporting import build_report
    index = build_report(["runs/paper"], "reports/paper", with_published=True)
"""

from mstnet.reporting.build import build_report
from mstnet.reporting.results import Results, ResultsError, load_results
from mstnet.reporting.results_check import check_runs_dir
from mstnet.reporting.results_merge import load_many

__all__ = ["Results", "ResultsError", "build_report", "check_runs_dir", "load_many", "load_results"]

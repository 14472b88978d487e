"""Reports: registered experiments rendered into figures and tables, and paired comparisons.

- ``load_experiment`` / ``list_experiments``: the TOML files of ``registry/`` (``experiments``).
- ``render_report``: an experiment's figures (PNG, PDF, plus a data file of the plotted numbers)
  and tables (Markdown, CSV, LaTeX) from the registry database (``render``).
- ``compare_runs``: a baseline mask against each masked variant, paired over seeds (``compare``):
  mean difference with its t interval, exact sign-flip permutation p, Holm, Cohen's d_z.
- ``write_html``: static HTML pages of reports and their index (``html``); ``run_coverage``: every
  run an experiment expects with its status (``render``); ``browser``: headless Chromium to look
  at the pages (screenshots, the DOM).

Matplotlib is imported lazily by the functions that draw, which build ``matplotlib.figure.Figure``
objects directly (no pyplot, no global backend switch).
"""

from clbench.reports.compare import compare_runs
from clbench.reports.experiments import ExperimentSpec, list_experiments, load_experiment
from clbench.reports.html import write_html
from clbench.reports.render import missing_runs, render_report, run_coverage

__all__ = [
    "ExperimentSpec",
    "compare_runs",
    "list_experiments",
    "load_experiment",
    "missing_runs",
    "render_report",
    "run_coverage",
    "write_html",
]

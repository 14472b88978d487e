"""The registered experiments of ``clbench report``: one TOML file each (installed as the package
data of ``clbench.experiments``; see ``clbench/reports/experiments.py`` for the format)."""

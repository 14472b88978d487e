"""Issue 23, section 2: reports say which runs they average and which they leave out.

One tiny synthetic database (ER, two masks, 3 seeds); one finished run is then
marked ``diverged`` as a diverged run is stored, so that one cell averages 2 of the 3 seeds.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from sqlalchemy import update

from clbench.reports import render_report
from clbench.reports.experiments import load_experiment
from clbench.reports.render import experiment_configs
from clbench.store.opening import open_store
from clbench.store.schema import Run
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep

BODY = (
    'benchmark = "synthetic"\nmethods = ["er"]\nmasks = ["none", "-inf"]\nbuffers = [10]\nseeds = 3\n'
    "[overrides]\nepochs = 1\nsynthetic = { train_per_class = 20, test_per_class = 10 }\n"
)
LINE = "er, buffer 10, mask -inf: 1 of 3 seeds diverged and is excluded (seed 1)"


@pytest.fixture(scope="module")
def diverged_db(tmp_path_factory):
    folder = tmp_path_factory.mktemp("honest")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    specs = {}
    for kind in ("methods", "fig2"):
        extra = '[render]\nmethod = "er"\nbuffer = 10\nbaseline = "none"\nmasked = "-inf"\n' if kind == "fig2" else ""
        (folder / f"{kind}.toml").write_text(f'kind = "{kind}"\n' + BODY + extra)
        specs[kind] = load_experiment(folder / f"{kind}.toml")
    db = folder / "results.db"
    configs = experiment_configs(specs["methods"])
    try:
        with open_store(db) as store:
            execute(plan_sweep(configs, store), store, experiment="methods")
            bad = next(c.identity() for c in configs if c.mask.label == "-inf" and c.seed == 1)
            store.transaction(
                lambda conn: conn.execute(
                    update(Run).where(Run.run_id == bad).values(status="diverged", diverged_task=0, diverged_step=3)
                )
            )
    finally:
        torch.set_num_threads(previous)
    return db, specs


def test_the_methods_report_names_its_diverged_run_and_counts_seeds_honestly(diverged_db, tmp_path):
    db, specs = diverged_db
    out = tmp_path / "methods"
    written = {p.name: p for p in render_report(specs["methods"], db, out)}
    table = written["methods.md"].read_text()
    assert LINE in table and LINE in written["methods.tex"].read_text()
    assert "over 3 seeds" not in table and "2 to 3 of 3 seeds per cell" in table  # never "10" over 9
    assert "Class-IL: argmax over all classes" in table  # the class-IL convention is stated
    compare = written["methods-compare.md"].read_text()
    assert LINE in compare
    assert "2 of 3 seeds per cell" in compare  # paired over the seeds both sides have
    assert "Class-IL: argmax over all classes" in compare
    summary = pd.read_csv(written["methods.csv"])
    assert sorted(set(summary["n_seeds"])) == [2, 3]
    assert summary.loc[summary["mask"] == "-inf", "n_seeds"].eq(2).all()


def test_fig2_names_its_diverged_run_and_the_seeds_it_averages(diverged_db, tmp_path):
    db, specs = diverged_db
    written = {p.name: p for p in render_report(specs["fig2"], db, tmp_path / "fig2")}
    data = json.loads(written["fig2.data.json"].read_text())
    assert data["seeds"] == [0, 2] and data["n_seeds_wanted"] == 3
    assert LINE in data["excluded"]


def _page_sql(page: str) -> str:
    import html
    import re

    blocks = re.findall(r"<pre>(.*?)</pre>", page, flags=re.S)
    return html.unescape(next(b for b in blocks if b.startswith("SELECT")))


@pytest.mark.parametrize("include_stale", [False, True])
def test_the_html_page_names_stale_runs_and_its_query_returns_what_it_drew(
    tmp_path, monkeypatch, capsys, include_stale
):
    """4 ER runs of clbench 0.1.0 (stale): the page names them stale, not missing; with
    --include-stale its SQL returns exactly the stale runs the tables were drawn from; the command on
    the page is the one given, every option kept."""
    import shutil
    import sqlite3
    from pathlib import Path

    from clbench import cli
    from clbench.reports.render import experiment_runs, run_coverage

    db = tmp_path / "r.db"
    shutil.copy(Path(__file__).parent / "data" / "schema_v1.sqlite", db)
    toml = tmp_path / "old.toml"
    toml.write_text(
        'kind = "forgetting"\nbenchmark = "synthetic"\nmethods = ["er"]\nmasks = ["none", "-inf"]\n'
        "buffers = [20]\nseeds = 2\n"
    )
    monkeypatch.chdir(tmp_path)
    given = ["report", str(toml), "--no-run", "--html", "--db", str(db), "--device", "cpu", "--threads", "1"]
    given += ["--include-stale"] if include_stale else []
    assert cli.main(given) == 0, capsys.readouterr().err
    page = (tmp_path / "reports" / "old.html").read_text()
    import html

    assert html.unescape(page).count(" ".join(["clbench", *given])) == 1  # the exact command
    spec = load_experiment(toml).with_render(include_stale=include_stale)
    coverage = run_coverage(spec, db)
    assert set(coverage["status"]) == {"stale"} and coverage["stale_run_id"].notna().all()
    assert "missing" not in page.split("Runs behind each cell")[1].split("How this was made")[0].replace(
        "missing: not in the database", ""
    )
    assert page.count(": stale</span>") == 4
    if not include_stale:
        assert "Nothing rendered" in page
        return
    with open_store(db, readonly=True) as store:
        used = experiment_runs(spec, store)["run_id"].tolist()
    assert sorted(used) == sorted(coverage["stale_run_id"]) and page.count("used in its place") == 4
    with sqlite3.connect(db) as conn:
        got = [r[0] for r in conn.execute(f"SELECT run_id FROM ({_page_sql(page).rstrip(';')})")]
    assert sorted(got) == sorted(used)

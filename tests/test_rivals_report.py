"""The ``rivals`` experiment (issue 20, item 5): the masked variants of ER and DER++ against the rival
methods, per buffer; its file is validated, a tiny synthetic copy trains and renders, and the
report's numbers are checked against the registry's runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clbench.reports import load_experiment, render_report
from clbench.store import open_store
from clbench.store.queries import load_runs
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep

EXPERIMENT = """
name = "t-rivals"
kind = "rivals"
benchmark = "synthetic"
methods = ["er", "er_ace", "ss_il"]
masks = ["none"]
buffers = [10, 20]
seeds = 3
[per_method.er]
masks = ["none", "-inf"]
[overrides]
epochs = 1
synthetic = { n_tasks = 3, train_per_class = 20, test_per_class = 10 }
"""


def write(folder, text=EXPERIMENT, render=""):
    path = folder / "t-rivals.toml"
    path.write_text(text + (f"[render]\n{render}\n" if render else ""))
    return path


def test_the_shipped_rivals_experiment_plans_390_runs():
    spec = load_experiment("rivals")
    assert spec.kind == "rivals" and spec.benchmark == "seq-fmnist" and spec.buffers == (50, 200, 500)
    assert len(spec.methods) == 10 and len(spec.seeds) == 10
    assert spec.render["masked"] == ("er:-inf", "er:-5.0", "derpp:-inf")
    configs = spec.configs()
    # (8 rivals x 1 mask + ER x 3 masks (none, -inf, the chosen -5) + DER++ x 2 masks) x 3 buffers x 10 seeds
    assert len(configs) == (8 * 1 + 3 + 2) * 3 * 10 == 390
    variants = {(c.method, c.resolve().mask.label) for c in configs}
    assert len(variants) == 13 and ("er", "-inf") in variants and ("derpp", "-inf") in variants
    assert ("er", "-5.0") in variants
    assert {m for m, mask in variants if mask != "none"} == {"er", "derpp"}


def test_the_masked_variants_default_to_every_masked_one_and_are_normalized(tmp_path):
    assert load_experiment(write(tmp_path)).render["masked"] == ("er:-inf",)
    text = EXPERIMENT.replace('masks = ["none", "-inf"]', 'masks = ["none", "-inf", "-2"]')
    spec = load_experiment(write(tmp_path, text, 'masked = ["er:-2"]'))
    assert spec.render["masked"] == ("er:-2.0",)


@pytest.mark.parametrize(
    "render, message",
    [
        ('masked = ["er:-5"]', "render.masked 'er:-5' is not a masked variant of the experiment: valid are er:-inf"),
        ('masked = ["ss_il:-inf"]', "valid are er:-inf"),
        ('masked = ["er:none"]', "valid are er:-inf"),
        ('masked = ["er"]', "valid are er:-inf"),
        ('masked = ["er:x"]', "valid are er:-inf"),
        ("masked = 3", 'render.masked must be a list of "METHOD:MASK" strings: valid are er:-inf'),
        ("masked = []", "valid are er:-inf"),
        ('baseline = "none"', "unknown render option 'baseline' for kind rivals"),
        ('forgetting = "x"', "render.forgetting 'x': valid are chaudhry, mammoth"),
    ],
)
def test_a_bad_render_value_is_one_line(tmp_path, render, message):
    with pytest.raises(ValueError, match="^[^\n]*$") as info:
        load_experiment(write(tmp_path, render=render))
    assert message in str(info.value)


def test_a_rivals_experiment_without_a_masked_variant_is_refused(tmp_path):
    text = EXPERIMENT.replace('[per_method.er]\nmasks = ["none", "-inf"]\n', "")
    with pytest.raises(ValueError, match="needs a method with a mask other than none"):
        load_experiment(write(tmp_path, text))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("rivals")
    spec = load_experiment(write(folder))
    db = folder / "results.db"
    with open_store(db) as store:
        execute(plan_sweep(spec.configs(), store), store, experiment=spec.name)
    torch.set_num_threads(threads)
    written = render_report(spec, db, folder / "out")
    return spec, db, folder, written


def test_the_report_trains_and_renders_its_files(rendered):
    spec, db, folder, written = rendered
    names = {p.name for p in written}
    expected = {"t-rivals.md", "t-rivals.csv", "t-rivals.tex", "t-rivals-compare.md", "t-rivals-compare.csv"}
    assert expected | {"t-rivals.data.csv", "t-rivals.png", "t-rivals.pdf"} <= names
    runs = load_runs(db)
    assert len(runs) == (2 + 1 + 1) * 2 * 3 and set(runs["status"]) == {"finished"}
    table = (folder / "out" / "t-rivals.md").read_text()
    assert "SS-IL" in table and "ER-ACE" in table


def test_the_comparison_is_the_mean_over_seeds_of_masked_minus_rival(rendered):
    spec, db, folder, _ = rendered
    runs = load_runs(db)
    compared = pd.read_csv(folder / "out" / "t-rivals-compare.csv", dtype={"mask": str, "rival_mask": str})
    # ER -inf against the 3 other variants, at 2 buffers, on 4 metrics
    assert len(compared) == 3 * 2 * 4 and set(compared["method"] + ":" + compared["mask"]) == {"er:-inf"}
    assert set(zip(compared["rival"], compared["rival_mask"])) == {
        ("er", "none"),
        ("er_ace", "none"),
        ("ss_il", "none"),
    }
    row = compared[(compared["rival"] == "ss_il") & (compared["buffer_size"] == 20)]
    row = row[row["metric"] == "faa_class_il"].iloc[0]
    mine = runs[(runs["method"] == "er") & (runs["mask"] == "-inf") & (runs["buffer_size"] == 20)]
    theirs = runs[(runs["method"] == "ss_il") & (runs["buffer_size"] == 20)]
    by_seed = mine.set_index("seed")["faa_class_il"] - theirs.set_index("seed")["faa_class_il"]
    assert row["n_seeds"] == 3 and row["difference"] == pytest.approx(by_seed.mean())
    assert row["wins"] + row["losses"] + row["ties"] == 3
    assert row["ci_low"] <= row["difference"] <= row["ci_high"] or np.isnan(row["ci_low"])
    # Holm over one masked variant's rivals at one buffer, per metric: 3 comparisons
    family = compared[(compared["buffer_size"] == 20) & (compared["metric"] == "faa_class_il")]
    p = np.sort(family["p_value"].to_numpy())
    assert family["p_holm"].min() == pytest.approx(min(1.0, 3 * p[0]))
    assert "SS-IL" in (folder / "out" / "t-rivals-compare.md").read_text()


def test_the_figure_data_are_the_means_of_the_runs(rendered):
    spec, db, folder, _ = rendered
    runs = load_runs(db)
    data = pd.read_csv(folder / "out" / "t-rivals.data.csv", dtype={"mask": str})
    assert set(data["metric"]) == {"faa_class_il", "forgetting_class_il"}
    assert len(data) == 4 * 2 * 2  # variants x buffers x metrics
    for r in data.itertuples():
        cell = runs[(runs["method"] == r.method) & (runs["mask"] == r.mask) & (runs["buffer_size"] == r.buffer_size)]
        assert r.n_seeds == 3 and r.mean == pytest.approx(cell[r.metric].mean())
        assert r.ci_low <= r.mean <= r.ci_high
    assert set(data["variant"]) == {"ER, no mask", "ER, m = -inf", "ER-ACE", "SS-IL"}


def test_the_html_page_shows_the_figure_tables_and_comparison(rendered):
    from clbench.reports.html import write_html

    spec, db, folder, _ = rendered
    root = folder / "html"
    write_html([spec], db, root)
    page = (root / "t-rivals.html").read_text()
    for part in ("<h2>Figures</h2>", "<h2>Tables</h2>", "<h2>Plotted numbers</h2>", "<h2>Paired comparison</h2>"):
        assert part in page
    assert "t-rivals.png" in page and "SS-IL" in page and "ER, m = -inf" in page

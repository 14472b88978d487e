"""clbench report / compare: registered experiments, rendering from the registry, paired comparisons.

Tiny synthetic experiments are trained once (module fixture) into a fresh database; the rendered
figures' artists and data files are checked against the registry's numbers.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from clbench import cli
from clbench.reports import compare_runs, list_experiments, load_experiment, missing_runs, render_report
from clbench.reports.fig2 import fig2_data, plot_fig2
from clbench.reports.fig4 import fig4_data, plot_fig4
from clbench.reports.render import experiment_runs
from clbench.runs.results import HISTOGRAM_EDGES
from clbench.store import open_store
from clbench.store.measures import load_histograms
from clbench.store.queries import load_runs
from clbench.sweep.driver import execute
from clbench.sweep.plan import plan_sweep

SYN = """
benchmark = "synthetic"
seeds = {seeds}
[overrides]
epochs = 1
synthetic = {{ train_per_class = 20, test_per_class = 10 }}
"""
SPECS = {
    "t-fig2": 'kind = "fig2"\nmethods = ["er"]\nmasks = ["none", "-inf"]\nbuffers = [20]\n',
    "t-fig4": 'kind = "fig4"\nmethods = ["er"]\nmasks = ["none", "-inf", "-2", "1"]\nbuffers = [10, 20]\n',
    "t-forgetting": 'kind = "forgetting"\nmethods = ["er", "der"]\nmasks = ["none", "-inf"]\nbuffers = [10, 20]\n',
    "t-tiny": 'kind = "tiny-buffer"\nmethods = ["er"]\nmasks = ["none", "-inf"]\nbuffers = [5, 10, 20]\n',
    "t-methods": 'kind = "methods"\nmethods = ["er", "icarl", "agem"]\nmasks = ["none", "-inf", "-2"]\nbuffers '
    "= [10, 20]\n"
    'per_method = { icarl = { masks = ["none"] } }\n',
}


def write_spec(folder, name, seeds=3, extra=""):
    path = folder / f"{name}.toml"
    path.write_text(SPECS[name] + extra + SYN.format(seeds=seeds))
    return path


def train(spec, db):
    with open_store(db) as store:
        execute(plan_sweep(spec.configs(), store), store, experiment=spec.name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reports")
    db = folder / "results.db"
    specs = {name: load_experiment(write_spec(folder, name)) for name in SPECS}
    for spec in specs.values():
        train(spec, db)
    return folder, db, specs


# ---------------------------------------------------------------------------------------------
# Experiment files


def test_shipped_experiments_load_and_resolve():
    names = list_experiments()
    for name in (
        "fig2",
        "fig4",
        "forgetting",
        "tiny-buffer",
        "fig4-cifar10",
        "fig2-cifar10",
        "forgetting-cifar100",
        "fig4-tinyimg",
        "methods",
        "class-order",
        "stability-gap",
    ):
        assert name in names
    for name in names:
        spec = load_experiment(name)
        assert spec.name == name
        configs = spec.configs()
        # Per method its own masks ([per_method] of the methods report), else the file's.
        n_cells = sum(len(spec.masks_for(m)) for m in spec.methods) * len(spec.buffers) * len(spec.class_orders)
        assert len(configs) == n_cells * len(spec.seeds)
        for cfg in configs:
            cfg.resolve()
    assert len(load_experiment("fig4").seeds) == 10
    assert "-inf" in load_experiment("fig4").masks and "none" in load_experiment("fig4").masks


def test_shipped_experiments_load_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_experiment("fig2").kind == "fig2"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'kind = "fig9"\nbenchmark = "seq-fmnist"\nmethods = ["er"]\nmasks = ["none"]\nbuffers = [200]\nseeds = 2\n',
            "unknown kind 'fig9': valid kinds are fig2, fig4, forgetting, tiny-buffer",
        ),
        (
            'kind = "fig4"\nbenchmark = "seq-fmnist"\nmethods = ["er"]\nmasks = ["none", "-inf"]\nbuffers = [200]\n',
            "missing key 'seeds'",
        ),
        (
            'kind = "fig4"\nbenchmark = "seq-fmnist"\nmethods = ["er"]\nmasks = ["none", "abc"]\nbuffers = '
            "[200]\nseeds = 2\n",
            "masks:",
        ),
        (
            'kind = "fig4"\nbenchmark = "seq-fmnist"\nmethods = ["er"]\nmasks = ["-inf"]\nbuffers = '
            "[200]\nseeds = 2\nbogus = 1\n",
            "unknown key 'bogus'",
        ),
        (
            'kind = "fig4"\nbenchmark = "seq-fmnist"\nmethods = ["er"]\nmasks = ["-inf"]\nbuffers = [200]\nseeds = 0\n',
            "seeds must be a count >= 1",
        ),
        (
            'kind = "fig4"\nbenchmark = "seq-fmnist"\nmethods = ["er"]\nmasks = ["-inf"]\nbuffers = [200]\nseeds = 2\n'
            "[overrides]\nepoch = 3\n",
            "unknown override 'epoch'",
        ),
        (
            'kind = "fig2"\nbenchmark = "seq-fmnist"\nmethods = ["er"]\nmasks = ["none", "-5"]\nbuffers = '
            "[200]\nseeds = 2\n",
            "render.masked '-inf' is not among the masks",
        ),
        (
            'kind = "fig4"\nbenchmark = "seq-fmnist"\nmethods = ["er"]\nmasks = ["-inf"]\nbuffers = [200]\nseeds = 2\n'
            '[render]\ncolour = "red"\n',
            "unknown render option 'colour'",
        ),
        ("kind = ", "is not valid TOML"),
    ],
)
def test_invalid_experiment_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_experiment(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_experiment_names_the_valid_ones():
    with pytest.raises(
        ValueError, match="unknown experiment 'fig9': valid experiments are class-order, fig2, fig2-cifar10, fig4"
    ):
        load_experiment("fig9")


# ---------------------------------------------------------------------------------------------
# Rendering: files exist and the plotted numbers are the registry's


def test_fig2_renders_the_registry_numbers(trained, tmp_path):
    folder, db, specs = trained
    spec = specs["t-fig2"]
    written = render_report(spec, db, tmp_path / "out")
    names = {p.name for p in written}
    assert names == {"t-fig2.png", "t-fig2.pdf", "t-fig2.data.json"}
    assert all(p.stat().st_size > 0 for p in written)
    data = json.loads((tmp_path / "out" / "t-fig2.data.json").read_text())
    assert data["seeds"] == [0, 1, 2]
    runs = load_runs(db, method="er", mask=["none", "-inf"], buffer=20, experiment="t-fig2")
    with open_store(db, readonly=True) as store:
        for side, mask in (("baseline", "none"), ("masked", "-inf")):
            ids = runs[runs["mask"] == mask].sort_values("seed")["run_id"].tolist()
            results = [store.load_result(i) for i in ids]
            conf = np.mean([np.diagonal(r.confidence[-1]) for r in results], axis=0)
            np.testing.assert_allclose(data[side]["confidence"], conf)
            np.testing.assert_allclose(data[side]["task_accuracy"], np.mean([r.class_il[-1] for r in results], axis=0))
            faa = runs[runs["mask"] == mask]["faa_class_il"].mean()
            assert data[side]["faa_class_il"] == pytest.approx(faa)
            assert data[side]["faa_task_il"] == pytest.approx(runs[runs["mask"] == mask]["faa_task_il"].mean())
        fig = plot_fig2(fig2_data(spec, experiment_runs(spec, store), store))
    conf_ax, task_ax = fig.axes[0], fig.axes[1]
    for ax, key in ((conf_ax, "confidence"), (task_ax, "task_accuracy")):
        for side, gid in (("baseline", "baseline"), ("masked", "masked")):
            heights = [p.get_height() for p in ax.patches if p.get_gid() == gid]
            np.testing.assert_allclose(heights, data[side][key])
        # masked bars: red where higher than the baseline, blue where lower
        base = data["baseline"][key]
        for p, b, m in zip([p for p in ax.patches if p.get_gid() == "masked"], base, data["masked"][key]):
            expected = "#d62728" if m > b else "#1f77b4" if m < b else "#7f7f7f"
            assert matplotlib_hex(p.get_facecolor()) == expected
    # row 2: one line per task; task j's line is A[j:, j]
    class_il_base = np.asarray(data["baseline"]["class_il"])
    lines = {line.get_gid(): line for line in fig.axes[2].get_lines()}
    np.testing.assert_allclose(lines["task 2"].get_ydata(), class_il_base[1:, 1])
    titles = [ax.get_title() for ax in fig.axes[2:6]]
    assert f"FAA {data['baseline']['faa_class_il']:.2f}%" in titles[0]
    weights = [ax.title.get_fontweight() for ax in fig.axes[2:4]]
    best = 0 if data["baseline"]["faa_class_il"] > data["masked"]["faa_class_il"] else 1
    assert weights[best] == "bold"
    # row 3: confidence histograms after the final task, old tasks pooled against the newest,
    # pooled over seeds: the registry's counts
    np.testing.assert_allclose(data["histogram_edges"], HISTOGRAM_EDGES)
    for side, mask in (("baseline", "none"), ("masked", "-inf")):
        ids = runs[runs["mask"] == mask].sort_values("seed")["run_id"].tolist()
        stored = load_histograms(db, ids)
        for kind in ("true_class", "max"):
            last = np.sum([stored[i][kind][-1] for i in ids], axis=0)  # (T, bins)
            assert data[side]["histograms"][kind]["old"] == last[:-1].sum(0).tolist()
            assert data[side]["histograms"][kind]["newest"] == last[-1].tolist()
            assert sum(data[side]["histograms"][kind]["newest"]) == 3 * 20  # 3 seeds x 2 classes x 10 samples
    steps = {p.get_gid(): p for ax in fig.axes[6:10] for p in ax.patches}
    assert len(fig.axes) == 10
    for side in ("baseline", "masked"):
        for kind in ("true_class", "max"):
            for tasks in ("old", "newest"):
                values, edges, _ = steps[f"{side} {kind} {tasks}"].get_data()
                counts = np.asarray(data[side]["histograms"][kind][tasks], dtype=float)
                np.testing.assert_allclose(values, counts / counts.sum())
                np.testing.assert_allclose(edges, HISTOGRAM_EDGES)
    assert "old tasks 1-4" in fig.axes[6].get_title() and "newest task 5" in fig.axes[7].get_title()


def matplotlib_hex(rgba) -> str:
    from matplotlib.colors import to_hex

    return to_hex(rgba)


def test_fig4_renders_mean_and_std_per_mask(trained, tmp_path):
    folder, db, specs = trained
    spec = specs["t-fig4"]
    written = render_report(spec, db, tmp_path)
    assert {p.name for p in written} == {"t-fig4.png", "t-fig4.pdf", "t-fig4.data.csv"}
    data = pd.read_csv(tmp_path / "t-fig4.data.csv")
    runs = load_runs(db, experiment="t-fig4", status="finished")
    expected = runs.groupby(["buffer_size", "mask"])["faa_class_il"].agg(["mean", "std", "count"])
    for row in data.itertuples():
        e = expected.loc[(row.buffer_size, row.mask)]
        assert row.mean == pytest.approx(e["mean"])
        assert row.std == pytest.approx(e["std"])
        assert row.n_seeds == e["count"] == 3
    assert set(data["mask"]) == {"none", "-inf", "-2.0", "1.0"}
    fig = plot_fig4(fig4_data(spec, experiment_runs(spec, open_store(db, readonly=True))), spec)
    assert len(fig.axes) == 2
    for ax, buffer in zip(fig.axes, (10, 20)):
        lines = {line.get_gid(): line for line in ax.get_lines()}
        masked = data[(data["buffer_size"] == buffer) & ~data["is_baseline"]].sort_values("x")
        np.testing.assert_allclose(lines["mean er"].get_ydata(), masked["mean"])
        np.testing.assert_allclose(lines["baseline er"].get_ydata(), [expected.loc[(buffer, "none"), "mean"]] * 2)
        assert lines["baseline er"].get_linestyle() == ":"
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[0] == "-inf" and labels == ["-inf", "-2", "1"]
        assert ax.get_xlabel() and ax.get_legend() is not None
    assert fig.axes[0].get_ylabel()


@pytest.mark.parametrize("name", ["t-forgetting", "t-tiny"])
def test_tables_hold_mean_and_std_with_the_best_in_bold(trained, tmp_path, name):
    folder, db, specs = trained
    spec = specs[name]
    written = render_report(spec, db, tmp_path)
    names = {p.name for p in written}
    assert {f"{name}.md", f"{name}.csv", f"{name}.tex"} <= names
    if name == "t-tiny":
        assert {f"{name}-curve.png", f"{name}-curve.pdf", f"{name}-curve.data.csv"} <= names
    summary = pd.read_csv(tmp_path / f"{name}.csv")
    runs = load_runs(db, experiment=name, status="finished")
    for row in summary.itertuples():
        column = f"{row.metric}_{row.setting}"
        cell = runs[
            (runs["method"] == row.method) & (runs["mask"] == row.mask) & (runs["buffer_size"] == row.buffer_size)
        ]
        assert row.mean == pytest.approx(cell[column].mean())
        assert row.std == pytest.approx(cell[column].std(ddof=1))
    # best per column: highest FAA, lowest forgetting
    for (_, _, metric), group in summary.groupby(["buffer_size", "setting", "metric"]):
        best = group.loc[group["best"], "mean"]
        assert len(best) >= 1
        assert best.iloc[0] == (group["mean"].max() if metric == "faa" else group["mean"].min())
    md = (tmp_path / f"{name}.md").read_text()
    assert "**" in md and "Chaudhry" in md and "## Class-IL" in md and "## Task-IL" in md
    tex = (tmp_path / f"{name}.tex").read_text()
    assert r"\textbf{" in tex and r"\begin{tabular}" in tex and "Chaudhry" in tex and r"$m = -\infty$" in tex


def test_missing_runs_and_partial_render(trained, tmp_path):
    folder, db, specs = trained
    spec = specs["t-fig4"].with_seeds(4)  # seed 3 was never trained
    missing = missing_runs(spec, db)
    assert len(missing) == 8 and {c.seed for c in missing} == {3}
    render_report(spec, db, tmp_path)
    assert set(pd.read_csv(tmp_path / "t-fig4.data.csv")["n_seeds"]) == {3}


# ---------------------------------------------------------------------------------------------
# The commands


def test_report_command_runs_what_is_missing_then_renders(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path, "t-fig2", seeds=2)
    assert cli.main(["report", str(path), "--no-run"]) == 0
    assert "4 runs of t-fig2 missing" in capsys.readouterr().out
    assert not (tmp_path / "reports").exists() and not (tmp_path / "results.db").exists()
    assert cli.main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rendered t-fig2" in out
    assert {p.name for p in (tmp_path / "reports" / "t-fig2").iterdir()} == {
        "t-fig2.png",
        "t-fig2.pdf",
        "t-fig2.data.json",
    }
    assert set(load_runs(tmp_path / "results.db")["experiment"]) == {"t-fig2"}
    # a third seed: --no-run renders what exists and lists the missing runs
    assert cli.main(["report", str(path), "--no-run", "--seeds", "3", "--out", "elsewhere"]) == 0
    out = capsys.readouterr().out
    assert "2 runs of t-fig2 missing" in out and (tmp_path / "elsewhere" / "t-fig2.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["report", "fig9"], "unknown experiment 'fig9': valid experiments are class-order, fig2"),
        (["compare", "--format", "xml"], "invalid --format 'xml': valid are table, md, csv, json"),
        (["compare", "--test", "z"], "invalid --test 'z': valid are permutation, wilcoxon, t"),
        (["report", "fig2", "--db", "notadb.txt", "--no-run"], "not a clbench database"),
        (["compare", "--db", "notadb.txt"], "not a clbench database"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notadb.txt").write_text("hello")
    before = sorted(os.listdir(tmp_path))
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == before


def test_compare_command_formats(trained, capsys):
    folder, db, specs = trained
    assert (
        cli.main(
            [
                "compare",
                "--db",
                str(db),
                "--format",
                "json",
                "--method",
                "er",
                "--buffer",
                "20",
                "--mask",
                "-inf",
                "--experiment",
                "t-fig2",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and {r["variant"] for r in rows} == {"-inf"}
    faa = next(r for r in rows if r["metric"] == "faa_class_il")
    runs = load_runs(db, experiment="t-fig2")
    b = runs[runs["mask"] == "none"].sort_values("seed")["faa_class_il"].to_numpy()
    v = runs[runs["mask"] == "-inf"].sort_values("seed")["faa_class_il"].to_numpy()
    assert faa["difference"] == pytest.approx((v - b).mean())
    assert faa["wins"] == int((v > b).sum()) and faa["n_seeds"] == 3
    for fmt, needle in (("csv", "p_holm"), ("md", "| er | synthetic | 20 | none | -inf |"), ("table", "sign-flip")):
        assert cli.main(["compare", "--db", str(db), "--format", fmt, "--experiment", "t-fig2"]) == 0
        assert needle in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# compare_runs by hand


def _frame(base, variant, seeds=None, variant_seeds=None):
    cfg = {"method": "er", "benchmark": "seq-fmnist", "buffer_size": 200, "lr": 0.1}
    rows = []
    for mask, values, ss in (("none", base, seeds), ("-inf", variant, variant_seeds or seeds)):
        for seed, v in zip(ss or range(len(values)), values):
            rows.append(
                {
                    "method": "er",
                    "dataset": "seq-fmnist",
                    "buffer_size": 200,
                    "mask": mask,
                    "mask_on": "stream",
                    "seed": seed,
                    "status": "finished",
                    "config": {**cfg, "seed": seed, "mask": mask},
                    "faa_class_il": v,
                    "faa_task_il": v + 10,
                    "forgetting_class_il": 50 - v,
                    "forgetting_task_il": math.nan,
                }
            )
    return pd.DataFrame(rows)


def test_compare_runs_by_hand():
    base = [40.0, 42.0, 41.0, 39.0, 43.0]
    var = [45.0, 43.0, 44.5, 41.0, 48.0]  # better on every seed: +5, +1, +3.5, +2, +5
    out = compare_runs(_frame(base, var), test="wilcoxon").set_index("metric")
    row = out.loc["faa_class_il"]
    assert row["n_seeds"] == 5 and row["baseline"] == "none" and row["variant"] == "-inf"
    assert row["difference"] == pytest.approx(3.3)
    assert row["baseline_mean"] == pytest.approx(41.0) and row["variant_mean"] == pytest.approx(44.3)
    assert row["baseline_std"] == pytest.approx(np.std(base, ddof=1))
    # exact Wilcoxon signed-rank, two-sided: all 5 differences positive -> p = 2 / 2^5
    assert row["p_value"] == pytest.approx(2 / 32)
    assert (row["wins"], row["losses"], row["ties"]) == (5, 0, 0)
    assert "Wilcoxon" in row["test"]
    # forgetting = 50 - accuracy: lower is better, so the variant wins there too
    f = out.loc["forgetting_class_il"]
    assert f["difference"] == pytest.approx(-3.3) and f["wins"] == 5
    # NaN metric values drop out of the pairs
    assert out.loc["forgetting_task_il", "n_seeds"] == 0
    # paired t: t = mean(d) / (sd(d) / sqrt(n)), two-sided
    d = np.subtract(var, base)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    from scipy import stats

    p = 2 * stats.t.sf(abs(t), df=len(d) - 1)
    assert compare_runs(_frame(base, var), test="t").set_index("metric").loc[
        "faa_class_il", "p_value"
    ] == pytest.approx(p)


def test_compare_runs_pairs_only_common_seeds_and_matching_configs():
    df = _frame([40.0, 41.0, 42.0], [41.0, 40.0, 45.0, 50.0], seeds=[0, 1, 2], variant_seeds=[0, 1, 2, 3])
    row = compare_runs(df).set_index("metric").loc["faa_class_il"]
    assert row["n_seeds"] == 3 and (row["wins"], row["losses"], row["ties"]) == (2, 1, 0)
    assert row["difference"] == pytest.approx((1 - 1 + 3) / 3)
    other = _frame([40.0], [41.0])
    other["config"] = [{**c, "lr": 0.5} for c in other["config"]]  # another lr: never paired with lr 0.1
    other.loc[other["mask"] == "none", "seed"] = 7
    out = compare_runs(pd.concat([df, other], ignore_index=True))
    assert set(out.loc[out["metric"] == "faa_class_il", "n_seeds"]) == {3}
    with pytest.raises(ValueError, match="valid tests are permutation, wilcoxon, t"):
        compare_runs(df, test="z")


def _variants_frame(base, variants: dict):
    """One baseline and several masked variants of one config, seeds 0..n-1."""
    frames = [_frame(base, v) for v in variants.values()]
    out = []
    for mask, f in zip(variants, frames):
        f = f.copy()
        f.loc[f["mask"] == "-inf", "mask"] = mask
        out.append(f if not out else f[f["mask"] != "none"])
    return pd.concat(out, ignore_index=True)


def test_compare_statistics_against_scipy():
    from scipy import stats

    rng = np.random.default_rng(7)
    base = list(rng.normal(70, 2, 8))
    variants = {
        "-inf": [b + rng.normal(1.0, 1.0) for b in base],
        "-2.0": [b + rng.normal(0.3, 1.5) for b in base],
        "1.0": [b + rng.normal(-0.2, 1.0) for b in base],
    }
    out = compare_runs(_variants_frame(base, variants))
    faa = out[out["metric"] == "faa_class_il"].set_index("variant")
    assert list(faa.index) == ["-inf", "-2.0", "1.0"]
    expected_p = {}
    for mask, var in variants.items():
        row = faa.loc[mask]
        d = np.subtract(var, base)
        # exact sign-flip permutation test: scipy enumerates all 2^8 sign patterns too
        ref = stats.permutation_test(
            (d,),
            lambda x, axis: np.mean(x, axis=axis),
            permutation_type="samples",
            n_resamples=np.inf,
            alternative="two-sided",
        )
        assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
        expected_p[mask] = ref.pvalue
        ci = stats.ttest_rel(var, base).confidence_interval(0.95)
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
        assert row["effect_size_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
        assert row["min_p"] == pytest.approx(2 / 2**8) and row["note"] == ""
    # Holm by hand over the three variants of this metric
    order = sorted(expected_p, key=expected_p.get)
    running, holm = 0.0, {}
    for k, mask in enumerate(order):
        running = max(running, min(1.0, (3 - k) * expected_p[mask]))
        holm[mask] = running
    for mask in variants:
        assert faa.loc[mask, "p_holm"] == pytest.approx(holm[mask])
    assert "sign-flip" in faa["test"].iloc[0]
    # Wilcoxon and t stay available, against scipy directly
    for test, fn in (
        ("wilcoxon", lambda v, b: stats.wilcoxon(np.subtract(v, b)).pvalue),
        ("t", lambda v, b: stats.ttest_rel(v, b).pvalue),
    ):
        rows = compare_runs(_variants_frame(base, variants), test=test)
        rows = rows[rows["metric"] == "faa_class_il"].set_index("variant")
        for mask, var in variants.items():
            assert rows.loc[mask, "p_value"] == pytest.approx(fn(var, base))


def test_compare_says_when_seeds_cannot_reach_significance():
    # 5 seeds, the variant better on every one: the most extreme of 2^5 sign patterns, p = 2/32
    out = compare_runs(_frame([40.0, 42.0, 41.0, 39.0, 43.0], [45.0, 43.0, 44.5, 41.0, 48.0])).set_index("metric")
    row = out.loc["faa_class_il"]
    assert row["p_value"] == pytest.approx(2 / 32) and row["min_p"] == pytest.approx(2 / 32)
    assert "5 seeds cannot reach p < 0.05" in row["note"]
    # 6 seeds reach 2/64 alone, but not after Holm over 2 variants (2 x 2/64 = 0.0625)
    base = [40.0, 42.0, 41.0, 39.0, 43.0, 40.5]
    two = compare_runs(_variants_frame(base, {"-inf": [b + 1 for b in base], "-2.0": [b + 2 for b in base]}))
    row = two[two["metric"] == "faa_class_il"].iloc[0]
    assert row["p_value"] == pytest.approx(2 / 64) and row["p_holm"] == pytest.approx(2 / 32)
    assert "cannot reach Holm-adjusted p < 0.05 over 2 comparisons" in row["note"]


def test_sign_flip_beyond_exact_is_seeded_monte_carlo():
    from clbench.reports.compare import EXACT_MAX_PAIRS, MONTE_CARLO_PATTERNS, sign_flip_p_value

    d = np.random.default_rng(3).normal(0.3, 1.0, EXACT_MAX_PAIRS + 5)
    p = sign_flip_p_value(d)
    assert p == sign_flip_p_value(d)  # deterministic
    assert (p * (1 + MONTE_CARLO_PATTERNS)) == pytest.approx(round(p * (1 + MONTE_CARLO_PATTERNS)))
    from scipy import stats

    ref = stats.permutation_test(
        (d,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        n_resamples=200_000,
        alternative="two-sided",
        rng=np.random.default_rng(1),
    )
    assert p == pytest.approx(ref.pvalue, abs=0.01)


# ---------------------------------------------------------------------------------------------
# The methods report: per-method masks, and masked against each method's own baseline


METHODS_HEAD = 'kind = "methods"\nbenchmark = "seq-fmnist"\nbuffers = [200]\nseeds = 2\n'


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'methods = ["icarl"]\nmasks = ["none", "-inf"]\n',
            "the masks -inf on the stream cannot act in icarl, whose cross-entropy sees no rows: give "
            "[per_method.icarl] "
            'masks = ["none"]',
        ),
        (
            'methods = ["er", "gdumb"]\nmasks = ["none", "-2"]\n',
            'cannot act in gdumb, whose cross-entropy sees buffer rows: give [per_method.gdumb] mask_on = "buffer"',
        ),
        (
            'methods = ["er"]\nmasks = ["none"]\n[per_method.der]\nmasks = ["none"]\n',
            "per_method.der: 'der' is not among",
        ),
        (
            'methods = ["er"]\nmasks = ["none"]\n[per_method.er]\nbuffers = [5]\n',
            "unknown key 'buffers' in per_method.er",
        ),
        ('methods = ["er"]\nmasks = ["none"]\n[per_method.er]\nmask_on = "side"\n', "invalid mask_on 'side'"),
        ('methods = ["er"]\nmasks = ["none"]\n[per_method.er]\nmasks = ["abc"]\n', "per_method.er.masks"),
        ('methods = ["nope"]\nmasks = ["none"]\n', "unknown method 'nope'"),
    ],
)
def test_per_method_masks_are_validated_strictly(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(METHODS_HEAD + text)
    with pytest.raises(ValueError) as info:
        load_experiment(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_per_method_masks_and_placement_make_the_runs(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(
        METHODS_HEAD + 'methods = ["er", "gdumb", "icarl"]\nmasks = ["none", "-inf"]\n'
        '[per_method.gdumb]\nmask_on = "buffer"\n[per_method.icarl]\nmasks = ["none"]\n'
    )
    spec = load_experiment(path)
    cells = [(c.method, c.mask.label, c.mask.on) for c in spec.configs() if c.seed == 0]
    assert cells == [
        ("er", "none", "stream"),
        ("er", "-inf", "stream"),
        ("gdumb", "none", "buffer"),
        ("gdumb", "-inf", "buffer"),
        ("icarl", "none", "stream"),
    ]
    assert spec.all_masks == ("none", "-inf")


def test_methods_report_renders_tables_paired_comparison_and_curves(trained, tmp_path):
    from clbench.reports.compare import holm

    folder, db, specs = trained
    spec = specs["t-methods"]
    written = render_report(spec, db, tmp_path / "out")
    names = {p.name for p in written}
    assert names == {
        "t-methods.md",
        "t-methods.csv",
        "t-methods.tex",
        "t-methods-compare.md",
        "t-methods-compare.csv",
        "t-methods-curve.data.csv",
        "t-methods-curve.png",
        "t-methods-curve.pdf",
    }
    summary = pd.read_csv(tmp_path / "out" / "t-methods.csv", dtype={"mask": str})
    assert set(zip(summary["method"], summary["mask"])) == {
        ("er", "none"),
        ("er", "-inf"),
        ("er", "-2.0"),
        ("agem", "none"),
        ("agem", "-inf"),
        ("agem", "-2.0"),
        ("icarl", "none"),
    }
    cmp = pd.read_csv(tmp_path / "out" / "t-methods-compare.csv", dtype={"variant": str, "baseline": str})
    assert set(cmp["method"]) == {"er", "agem"}  # iCaRL has no masked variant
    runs = experiment_runs(spec, open_store(db, readonly=True))
    for method in ("er", "agem"):
        mine = cmp[(cmp["method"] == method) & (cmp["metric"] == "faa_class_il")]
        assert len(mine) == 4  # 2 variants x 2 buffers
        # Holm over this method's comparisons only
        np.testing.assert_allclose(mine["p_holm"], holm(mine["p_value"].to_numpy()))
        row = mine[(mine["variant"] == "-inf") & (mine["buffer_size"] == 20)].iloc[0]
        cell = runs[(runs["method"] == method) & (runs["buffer_size"] == 20)]
        base = cell[cell["mask"] == "none"].set_index("seed")["faa_class_il"]
        var = cell[cell["mask"] == "-inf"].set_index("seed")["faa_class_il"]
        assert row["difference"] == pytest.approx((var - base).mean())
    md = (tmp_path / "out" / "t-methods-compare.md").read_text()
    assert "| A-GEM | 20 | m = -inf | stream |" in md and "Holm-adjusted over one method's comparisons" in md


def test_report_dry_run_prints_the_groups_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "methods", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "methods: 880 runs against" in out and "880 to compute in 19 lockstep group(s)" in out
    assert "group 19: gdumb seq-fmnist buffer 500 mask none,-inf,-2.0 (30 runs)" in out
    assert "icarl seq-fmnist buffer 20 mask none (10 runs)" in out
    assert os.listdir(tmp_path) == []

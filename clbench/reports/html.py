"""Static HTML reports: ``ROOT/index.html`` and one page ``ROOT/NAME.html`` per report, beside the
report's folder of figures and tables (``ROOT/NAME/`` by default).

A page shows every figure (the PNG, with links to its PDF and to the data file of the plotted
numbers) and table of the report, the paired comparison of its masks, how many runs and seeds each
cell rests on (every expected run that is not finished named with its status, ``missing`` when it
has no row), the software versions and devices of the runs, and the command and the registry query
behind it. Plain files only: inline CSS, no script, no external resource, every link relative, so
the folder opens from disk (file://) or any static host.

``ROOT/index.json`` remembers the pages written so far (reports rendered one at a time all appear
in the index); ``index.html`` is rebuilt from it each time.
"""

from __future__ import annotations

import html
import json
import os
import shlex
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pandas as pd
from sqlalchemy import select

from clbench.reports.compare import ALPHA, COMPARE_METRICS, compare_runs, procedures
from clbench.reports.experiments import ExperimentSpec, mask_sort_key
from clbench.reports.fig2 import METHOD_NAMES, mask_title
from clbench.reports.render import experiment_runs, render_report, run_coverage
from clbench.store.connection import in_chunks
from clbench.store.queries import Db, with_store
from clbench.store.schema import Run
from clbench.store.store import Store

INDEX = "index.html"
MANIFEST = "index.json"
VERSION_KEYS = ("clbench", "torch", "numpy", "python", "platform")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1.5rem; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem;
     border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
.meta { color: #59636e; font-size: .9rem; } nav { margin: .6rem 0 1rem; }
a { color: #0969da; } code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .85rem; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .7rem; overflow-x: auto; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: .9rem; color: #59636e; }
table { border-collapse: collapse; margin: .8rem 0 1.4rem; font-size: .88rem; }
caption { text-align: left; color: #59636e; padding-bottom: .4rem; caption-side: top; max-width: 1150px; }
th, td { border: 1px solid #d0d7de; padding: .25rem .55rem; vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bad { color: #b35900; } .ok { color: #1a7f37; } .note { color: #b35900; font-size: .9rem; }
"""


# ---------------------------------------------------------------------------------------------
# Small formatters (HTML-escaped)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _href(path: Path, root: Path) -> str:
    """A relative URL from a page in ``root`` to ``path``."""
    return quote(Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix())


def _num(value: float, fmt: str = "{:.2f}") -> str:
    return "-" if value is None or value != value else fmt.format(value)


def _pm(mean: float, std: float) -> str:
    if mean != mean:
        return "-"
    return f"{mean:.2f}" if std != std else f"{mean:.2f} ± {std:.2f}"


def _p(value: float) -> str:
    if value != value:
        return "-"
    text = f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"
    return text + ("*" if value < ALPHA else "")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "", numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are already escaped HTML."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{caption}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for row in rows:
        out.append(
            "<tr>"
            + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="clbench">\n<title>{_e(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------
# The parts of a report page


def _figures(written: Sequence[Path], root: Path) -> str:
    by_name = {p.name: p for p in written}
    parts = []
    for png in (p for p in written if p.suffix == ".png"):
        stem = png.name[: -len(".png")]
        links = [f'<a href="{_href(png, root)}">PNG</a>']
        if f"{stem}.pdf" in by_name:
            links.append(f'<a href="{_href(by_name[f"{stem}.pdf"], root)}">PDF</a>')
        for data in (f"{stem}.data.json", f"{stem}.data.csv"):
            if data in by_name:
                links.append(f'<a href="{_href(by_name[data], root)}">raw data ({_e(data)})</a>')
        parts.append(
            f'<figure><a href="{_href(png, root)}"><img src="{_href(png, root)}" alt="{_e(stem)}"></a>'
            f"<figcaption>{_e(stem)}: {' · '.join(links)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _table_files(written: Sequence[Path], root: Path) -> str:
    files = [p for p in written if p.suffix in (".md", ".csv", ".tex") and ".data." not in p.name]
    if not files:
        return ""
    return "<p>Files: " + " · ".join(f'<a href="{_href(p, root)}">{_e(p.name)}</a>' for p in files) + "</p>"


def _plotted_numbers(spec: ExperimentSpec, df: pd.DataFrame) -> str:
    """The numbers behind a figure, as a table (fig4: per mask; fig2: the two sides)."""
    if spec.kind == "fig4":
        from clbench.reports.fig4 import fig4_data  # noqa: PLC0415

        data = fig4_data(spec, df)
        rows = [
            [
                _e(METHOD_NAMES.get(r.method, r.method)),
                _e(r.buffer_size),
                _e(mask_title(r.mask)),
                _pm(r.mean, r.std),
                _e(r.n_seeds),
            ]
            for r in data.itertuples()
        ]
        return _table(
            ["method", "buffer", "mask", "class-IL FAA (%), mean ± std", "seeds"],
            rows,
            "Plotted numbers: class-IL final average accuracy over seeds (std with ddof=1).",
            numeric=(1, 3, 4),
        )
    if spec.kind == "rivals":
        from clbench.reports.rivals import figure_data  # noqa: PLC0415

        rows = [
            [
                _e(r.variant),
                _e(r.buffer_size),
                _e("class-IL FAA" if r.metric == "faa_class_il" else "class-IL forgetting"),
                _num(r.mean),
                "-" if r.ci_low != r.ci_low else f"[{r.ci_low:.2f}, {r.ci_high:.2f}]",
                _e(r.n_seeds),
            ]
            for r in figure_data(spec, df).itertuples()
        ]
        return _table(
            ["variant", "buffer", "metric", "mean (%)", "95% CI", "seeds"],
            rows,
            "Plotted numbers: the mean over seeds with its 95% Student's t interval.",
            numeric=(1, 3, 4, 5),
        )
    if spec.kind == "fig2":
        r = spec.render
        rows = []
        for side in ("baseline", "masked"):
            cell = df[(df["method"] == r["method"]) & (df["buffer_size"] == r["buffer"]) & (df["mask"] == r[side])]
            rows.append(
                [
                    _e(side),
                    _e(mask_title(r[side])),
                    _e(len(cell)),
                    _pm(cell["faa_class_il"].mean(), cell["faa_class_il"].std(ddof=1)),
                    _pm(cell["faa_task_il"].mean(), cell["faa_task_il"].std(ddof=1)),
                    _pm(cell["forgetting_class_il"].mean(), cell["forgetting_class_il"].std(ddof=1)),
                ]
            )
        return _table(
            ["side", "mask", "finished runs", "FAA class-IL", "FAA task-IL", "forgetting class-IL"],
            rows,
            f"{_e(METHOD_NAMES.get(r['method'], r['method']))}, buffer {_e(r['buffer'])}: mean ± std (%) over "
            "each side's finished runs; the figure averages over the seeds both sides have.",
            numeric=(2, 3, 4, 5),
        )
    return ""


def _comparison(spec: ExperimentSpec, df: pd.DataFrame, store: Store) -> str:
    if spec.kind == "rivals":
        return _rivals_comparison(spec, df) if not df.empty else ""
    baseline = spec.render.get("baseline") or "none"
    if baseline not in spec.all_masks or df.empty:
        return ""
    per_method = spec.kind == "methods"  # one Holm family per method: "does masking help this method?"
    labels = COMPARE_METRICS
    if per_method:
        from clbench.reports.methods import comparison  # noqa: PLC0415

        result = comparison(spec, df)
    elif spec.kind == "stability-gap":  # the curves' metrics after the matrices'
        from clbench.reports.stability_gap import CURVE_METRICS, run_curve_metrics  # noqa: PLC0415
        from clbench.store.measures import load_curves  # noqa: PLC0415

        labels = {**COMPARE_METRICS, **CURVE_METRICS}
        df = df.merge(run_curve_metrics(load_curves(store, list(df["run_id"]))), on="run_id", how="left")
        result = compare_runs(df, baseline=baseline, metrics=labels)
    else:
        result = compare_runs(df, baseline=baseline)
    if result.empty:
        return ""
    caption = (
        f"Mask {_e(baseline)} (baseline) against each masked variant, paired by seed: mean ± std (%); "
        f"diff = mean of variant - baseline; "
        + "; ".join(_e(p) for p in procedures("permutation"))
        + (" (here: over one method's comparisons of each metric)" if per_method else "")
        + f"; * p &lt; {ALPHA:g}."
    )
    rows = []
    for r in result.itertuples():
        rows.append(
            [
                _e(METHOD_NAMES.get(r.method, r.method)),
                _e(r.buffer_size),
                _e(mask_title(r.variant)),
                _e(r.mask_on),
                _e(labels[r.metric][0]),
                _e(r.n_seeds),
                _pm(r.baseline_mean, r.baseline_std),
                _pm(r.variant_mean, r.variant_std),
                _num(r.difference, "{:+.2f}"),
                "-" if r.ci_low != r.ci_low else f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]",
                _num(r.effect_size_dz, "{:+.2f}"),
                _p(r.p_value),
                _p(r.p_holm),
                f"{r.wins}/{r.losses}/{r.ties}",
            ]
        )
    notes = "".join(f'<p class="note">note: {_e(n)}.</p>' for n in dict.fromkeys(result["note"]) if n)
    return (
        _table(
            [
                "method",
                "buffer",
                "variant",
                "on",
                "metric",
                "seeds",
                "baseline",
                "variant",
                "diff",
                "95% CI",
                "d_z",
                "p",
                "p Holm",
                "W/L/T",
            ],
            rows,
            caption,
            numeric=(1, 5, 6, 7, 8, 9, 10, 11, 12, 13),
        )
        + notes
    )


def _rivals_comparison(spec: ExperimentSpec, df: pd.DataFrame) -> str:
    """A rivals report's comparison: each masked variant against each rival, per buffer."""
    from clbench.reports.rivals import comparison, metrics, variant_title  # noqa: PLC0415

    result = comparison(spec, df)
    if result.empty:
        return ""
    labels = metrics(spec)
    caption = (
        "Each masked variant against every other variant (the rivals and the unmasked runs), paired by seed "
        "(same seed, buffer and class order): mean ± std (%); diff = mean of masked - rival; "
        + "; ".join(_e(p) for p in procedures("permutation") if not p.startswith("p Holm"))
        + "; p Holm: Holm step-down adjustment over one masked variant's comparisons at one buffer of each "
        "metric (its rivals)" + f"; * p &lt; {ALPHA:g}; W/L/T: seeds where the masked variant is better/worse/equal."
    )
    rows = [
        [
            _e(r.buffer_size),
            _e(variant_title(spec, r.method, r.mask)),
            _e(variant_title(spec, r.rival, r.rival_mask)),
            _e(labels[r.metric][0]),
            _e(r.n_seeds),
            _pm(r.mean, r.std),
            _pm(r.rival_mean, r.rival_std),
            _num(r.difference, "{:+.2f}"),
            "-" if r.ci_low != r.ci_low else f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]",
            _num(r.effect_size_dz, "{:+.2f}"),
            _p(r.p_value),
            _p(r.p_holm),
            f"{r.wins}/{r.losses}/{r.ties}",
        ]
        for r in result.itertuples()
    ]
    head = ["buffer", "masked", "rival", "metric", "seeds", "masked", "rival", "diff", "95% CI", "d_z", "p"]
    notes = "".join(f'<p class="note">note: {_e(n)}.</p>' for n in dict.fromkeys(result["note"]) if n)
    return _table([*head, "p Holm", "W/L/T"], rows, caption, numeric=(0, 4, 5, 6, 7, 8, 9, 10, 11, 12)) + notes


def _coverage(spec: ExperimentSpec, coverage: pd.DataFrame, df: pd.DataFrame) -> str:
    rows = []
    keys = ["method", "buffer_size", "mask", "mask_on", "config_hash"]
    cells = sorted(coverage.groupby(keys, sort=False), key=lambda g: (g[0][0], g[0][1], mask_sort_key(g[0][2])))
    used = set(df["run_id"])
    for (method, buffer, mask, on, _), cell in cells:
        done = cell[cell["status"] == "finished"]
        other = cell[cell["status"] != "finished"]
        seeds = ", ".join(str(s) for s in sorted(done["seed"])) or "-"
        named = "<br>".join(_not_finished(r, used) for r in other.itertuples()) or '<span class="ok">none</span>'

        rows.append(
            [
                _e(METHOD_NAMES.get(method, method)),
                _e(buffer),
                _e(mask_title(mask)),
                _e(on),
                f"{len(done)} of {len(cell)}",
                _e(seeds),
                named,
            ]
        )
    n_done = int((coverage["status"] == "finished").sum())
    statuses = coverage["status"].value_counts()
    summary = ", ".join(f"{n} {s}" for s, n in statuses.items())
    stale_used = sum(1 for rid in coverage["stale_run_id"].dropna() if rid in used)
    caption = (
        f"{n_done} of {len(coverage)} expected runs are finished ({_e(summary)}). One row per cell (a point, "
        "bar or table cell: the runs that differ only by seed); every run that is not finished is named with "
        "its status (missing: not in the database; stale: computed by an older clbench engine, its run id "
        "given). Only finished runs enter the figures and tables"
        + (
            f", and the {stale_used} stale run{'s' if stale_used != 1 else ''} named as used (--include-stale)."
            if stale_used
            else "."
        )
    )
    out = _table(
        ["method", "buffer", "mask", "on", "finished runs", "finished seeds", "not finished"],
        rows,
        caption,
        numeric=(1, 4),
    )
    if spec.kind == "fig2" and not df.empty:
        r = spec.render
        sides = [
            set(df[(df["method"] == r["method"]) & (df["buffer_size"] == r["buffer"]) & (df["mask"] == r[k])]["seed"])
            for k in ("baseline", "masked")
        ]
        both = sorted(sides[0] & sides[1])
        seeds = _e(", ".join(map(str, both)) or "-")
        out += f"<p>The figure averages over the {len(both)} seeds both sides have: {seeds}.</p>"
    return out


def _not_finished(r, used: set) -> str:
    """One expected run that is not finished: its status, its id, and for a stale one the older run
    (and whether the figures used it in its place)."""
    text = f'<span class="bad">seed {_e(r.seed)}: {_e(r.status)}</span> <code>{_e(r.run_id[:12])}</code>'
    if isinstance(r.stale_run_id, str):
        role = "used in its place" if r.stale_run_id in used else "not used (--include-stale uses it)"
        text += f" (older engine's run <code>{_e(r.stale_run_id[:12])}</code>: {role})"
    return text


def _provenance(store: Store, run_ids: Sequence[str]) -> str:
    def work(conn):
        rows = []
        for chunk in in_chunks(list(run_ids)):
            rows += conn.execute(
                select(Run.run_id, Run.device, Run.host, Run.versions).where(Run.run_id.in_(chunk))
            ).all()
        return rows

    rows = store.transaction(work) if run_ids else []
    if not rows:
        return "<p>No finished runs.</p>"
    groups: dict[tuple, list] = {}
    for r in rows:
        v = r.versions or {}
        groups.setdefault((r.device or "-", r.host or "-", *(v.get(k, "-") for k in VERSION_KEYS)), []).append(r.run_id)
    table_rows = [
        [_e(x) for x in key] + [_e(len(ids))] for key, ids in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]
    return _table(
        ["device", "host", *VERSION_KEYS, "runs"],
        table_rows,
        "Software versions and devices of the finished runs behind this report, as each run recorded them.",
        numeric=(len(VERSION_KEYS) + 2,),
    )


def _how_made(spec: ExperimentSpec, store: Store, ids: Sequence[str], command: str, used: Sequence[str]) -> str:
    load = spec.name if spec.source.endswith(f"{spec.name}.toml") and "/" not in spec.source else spec.source
    python = (
        "from clbench.reports import load_experiment\n"
        "from clbench.reports.render import experiment_runs\n"
        "from clbench.store import open_store\n\n"
        f"with open_store({store.where!r}, readonly=True) as store:\n"
        f"    runs = experiment_runs(load_experiment({load!r}), store)  # a load_runs frame"
    )
    # The runs the figures and tables were drawn from (stale stand-ins included, whose stored status
    # is finished), else, with nothing rendered, the runs the experiment expects.
    sql = (
        "SELECT * FROM runs\nWHERE status = 'finished'\n  AND run_id IN (\n"
        + ",\n".join(f"    '{i}'" for i in (used or ids))
        + "\n  );"
    )
    return (
        f"<p>Command:</p><pre>{_e(command)}</pre>"
        f"<p>Database: <code>{_e(store.where)}</code>. Experiment: <code>{_e(spec.source or spec.name)}</code> "
        f"({len(ids)} runs: {_e(len(spec.methods))} methods x "
        + (
            f"each method's masks ({_e(len(spec.all_masks))} in all)"
            if spec.per_method
            else f"{_e(len(spec.masks))} masks"
        )
        + f" x {_e(len(spec.buffers))} buffers x {_e(len(spec.seeds))} seeds, matched by run id, the hash of each "
        "resolved config and seed).</p>"
        f"<p>Registry query (Python):</p><pre>{_e(python)}</pre>"
        f"<details><summary>the same as SQL (the id of every run the figures and tables use)</summary>"
        f"<pre>{_e(sql)}</pre></details>"
        "<p>Accuracy matrices, per-class confidence and the confidence histograms of these runs are in the "
        "tables <code>accuracy</code>, <code>confidence</code> and <code>confidence_histograms</code>, by run id.</p>"
    )


def report_page(
    spec: ExperimentSpec, store: Store, root: Path, written: Sequence[Path], command: str, generated_at: str
) -> tuple[str, dict]:
    """The HTML of the page of ``spec`` (whose files ``written`` were rendered), and its index entry."""
    df = experiment_runs(spec, store)
    coverage = run_coverage(spec, store)
    ids = coverage["run_id"].tolist()
    n_done = int((coverage["status"] == "finished").sum())
    title = spec.title or spec.name
    body = [
        f'<nav><a href="{INDEX}">← all reports</a></nav>',
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">report <code>{_e(spec.name)}</code> · kind {_e(spec.kind)} · benchmark '
        f"{_e(spec.benchmark)} · {n_done} of {len(coverage)} runs finished · generated {_e(generated_at)}</p>",
    ]
    if spec.description:
        body.append(f"<p>{_e(spec.description)}</p>")
    if not written:
        body.append(
            '<p class="note">Nothing rendered: none of the runs this report needs are finished '
            f"(compute them with <code>clbench report {_e(spec.name)}</code>).</p>"
        )
    figures = _figures(written, root)
    if figures:
        body += ["<h2>Figures</h2>", figures]
    if spec.kind in ("forgetting", "tiny-buffer", "methods", "rivals") and not df.empty:
        from clbench.reports import tables  # noqa: PLC0415

        body += ["<h2>Tables</h2>", tables.to_html(tables.summary(spec, df), spec), _table_files(written, root)]
    plotted = _plotted_numbers(spec, df) if not df.empty else ""
    if plotted:
        body += ["<h2>Plotted numbers</h2>", plotted]
    comparison = _comparison(spec, df, store)
    if comparison:
        body += ["<h2>Paired comparison</h2>", comparison]
    body += [
        "<h2>Runs behind each cell</h2>",
        _coverage(spec, coverage, df),
        "<h2>Software and device</h2>",
        _provenance(store, df["run_id"].tolist()),
        "<h2>How this was made</h2>",
        _how_made(spec, store, ids, command, df["run_id"].tolist()),
    ]
    entry = {
        "title": title,
        "kind": spec.kind,
        "benchmark": spec.benchmark,
        "page": f"{spec.name}.html",
        "finished": n_done,
        "expected": len(coverage),
        "generated_at": generated_at,
        "files": [_href(p, root) for p in written],
    }
    return _page(f"{title} · clbench", "\n".join(body)), entry


def index_page(entries: Mapping[str, dict], generated_at: str) -> str:
    rows = []
    for name, e in sorted(entries.items()):
        figures = " · ".join(
            f'<a href="{f}">{_e(Path(f).name)}</a>' for f in e.get("files", []) if f.endswith((".png", ".md"))
        )
        rows.append(
            [
                f'<a href="{quote(e["page"])}">{_e(name)}</a>',
                _e(e["title"]),
                _e(e["kind"]),
                _e(e["benchmark"]),
                f"{_e(e['finished'])} of {_e(e['expected'])}",
                figures or "-",
                _e(e["generated_at"]),
            ]
        )
    body = [
        "<h1>clbench reports</h1>",
        f'<p class="meta">{len(rows)} report{"s" if len(rows) != 1 else ""} · index generated {_e(generated_at)}</p>',
        "<p>The general masked softmax (Kim, Kwon &amp; Kim, arXiv 2309.14808) in replay-based continual "
        "learning: each report's figures and tables, the runs behind them and how they were made.</p>",
        _table(
            ["report", "title", "kind", "benchmark", "runs finished", "figures and tables", "generated"],
            rows,
            numeric=(4,),
        ),
    ]
    return _page("clbench reports", "\n".join(body))


# ---------------------------------------------------------------------------------------------
# Writing


def check_html_root(root: str | Path) -> Path:
    """``root`` if an HTML report can be written there (it, or its nearest existing parent, is a
    writable folder); else a one-line ``ValueError``. Creates nothing."""
    root = Path(root)
    probe = root
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"cannot write the HTML report into {root}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the HTML report into {root}: {probe} is not writable")
    for name in (INDEX, MANIFEST):
        if (root / name).is_dir():
            raise ValueError(f"cannot write the HTML report into {root}: {root / name} is a folder")
    return root


def default_command(spec: ExperimentSpec, db_label: str, out_dir: Path) -> str:
    """The ``clbench report`` command that renders this page again, from the same database."""
    return shlex.join(
        [
            "clbench",
            "report",
            spec.source if "/" in spec.source else spec.name,
            "--no-run",
            "--html",
            "--out",
            str(out_dir),
            "--db",
            db_label,
        ]
    )


def write_html(
    specs: Sequence[ExperimentSpec],
    db: Db,
    root: str | Path = "reports",
    *,
    out_dirs: Mapping[str, str | Path] | None = None,
    commands: Mapping[str, str] | None = None,
) -> list[Path]:
    """Render every spec from the finished runs in ``db`` (into ``out_dirs[name]``, default
    ``root/NAME``), write its page ``root/NAME.html`` and rebuild ``root/index.html`` from
    ``root/index.json``. ``commands[name]`` is the command shown on the page (default: the
    ``clbench report`` command that renders it again). Returns every file written."""
    root = check_html_root(root)

    def work(store: Store) -> list[Path]:
        generated_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        written_all: list[Path] = []
        entries = {}
        pages = {}
        for spec in specs:
            out_dir = Path(out_dirs[spec.name]) if out_dirs and spec.name in out_dirs else root / spec.name
            written = render_report(spec, store, out_dir)
            command = (commands or {}).get(spec.name) or default_command(spec, store.where, out_dir)
            pages[spec.name], entries[spec.name] = report_page(spec, store, root, written, command, generated_at)
            written_all += written
        root.mkdir(parents=True, exist_ok=True)
        for name, text in pages.items():
            path = root / f"{name}.html"
            path.write_text(text, encoding="utf-8")
            written_all.append(path)
        manifest = _read_manifest(root)
        manifest.update(entries)
        manifest = {k: v for k, v in manifest.items() if (root / v["page"]).is_file()}
        (root / MANIFEST).write_text(json.dumps({"reports": manifest}, indent=1) + "\n", encoding="utf-8")
        (root / INDEX).write_text(index_page(manifest, generated_at), encoding="utf-8")
        return written_all + [root / MANIFEST, root / INDEX]

    return with_store(db, work)


def _read_manifest(root: Path) -> dict:
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        reports = data["reports"]
        return {k: v for k, v in reports.items() if isinstance(v, dict) and {"page", "title", "kind"} <= set(v)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


__all__ = ["check_html_root", "index_page", "report_page", "write_html"]

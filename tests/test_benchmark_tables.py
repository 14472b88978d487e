"""The performance numbers in README.md and benchmarks/README.md come from files the benchmarks wrote:
the tables there are generated from ``benchmarks/results/*.json`` (``benchmarks/tables.py``), and
these tests fail when the text and the files disagree, when a committed file is a toy-size run, or
when a benchmark script does not write its file."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import tables  # noqa: E402

# Scripts under benchmarks/ that are not performance benchmarks.
NOT_BENCHMARKS = {"_common", "tables", "seq_fmnist_table"}


def record(name: str, shown: str = "3.83x (31.49 s / 8.23 s)", met: bool | None = False, quick: bool = False) -> dict:
    """A results record as ``_common.write_result`` writes it."""
    return {
        "benchmark": name,
        "command": f".venv/bin/python benchmarks/{name}.py",
        "date": "2026-12-06 10:00:00 +0000",
        "machine": "machine: 2 CPU cores (test)",
        "quick": quick,
        "load_average_end": [0.5, 0.4, 0.3],
        "targets": [
            {
                "target": "group >= 5x its runs one after another",
                "measured": 3.83,
                "unit": "x",
                "shown": shown,
                "met": met,
                "why": "",
            }
        ],
        "data": {"group_s": [8.23]},
        "output": f"machine: test\ntarget: ... {shown}\n",
    }


def a_copy_of_the_readmes(tmp_path: Path) -> tuple[Path, Path]:
    """The two READMEs under a fresh root, and an empty results folder beside them."""
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    for readme in tables.SECTIONS:
        shutil.copy(REPO / readme, root / readme)
    results = root / "benchmarks" / "results"
    results.mkdir()
    return root, results


def test_the_readmes_tables_are_the_ones_the_results_files_give():
    stale = tables.stale_readmes(str(REPO), tables.RESULTS_DIR)
    assert stale == [], f"{stale} differ from benchmarks/results/*.json: run benchmarks/tables.py --write"


def test_a_changed_results_file_or_a_hand_edit_makes_the_readmes_stale(tmp_path):
    root, results = a_copy_of_the_readmes(tmp_path)
    (results / "lockstep.json").write_text(json.dumps(record("lockstep")))
    loaded = tables.load_results(str(results))
    for readme in tables.SECTIONS:  # what `tables.py --write` does
        path = root / readme
        path.write_text(tables.render(path.read_text(), readme, loaded))
    assert tables.stale_readmes(str(root), str(results)) == []
    text = (root / "README.md").read_text()
    assert "3.83x (31.49 s / 8.23 s)" in text and "| NOT met |" in text
    assert "no results file yet (`benchmarks/results/sweep.json`)" in text

    # The benchmark is run again and measures something else: both READMEs are out of date.
    (results / "lockstep.json").write_text(json.dumps(record("lockstep", shown="5.10x (42.0 s / 8.2 s)", met=True)))
    assert tables.stale_readmes(str(root), str(results)) == list(tables.SECTIONS)

    # Back to the file the text was made from, then a number typed into the table by hand.
    (results / "lockstep.json").write_text(json.dumps(record("lockstep")))
    (root / "README.md").write_text(text.replace("3.83x (31.49 s / 8.23 s)", "5.68x (31.49 s / 8.23 s)"))
    assert tables.stale_readmes(str(root), str(results)) == ["README.md"]


def test_the_generated_text_names_the_verdict_from_the_file(tmp_path):
    met = tables.performance_table({"lockstep": record("lockstep", met=True)})
    missed = tables.performance_table({"lockstep": record("lockstep", met=False)})
    unchecked = tables.performance_table(
        {
            "gpu": {
                **record("gpu", met=None),
                "targets": [{**record("gpu")["targets"][0], "met": None, "why": "ran on cpu"}],
            }
        }
    )
    assert "| met |" in met and "| NOT met |" in missed and "| unchecked: ran on cpu |" in unchecked
    toy = tables.performance_table({"lockstep": record("lockstep", met=True, quick=True)})
    assert "not a measurement" in toy and "| met |" not in toy


def test_a_readme_without_its_markers_is_refused():
    with pytest.raises(ValueError, match="results table markers are missing"):
        tables.render("# README\n\nno table here\n", "README.md", {})


def test_a_results_file_that_is_not_one_is_named(tmp_path):
    (tmp_path / "lockstep.json").write_text(json.dumps({**record("lockstep"), "targets": [{"target": "x"}]}))
    with pytest.raises(tables.ResultsProblem, match="lockstep.json: a target without measured"):
        tables.load_results(str(tmp_path))


def test_committed_results_files_are_measurements_of_listed_benchmarks():
    names = {b.name for b in tables.BENCHMARKS}
    for name, rec in tables.load_results(tables.RESULTS_DIR).items():
        if name.startswith(tables.README_RESULTS + "/"):  # the README's accuracy tables
            assert not rec["quick"] and rec["benchmark"] == name.split("/")[1]
            continue
        assert name in names, f"benchmarks/results/{name}.json: no benchmark of that name in tables.BENCHMARKS"
        assert rec["benchmark"] == name
        assert not rec["quick"], f"benchmarks/results/{name}.json is a toy-size (--quick) run, not a measurement"


def test_every_benchmark_script_writes_its_results_file_and_has_rows_in_the_tables():
    listed = {b.name: b for b in tables.BENCHMARKS}
    scripts = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem not in NOT_BENCHMARKS)
    assert sorted(listed) == scripts
    for name in scripts:
        source = (REPO / "benchmarks" / f"{name}.py").read_text()
        assert re.search(rf'write_result\(\s*"{name}"', source), f"benchmarks/{name}.py does not write {name}.json"
        assert listed[name].command == f"benchmarks/{name}.py"


def test_a_quick_benchmark_writes_a_correct_file_of_what_it_printed(tmp_path):
    """benchmarks/planning.py --quick (1,000 runs): the file holds its targets, verdicts and output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CLBENCH_DB", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "planning.py"), "--quick", "--results-dir", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (rec,) = tables.load_results(str(tmp_path)).values()  # the format is checked as it loads
    assert rec["benchmark"] == "planning" and rec["quick"]
    assert "--quick" in rec["command"] and "--results-dir" in rec["command"]
    first, per_step = rec["targets"]
    assert first["met"] in (True, False) and first["measured"] > 0
    assert f"target: {first['target']}: {first['shown']}, {tables.verdict_text(first)}" in done.stdout
    assert rec["output"].strip() and rec["output"] in done.stdout  # everything printed, verbatim
    assert f"wrote {tmp_path}" not in rec["output"]  # the line saying where it wrote comes after
    assert len(rec["data"]["dry_run_fresh_s"]) == 1 and per_step["met"] is None


def test_the_readme_results_table_and_the_masks_gains_come_from_its_file(tmp_path):
    row = dict(class_il_std=1.0, task_il_mean=98.0, task_il_std=0.2, wall_s=8.7, class_il=[], task_il=[])
    rows = [
        {"method": "er", "mask": "none", "class_il_mean": 73.25, **row},
        {"method": "er", "mask": "-inf", "class_il_mean": 74.0, **row},
        {"method": "sgd", "mask": "none", "class_il_mean": 19.9, **row},
    ]
    rec = {**record("seq_fmnist_table"), "targets": [], "data": {"seeds": 10, "rows": rows}}
    (tmp_path / "readme").mkdir()
    (tmp_path / "readme" / "seq_fmnist_table.json").write_text(json.dumps(rec))
    loaded = tables.load_results(str(tmp_path))
    text = tables.results_table(loaded)
    assert "| er | -inf | 74.00 ± 1.00 | 98.00 ± 0.20 | 8.7 |" in text
    assert "+0.75 (er, against a population std over seeds of 1.00 unmasked)" in text and "(sgd" not in text
    assert "No results file yet" in tables.results_table({})


@pytest.mark.parametrize("script", ["checkpoint", "methods_step", "determinism", "eval_every"])
def test_a_benchmark_script_runs_at_toy_size(script, tmp_path):
    """Each script that trains runs --quick and writes its results file: a benchmark cannot rot
    unnoticed (checkpoint.py read the checkpoint file unsealed and crashed on the quiet machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CLBENCH_DB", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--quick", "--results-dir", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (rec,) = tables.load_results(str(tmp_path)).values()
    assert rec["benchmark"] == script and rec["quick"] and rec["targets"]


def test_the_readmes_prose_on_the_machines_quotes_the_results_files():
    """The paragraph under the performance table quotes numbers of the files it names: each is the
    file's own (a re-measured file fails here until the prose follows it)."""
    text = " ".join((REPO / "README.md").read_text().split())
    start = text.index("These files come from")
    prose = text[start : text.index("**The GPU check", start)]
    results = tables.load_results(tables.RESULTS_DIR)

    def shown(name: str, starts: str) -> str:
        (entry,) = [t for t in results[name]["targets"] if t["target"].startswith(starts)]
        return entry["shown"]

    group = shown("lockstep", "10-seed er group").split(" (")[0]
    assert f"took {group} on the AVX-512 EPYC (`lockstep.json`" in prose
    without = shown("eval_every", "without it").split("/ ")[0].split("(")[1]
    assert f"{without.strip()} on the AVX2 EPYC (`eval_every.json`" in prose
    for starts, label in (
        ("ER, 10 seeds", "the ER group"),
        ("ER, one run", "one ER run"),
        ("DER++ buffer 200", "the fig4-shaped DER++ group"),
    ):
        assert f"{label} {shown('versus', starts).split(' (')[0]}" in prose
    assert shown("versus", "results unchanged").startswith("largest |FAA this - base| 0.0000")


def test_the_readmes_determinism_table_is_the_one_its_results_file_printed():
    """The README shows determinism.py's table row for row (Markdown's escaped pipes aside)."""
    output = tables.load_results(tables.RESULTS_DIR)["determinism"]["output"].splitlines()
    printed = [line for line in output if line.startswith("| ") or line.startswith("|---")]
    readme = (REPO / "README.md").read_text().replace("\\|", "|").splitlines()
    start = readme.index(printed[0])
    assert readme[start : start + len(printed)] == printed


def test_every_results_file_quote_in_the_readmes_is_what_the_file_shows():
    """Prose quotes a measurement as `benchmarks/results/NAME.json`: "SHOWN": SHOWN must be one of that
    file's results, verbatim (a re-measured file fails here until the prose follows it)."""
    results = tables.load_results(tables.RESULTS_DIR)
    quotes = []
    for readme in ("README.md", "benchmarks/README.md"):
        text = " ".join((REPO / readme).read_text().split())
        quotes += re.findall(r'`benchmarks/results/(\w+)\.json`: "([^"]+)"', text)
    assert len(quotes) >= 3
    for name, quoted in quotes:
        assert quoted in [t["shown"] for t in results[name]["targets"]], (name, quoted)

"""The performance tables of README.md and benchmarks/README.md, generated from the results files.

Each benchmark writes ``benchmarks/results/NAME.json`` (``_common.write_result``): the command that
ran, when, on what machine, each target with the number it measured and its verdict, and what the
script printed. The tables in the two READMEs are text between marker comments that this script
writes from those files, never typed by hand; ``tests/test_benchmark_tables.py`` fails when the
text in a README and the files disagree. A benchmark without a results file yet gets one row
saying so.

Usage: python benchmarks/tables.py            print what the READMEs' generated sections would be
       python benchmarks/tables.py --write    rewrite them in place
       python benchmarks/tables.py --check    exit 1 (naming the README) when they differ from the files

Torch-free: it reads JSON and writes Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")


@dataclass(frozen=True)
class Benchmark:
    name: str  # the results file is benchmarks/results/NAME.json
    command: str  # what the lead runs on a quiet machine to write it
    measures: str


# In the tables' order. Every script under benchmarks/ that measures performance is listed here
# (tests/test_benchmark_tables.py checks that none is missing).
BENCHMARKS = (
    Benchmark(
        "lockstep",
        "benchmarks/lockstep.py",
        "10 seeds of ER on seq-fmnist as one group against the same "
        "10 runs one after another (groups of one), alternating repeats",
    ),
    Benchmark(
        "scaling",
        "benchmarks/scaling.py",
        "wall per run for groups of 1 .. 80 runs; the 10-run group "
        "with buffers 10 .. 5120, and the buffer's own per-step work",
    ),
    Benchmark(
        "sweep",
        "benchmarks/sweep.py",
        "the fig4 sweep (DER++, baseline + 8 masks, 10 seeds, buffer 200: "
        "90 runs) through `clbench run` into a fresh SQLite registry",
    ),
    Benchmark(
        "planning",
        "benchmarks/planning.py",
        "planning a 100,000-run sweep: `clbench run --dry-run` end to "
        "end, and `sweep_configs` + `plan_sweep` in one process",
    ),
    Benchmark(
        "startup",
        "benchmarks/startup.py",
        "start-up of commands that train nothing: `clbench --help` and `clbench runs` on a 1,000-run "
        "database, median of fresh processes, beside an earlier commit's",
    ),
    Benchmark(
        "eval_every",
        "benchmarks/eval_every.py",
        "the 10-seed ER group on seq-fmnist with `--eval-every 50` on 1,000 samples per seen task against "
        "the group without it, and without it against an earlier commit's (`--baseline REV`), fresh processes",
    ),
    Benchmark(
        "efficiency",
        "benchmarks/efficiency.py",
        "achieved FLOP/s against the matmul peak measured in the "
        "same run; where a step's time goes, by phase; the layers' matrix products alone",
    ),
    Benchmark(
        "threads",
        "benchmarks/threads.py",
        "the 10-seed ER group under torch's OpenMP settings and under "
        "`clbench run`'s own thread choice: alone, two processes at once, beside a busy process at nice 19",
    ),
    Benchmark(
        "checkpoint",
        "benchmarks/checkpoint.py",
        "a 10-run DER++ group on seq-fmnist without checkpoints "
        "and with one at every task end and every N seconds within a task (a timer that fires), alternating "
        "repeats; size and write time of one checkpoint",
    ),
    Benchmark(
        "distributed",
        "benchmarks/distributed.py",
        "a 40-run seq-fmnist sweep through the local executor "
        "and the Ray executor on a local Ray cluster; Ray's overhead per group",
    ),
    Benchmark(
        "determinism",
        "benchmarks/determinism.py",
        "one ER run on seq-fmnist alone twice, in a group of "
        "10, with 2 threads: bit-identical or not, and by how much it moves",
    ),
    Benchmark(
        "memory",
        "benchmarks/memory.py",
        "clbench's memory estimate of a group against the peak resident "
        "memory of real groups (MLP and ResNet-18), fresh processes",
    ),
    Benchmark(
        "versus",
        "benchmarks/versus.py",
        "this tree's trainer against an earlier commit's (8190bbb), alternating fresh processes; results compared",
    ),
    Benchmark(
        "compile_step",
        "benchmarks/compile_step.py",
        "`torch.compile` of the MLP step's forward + loss against eager, groups of 1 and 10",
    ),
    Benchmark(
        "resnet",
        "benchmarks/resnet.py",
        "reduced ResNet-18 on seq-cifar10-shaped synthetic data: images/s of a group of 4 against 4 single runs",
    ),
    Benchmark(
        "methods_step",
        "benchmarks/methods_step.py",
        "each method's 10-seed lockstep group on seq-fmnist (MLP): training time per step against ER's, "
        "with the extra work each does",
    ),
    Benchmark(
        "methods_resnet",
        "benchmarks/methods_resnet.py",
        "each replay method's ResNet-18 lockstep group against ER's (stream images/s)",
    ),
    Benchmark(
        "gpu",
        "benchmarks/gpu.py",
        "every GPU check in one call: ResNet-18 groups of 1, 4, 10, 20 (images/s, "
        "peak memory against clbench's estimate), each method against ER, kill -9 and resume on CUDA, a "
        "deterministic re-run, seq-cifar10 through the real loaders, a Ray group on a fractional GPU",
    ),
)

# The generated sections: (README, section) -> (begin marker, end marker).
BEGIN = "<!-- {what}: generated by benchmarks/tables.py from benchmarks/results/*.json; do not edit by hand -->"
END = "<!-- end of {what} -->"
SECTIONS = {
    "README.md": ("results table", "performance table"),
    os.path.join("benchmarks", "README.md"): ("summary table", "latest outputs"),
}


# The README's results (accuracy) tables: written by benchmarks/seq_fmnist_table.py into this
# subfolder of the results, so that they are not taken for performance benchmarks.
README_RESULTS = "readme"


class ResultsProblem(ValueError):
    """A results file that cannot be read as this format (one line naming it)."""


def load_results(directory: str = RESULTS_DIR) -> dict[str, dict]:
    """Benchmark name -> its results record, for every ``NAME.json`` in ``directory`` (none: {}),
    and ``readme/NAME`` for the result tables of the README in ``directory/readme/``."""
    out = {}
    for folder, prefix in ((directory, ""), (os.path.join(directory, README_RESULTS), README_RESULTS + "/")):
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            if not entry.endswith(".json"):
                continue
            path = os.path.join(folder, entry)
            try:
                with open(path) as fh:
                    record = json.load(fh)
            except (OSError, ValueError) as exc:
                raise ResultsProblem(f"{path}: not a readable results file ({exc})") from None
            check_record(record, path)
            out[prefix + entry[: -len(".json")]] = record
    return out


def check_record(record: Mapping, where: str) -> None:
    """Raise ``ResultsProblem`` naming ``where`` when ``record`` is not a results record."""
    for key in ("benchmark", "command", "date", "machine", "quick", "targets", "data", "output"):
        if key not in record:
            raise ResultsProblem(f"{where}: no {key!r} (written by something else than _common.write_result?)")
    for entry in record["targets"]:
        missing = [k for k in ("target", "measured", "unit", "shown", "met", "why") if k not in entry]
        if missing:
            raise ResultsProblem(f"{where}: a target without {', '.join(missing)}: {entry}")
        if entry["met"] not in (True, False, None):
            raise ResultsProblem(
                f"{where}: target {entry['target']!r} has met={entry['met']!r}: give true, false or null (not judged)"
            )


def verdict_text(entry: Mapping) -> str:
    """A target's verdict as the tables print it."""
    if entry["met"] is None:
        return f"unchecked: {entry['why']}" if entry["why"] else "measured (no target)"
    text = "met" if entry["met"] else "NOT met"
    return f"{text}: {entry['why']}" if entry["why"] else text


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def performance_table(results: Mapping[str, dict]) -> str:
    """One row per target (or measurement) of every benchmark, in ``BENCHMARKS``'s order; a
    benchmark without a results file gets one row saying so; below, when and where each file was
    written."""
    rows, notes = [], []
    for bench in BENCHMARKS:
        record = results.get(bench.name)
        command = f"`{bench.command}`"
        if record is None:
            rows.append(
                [
                    bench.measures,
                    f"no results file yet (`benchmarks/results/{bench.name}.json`)",
                    command,
                    "not measured",
                ]
            )
            continue
        toy = " (toy size, `--quick`: not a measurement)" if record["quick"] else ""
        for entry in record["targets"]:
            verdict = "unchecked: toy size" if record["quick"] and entry["met"] is not None else verdict_text(entry)
            rows.append([entry["target"], entry["shown"] + toy, command, verdict])
        if not record["targets"]:
            rows.append([bench.measures, "see its output (`benchmarks/README.md`)" + toy, command, "no target"])
        load = record.get("load_average_end")
        notes.append(
            f"- `{bench.name}`: `{record['command']}`, {record['date']}; {record['machine']}"
            + (f"; load average at the end {load[0]:.2f} (1 min)" if load else "")
        )
    text = _table(["target", "measured", "command", "verdict"], rows)
    if notes:
        text += "\n\nWhere and when each results file was written:\n\n" + "\n".join(notes)
    return text


def latest_outputs(results: Mapping[str, dict]) -> str:
    """Each benchmark's printed output, verbatim from its results file."""
    parts = []
    for bench in BENCHMARKS:
        record = results.get(bench.name)
        parts.append(f"### {bench.name}\n")
        if record is None:
            parts.append(
                f"No results file yet: run `.venv/bin/python {bench.command}` (it writes "
                f"`benchmarks/results/{bench.name}.json`), then `.venv/bin/python benchmarks/tables.py "
                "--write`.\n"
            )
            continue
        body = "\n".join("    " + line if line else "" for line in record["output"].rstrip("\n").split("\n"))
        parts.append(f"    $ {record['command']}\n{body}\n")
    return "\n".join(parts).rstrip("\n")


def results_table(results: Mapping[str, dict]) -> str:
    """The README's seq-fmnist results table, from ``readme/seq_fmnist_table.json``: each row as the
    script measured it, the masks' gains computed from the same numbers, and where it was made."""
    record = results.get(f"{README_RESULTS}/seq_fmnist_table")
    if record is None:
        return (
            "No results file yet: run `.venv/bin/python benchmarks/seq_fmnist_table.py` (it writes "
            f"`benchmarks/results/{README_RESULTS}/seq_fmnist_table.json`), then "
            "`.venv/bin/python benchmarks/tables.py --write`."
        )
    data = record["data"]
    rows = [
        [
            r["method"],
            r["mask"],
            f"{r['class_il_mean']:.2f} ± {r['class_il_std']:.2f}",
            f"{r['task_il_mean']:.2f} ± {r['task_il_std']:.2f}",
            f"{r['wall_s']:.1f}",
        ]
        for r in data["rows"]
    ]
    text = _table(
        ["method", "mask", "class-IL FAA (%)", "task-IL FAA (%)", f"wall, {data['seeds']}-seed group (s)"], rows
    )
    by = {(r["method"], r["mask"]): r for r in data["rows"]}
    gains = [
        f"{by[(m, '-inf')]['class_il_mean'] - by[(m, 'none')]['class_il_mean']:+.2f} ({m}, against a population "
        f"std over seeds of {by[(m, 'none')]['class_il_std']:.2f} unmasked)"
        for m in dict.fromkeys(r["method"] for r in data["rows"])
        if (m, "-inf") in by and (m, "none") in by
    ]
    if gains:
        text += "\n\nClass-IL points gained by masking with m = -inf at buffer 200: " + "; ".join(gains) + "."
    load = record.get("load_average_end")
    text += (
        f"\n\nMade by `{record['command']}`, {record['date']}; {record['machine']}"
        + (f"; load average at the end {load[0]:.2f} (1 min)" if load else "")
        + "."
    )
    return text


GENERATORS = {
    "results table": results_table,
    "performance table": performance_table,
    "summary table": performance_table,
    "latest outputs": latest_outputs,
}


def render(text: str, readme: str, results: Mapping[str, dict]) -> str:
    """``text`` (the README ``readme``) with each generated section rewritten from ``results``.

    Raises ``ValueError`` when a section's markers are missing or out of order."""
    for what in SECTIONS[readme]:
        begin, end = BEGIN.format(what=what), END.format(what=what)
        i, j = text.find(begin), text.find(end)
        if i < 0 or j < i:
            raise ValueError(f"{readme}: the {what} markers are missing (want the lines {begin!r} ... {end!r})")
        text = text[: i + len(begin)] + "\n" + GENERATORS[what](results) + "\n" + text[j:]
    return text


def stale_readmes(repo: str = REPO, results_dir: str = RESULTS_DIR) -> list[str]:
    """The READMEs whose generated sections differ from what ``results_dir`` gives."""
    results = load_results(results_dir)
    stale = []
    for readme in SECTIONS:
        with open(os.path.join(repo, readme)) as fh:
            text = fh.read()
        if render(text, readme, results) != text:
            stale.append(readme)
    return stale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the READMEs' generated sections in place")
    mode.add_argument("--check", action="store_true", help="exit 1 when a README differs from the results files")
    ap.add_argument("--results-dir", default=RESULTS_DIR, help="where the NAME.json files are")
    args = ap.parse_args()
    try:
        results = load_results(args.results_dir)
        if args.check:
            stale = stale_readmes(REPO, args.results_dir)
            if stale:
                sys.exit(f"out of date with {args.results_dir}: {', '.join(stale)} (run benchmarks/tables.py --write)")
            print("the READMEs' performance tables agree with the results files")
            return
        for readme in SECTIONS:
            path = os.path.join(REPO, readme)
            with open(path) as fh:
                text = fh.read()
            new = render(text, readme, results)
            if args.write:
                if new != text:
                    tmp = f"{path}.tmp-{os.getpid()}"
                    with open(tmp, "w") as fh:
                        fh.write(new)
                    os.replace(tmp, path)
                    print(f"rewrote {readme}")
                else:
                    print(f"{readme}: unchanged")
            else:
                for what in SECTIONS[readme]:
                    print(f"--- {readme}: {what}\n{GENERATORS[what](results)}\n")
    except (ResultsProblem, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Every number in benchmarks/README.md's "Analysis of the 2026-11-24/25 runs" is backed by the
"Archive: the outputs of 2026-11-24/25" at the end of the same file (the scripts' printed outputs).

A number in the Analysis is backed when it is
  (a) a number of the Archive (equal in value: "46 s" is backed by "46.0"), or
  (b) in DERIVED: computed from Archive numbers by the formula given there, and it rounds to what
      the prose prints (the formula's inputs must be Archive numbers), or
  (c) in STRUCTURAL: a setting or a count (seeds, cores, group sizes, repeats), not a measurement.
Numbers that are parts of names are not numbers here (IGNORED: commit hashes, "issue 10",
"benchmark 5", dates, "2048^3", "AVX-512", "ResNet-18", versions, "Author 2007" citations).

DERIVED and STRUCTURAL entries name their number by its place in the prose: a template in which
"{}" stands for the number. A template that no longer matches the Analysis fails the test too.

Small integers (2, 3, 10) occur all over the Archive, so (a) cannot tell a citation from a
coincidence; every percentage or ratio the Analysis computes is therefore in DERIVED, where its
arithmetic is checked whatever the Archive happens to contain.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "benchmarks" / "README.md"

ANALYSIS = "## Analysis of the 2026-11-24/25 runs"
ARCHIVE = "## Archive: the outputs of 2026-11-24/25"

# Digits that belong to a name, not to a number: blanked out before numbers are read.
IGNORED = [
    r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b",  # commit hashes: 8190bbb, e17312d
    r"\b[Ii]ssues? \d+",  # issue 10
    r"\b[Bb]enchmarks? \d+",  # benchmark 5 (the Archive's "### 5 efficiency")
    r"\b\d{4}-\d{2}-\d{2}(?:/\d{2})?",  # dates: 2026-11-24/25
    r"\b\d+\^\d+",  # shapes: 2048^3
    r"\bAVX-?\d+\w*",  # AVX-512, AVX2
    r"\b[A-Z][A-Za-z]*-\d+\b",  # names: ResNet-18
    r"\b\d+\.\d+\.\d+\S*",  # versions: torch 2.13.0
    r"\b[A-Z][a-z]+(?: (?:&|and) [A-Z][a-z]+)?(?: et al\.)? \d{4}\b",  # citations: Roy & Vetterli 2007
]

# A number: digits, maybe a decimal part; units may follow (s, us, %, x, GFLOP/s), nothing may
# precede it that makes it part of a word ("fig4", "er10", the second 32 of "32x32").
NUMBER = r"(?<![\w.])\d+(?:\.\d+)?(?![\d])"
SLOT = r"(\d+(?:\.\d+)?)"


@dataclass(frozen=True)
class Derived:
    where: str  # the prose around the number, "{}" standing for it
    shown: str  # the number as the prose prints it
    inputs: str  # numbers of the Archive the formula takes, in order, space-separated
    formula: Callable[..., float]
    why: str


@dataclass(frozen=True)
class Structural:
    where: str
    shown: str
    why: str


# The formulas of DERIVED.
def same(x: float) -> float:
    return x  # a number of the Archive, rounded


def total(*xs: float) -> float:
    return sum(xs)


def times(a: float, b: float) -> float:
    return a * b


def minutes(seconds: float) -> float:
    return seconds / 60


def cost(this: float, base: float) -> float:
    return 100 * (this / base - 1)  # the Archive's "cost against none": with over without, less 1, in %


def percent_of(part: float, whole: float) -> float:
    return 100 * part / whole


def share(back: float, fwd: float, step: float) -> float:
    return percent_of(back + fwd, step)  # forward + backward phases in % of the step


def distinct(slots: float, draw: float) -> float:
    return slots * (1 - (1 - draw / slots) ** 2)  # expected distinct slots in two draws without replacement


def rows_forwarded(batch: float, slots: float, draw: float) -> float:
    return batch + distinct(slots, draw)


def fewer_rows(batch: float, slots: float, draw: float, rows: float) -> float:
    return 100 - percent_of(rows_forwarded(batch, slots, draw), rows)


def sweep_cut(batch, slots, draw, rows, back, fwd, step) -> float:
    return fewer_rows(batch, slots, draw, rows) * share(back, fwd, step) / 100


def sweep_after(wall, *rows_and_phases) -> float:
    return wall * (1 - sweep_cut(*rows_and_phases) / 100)


def products_s(steps: float, *us_per_step: float) -> float:
    return steps * sum(us_per_step) / 1e6


def floor_s(steps, a, b, c, loading, evaluation) -> float:
    return products_s(steps, a, b, c) + loading + evaluation


def sweep_tflop(tflop: float, runs: float, group: float) -> float:
    return tflop * runs / group


def at_peak_s(tflop, runs, group, gflops) -> float:
    return sweep_tflop(tflop, runs, group) * 1000 / gflops


def mean_over(a: float, b: float, alone: float) -> float:
    return (a + b) / 2 / alone


def ratio(a: float, b: float) -> float:
    return a / b


def ray_gain(groups, local_s, rounds, ray_s, overhead_s) -> float:
    return groups * local_s / (rounds * (ray_s + overhead_s))  # 4 groups one after another / 2 at a time


ROWS = "10 200 128 266"  # benchmark 5, DER++: batch 10, buffer 200, replay minibatch 128, 266 rows a step
PHASES = "19.50 17.77 48.18"  # benchmark 5, DER++: backward, forward and loss, total (s)
PRODUCTS = "424 134 56"  # benchmark 5, ER: the three layers' products (us per step)

DERIVED = [
    # What the speed round did, lever by lever
    Derived("{} % on the ER group", "7", "8.05 7.51", cost, "benchmark 12, ER group: this over base"),
    Derived("{} % on one run", "11", "3.32 2.98", cost, "benchmark 12, ER one run: this over base"),
    Derived("{} % on DER++ (benchmark 12", "3", "47.49 46.20", cost, "benchmark 12, DER++: this over base"),
    Derived("hold about {} distinct rows", "174", "200 128", distinct, "200 (1 - (72/200)^2)"),
    Derived("forward {} rows per run instead", "184", "10 200 128", rows_forwarded, "batch 10 + the distinct"),
    Derived("(-{} % of the rows", "31", ROWS, fewer_rows, "1 - 184.08 / 266"),
    Derived("backward are {} % of a DER++ step", "77", PHASES, share, "benchmark 5, DER++ phases"),
    Derived("about -{} % of the sweep's time", "24", f"{ROWS} {PHASES}", sweep_cut, "fewer rows x their share"),
    Derived("sweep's time, {} -> ~", "360", "360.1", same, "benchmark 3's wall"),
    Derived(" -> ~{} s, still above 240 s", "274", f"360.1 {ROWS} {PHASES}", sweep_after, "the wall less the cut"),
    # Why the ER group is 8 s, not 4.5 s
    Derived("Why the ER group is {} s", "8", "8.23", same, "benchmark 1's median group wall"),
    Derived("buffer {}, the rest bookkeeping", "111", "61 50", total, "benchmark 5, ER: buffer insertion + sampling"),
    Derived("at the step's shapes, take {} us", "614", PRODUCTS, total, "benchmark 5, ER: the three products"),
    Derived("6000 x {} us =", "614", PRODUCTS, total, "the same sum"),
    Derived("6000 x 614 us = {} s", "3.7", f"6000 {PRODUCTS}", products_s, "steps x the products"),
    Derived("of evaluation: {} s is the floor", "4.5", f"6000 {PRODUCTS} 0.47 0.37", floor_s, "+ benchmark 1's"),
    # Why the fig4 sweep is 6 minutes, not 4
    Derived("the fig4 sweep is {} minutes", "6", "360.1", minutes, "benchmark 3's wall"),
    Derived("minutes, not {}", "4", "240", minutes, "the sweep's target of 240 s"),
    Derived("{} TFLOP per 10-run DER++ group", "6.06", "6.057", same, "benchmark 5"),
    Derived("{} TFLOP for the sweep", "54.5", "6.057 90 10", sweep_tflop, "90 runs in groups of 10"),
    Derived("that alone is {} s", "121", "6.057 90 10 449", at_peak_s, "the sweep's TFLOP at the oneDNN peak"),
    Derived("({} % of it)", "53", "240 449", percent_of, "benchmark 5: 784 -> 100 at 10 x 266, against the peak"),
    Derived("Forward + backward are {} % of the step", "77", PHASES, share, "benchmark 5, DER++ phases"),
    Derived("bring it to about {} s", "274", f"360.1 {ROWS} {PHASES}", sweep_after, "as in the lever table"),
    # Threads: quiet and shared machines
    Derived("both slow down {}x", "5", "45.9 46.0 8.5", mean_over, "benchmark 6, default: two at once / alone"),
    Derived("which costs {}x alone", "2", "17.9 8.5", ratio, "benchmark 6: PASSIVE alone / default alone"),
    # The Ray executor on two cores
    Derived("local executor about 4 x 8.5 = {} s", "34", "4 8.5", times, "4 groups at benchmark 6's two threads"),
    Derived("Ray about 2 x 13.1 = {} s", "26.2", "2 13.1", times, "2 rounds, each as long as its slower group"),
    Derived("benchmark 8), about {}x", "1.3", "4 8.5 2 13.1 0.039", ray_gain, "local / Ray, overhead included"),
    Derived("(4 x 10.8 = {} s)", "43.2", "4 10.8", times, "4 groups at benchmark 6's one thread"),
    Derived("43.2 s) it is about {}x", "1.6", "4 10.8 2 13.1 0.039", ray_gain, "one-thread local / Ray"),
]

STRUCTURAL = [
    Structural("the {}-core CPU", "2", "the machine's cores"),
    Structural("On this {}-core machine", "2", "the machine's cores"),
    Structural("on a quiet {}-core machine", "2", "the machine's cores"),
    Structural("shares the {} cores", "2", "the machine's cores"),
    Structural("the {}-seed ER group", "10", "seeds per group: the protocol's setting"),
    Structural("a {}-seed ER group", "10", "seeds per group: the protocol's setting"),
    Structural("best of {},", "3", "repeats of an ad hoc timing"),
    Structural("per step for {} runs", "10", "runs in the group timed"),
    Structural("group of {} 0.89x", "1", "group size of benchmark 13"),
    Structural("group of {} 0.96x", "10", "group size of benchmark 13"),
    Structural("The {}-run ER step", "10", "runs in benchmark 5's group"),
    Structural("{} x 614 us", "6000", "steps per run: 5 tasks of the protocol"),
    Structural("at {} rows per run", "20", "rows per run of an ER step: batch 10 + replay 10"),
    Structural("group of {} ResNets", "4", "runs in benchmark 4's group"),
    Structural("batch {} + replay", "32", "benchmark 4's batch"),
    Structural("+ replay {} of", "32", "benchmark 4's replay minibatch"),
    Structural("width {})", "64", "benchmark 4's ResNet width"),
    Structural("--group-size {}`", "1", "a command-line value: one run per group"),
    Structural("at nice {}", "19", "the busy process's nice level in benchmark 6"),
]


def section(text: str, heading: str) -> str:
    """The text under `heading`, up to the next heading of the same level."""
    start = text.index(heading + "\n")
    rest = text[start + len(heading) :]
    end = rest.find("\n## ")
    return rest if end < 0 else rest[:end]


def numbers(text: str) -> list[re.Match]:
    """The number tokens of `text`, with the digits of names blanked out first."""
    for pattern in IGNORED:
        text = re.sub(pattern, lambda m: " " * len(m.group()), text)
    return list(re.finditer(NUMBER, text))


def as_shown(value: float, shown: str) -> str:
    """`value` rounded (half up) to as many decimals as `shown` prints."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return str(Decimal(repr(value)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def template_matches(text: str, where: str) -> list[re.Match]:
    return list(re.finditer(re.escape(where).replace(re.escape("{}"), SLOT), text))


def texts() -> tuple[str, str]:
    readme = README.read_text()
    analysis = " ".join(section(readme, ANALYSIS).split())  # line breaks as spaces
    return analysis, section(readme, ARCHIVE)


def archive_numbers(archive: str) -> set[Decimal]:
    return {Decimal(m.group()) for m in numbers(archive)}


def test_both_sections_exist_and_the_archive_holds_benchmarks_1_to_13():
    readme = README.read_text()
    assert ANALYSIS in readme and ARCHIVE in readme
    assert readme.index(ANALYSIS) < readme.index(ARCHIVE)
    archive = section(readme, ARCHIVE)
    assert [int(n) for n in re.findall(r"^### (\d+) ", archive, re.M)] == list(range(1, 14))


def test_the_analysis_cites_only_benchmarks_of_the_archive():
    analysis, archive = texts()
    archived = {int(n) for n in re.findall(r"^### (\d+) ", archive, re.M)}
    cited = {int(n) for n in re.findall(r"\b[Bb]enchmarks? (\d+)", analysis)}
    assert cited and cited <= archived, f"cited but not archived: {sorted(cited - archived)}"


def test_derived_numbers_are_computed_from_the_archive():
    analysis, archive = texts()
    archived = archive_numbers(archive)
    problems = []
    for d in DERIVED:
        missing = [x for x in d.inputs.split() if Decimal(x) not in archived]
        if missing:
            problems.append(f"{d.where!r}: inputs not in the Archive: {missing}")
            continue
        computed = as_shown(d.formula(*map(float, d.inputs.split())), d.shown)
        if computed != d.shown:
            problems.append(f"{d.where!r}: {d.why}: computes {computed}, the table says {d.shown}")
        found = template_matches(analysis, d.where)
        if not found:
            problems.append(f"{d.where!r}: not in the Analysis (prose changed? update DERIVED)")
        for m in found:
            if m.group(1) != computed:
                problems.append(f"{d.where!r}: the prose prints {m.group(1)}, the Archive gives {computed} ({d.why})")
    assert not problems, "derived numbers that do not follow from the Archive:\n" + "\n".join(problems)


def test_structural_entries_are_in_the_analysis():
    analysis, _ = texts()
    problems = []
    for s in STRUCTURAL:
        found = template_matches(analysis, s.where)
        if not found:
            problems.append(f"{s.where!r}: not in the Analysis (prose changed? update STRUCTURAL)")
        problems += [f"{s.where!r}: prints {m.group(1)}, listed as {s.shown}" for m in found if m.group(1) != s.shown]
    assert not problems, "\n".join(problems)


def test_every_number_of_the_analysis_is_backed_by_the_archive():
    analysis, archive = texts()
    archived = archive_numbers(archive)
    listed = [(m.start(1), m.end(1)) for e in [*DERIVED, *STRUCTURAL] for m in template_matches(analysis, e.where)]
    tokens = numbers(analysis)
    assert len(tokens) > 100, "the Analysis should hold many numbers; is the section found?"
    unbacked = [
        f"{m.group()!r} in ...{analysis[max(0, m.start() - 50) : m.end() + 30]}..."
        for m in tokens
        if Decimal(m.group()) not in archived and not any(a <= m.start() and m.end() <= b for a, b in listed)
    ]
    assert not unbacked, (
        f"{len(unbacked)} number(s) in the Analysis neither in the Archive, nor in DERIVED, nor in STRUCTURAL:\n"
        + "\n".join(unbacked)
    )

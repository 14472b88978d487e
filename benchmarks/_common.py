"""Shared helpers of the benchmarks: the machine line, timing, the matmul peak, tables, results files.

The machines these run on are shared: every benchmark prints the load average before and after,
and compares variants side by side in the same invocation (ratios of medians over repeats).

Every benchmark writes what it measured to ``benchmarks/results/NAME.json`` (``write_result``): its
targets, each judged from the number it printed, its raw numbers and its whole printed output. The
READMEs' performance tables are generated from those files (``benchmarks/tables.py``). ``--quick``
runs a script at a toy size, to check that it runs and writes a correct file; its file goes to
``benchmarks/results/quick/`` (not committed), never over a real measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as `python benchmarks/NAME.py` from anywhere, installed or not
    sys.path.insert(0, REPO)

from benchmarks.tables import RESULTS_DIR, check_record  # noqa: E402  (after the path above)
from clbench.engine.environment import cpu_model  # noqa: E402
from clbench.sweep.executors.threads import usable_cpu_cores  # noqa: E402

QUICK_DIR = os.path.join(RESULTS_DIR, "quick")  # where --quick runs write (ignored by git and the tables)


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "avx512" if "avx512f" in flags else ("avx2" if "avx2" in flags else "")
    except OSError:
        pass
    return ""


def machine_line(device: str = "cpu") -> str:
    cores = usable_cpu_cores()
    cpu = f"{cpu_model()}, {cpu_flags()}".rstrip(", ")
    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(0)})"
    return (
        f"machine: {cores} CPU cores ({cpu}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"device {dev}, python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )


def load_line(cores: int | None = None) -> str:
    """The load average now, with a warning when other processes compete for the CPU."""
    cores = cores or usable_cpu_cores()
    load = os.getloadavg()
    line = f"load average at the end: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)"
    if load[1] > cores + 0.5:
        line += f" > {cores} cores: other processes competed for the CPU, absolute times are inflated"
    return line


def base_parser(description: str, repeats: int = 1) -> argparse.ArgumentParser:
    """The options most benchmarks take: ``--repeats``, ``--device``, ``--threads``, and
    ``output_options``'s; parse them with ``begin``."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--repeats", type=int, default=repeats, help="repeats of each measurement (medians are reported)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return output_options(ap)


def output_options(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--quick`` and ``--results-dir``, which every benchmark takes."""
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a toy size, to check that the script runs and writes its results file (not a measurement; "
        "the file goes to benchmarks/results/quick/)",
    )
    ap.add_argument(
        "--results-dir",
        default=None,
        help="where NAME.json is written (default: benchmarks/results, or benchmarks/results/quick with --quick)",
    )
    return ap


class _Transcript:
    """Standard output, also kept: what the script printed goes into its results file. Anything
    else asked of it (``encoding``, ``isatty``, ``fileno``, ``buffer``) is the real stream's."""

    def __init__(self, stream) -> None:
        self.stream, self.parts = stream, []

    def __getattr__(self, name: str):
        return getattr(self.stream, name)

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def text(self) -> str:
        return "".join(self.parts)


def begin(ap: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the options, keep what the script prints from here on (for its results file), set
    torch's threads (``--threads``) and print the machine line."""
    args = ap.parse_args(argv)
    if not isinstance(sys.stdout, _Transcript):
        sys.stdout = _Transcript(sys.stdout)
    setup(args)
    print(machine_line(getattr(args, "device", "cpu")), flush=True)
    return args


def chosen(text: str, valid, what: str) -> list[str]:
    """The comma-separated names of ``text``, each one of ``valid``; else exit naming the valid ones."""
    names = text.split(",")
    bad = [n for n in names if n not in valid]
    if bad:
        sys.exit(f"unknown {what} {bad[0]!r}: valid are {', '.join(valid)}")
    return names


def setup(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str = "cpu") -> tuple[object, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def onednn_matmul_available() -> bool:
    from clbench.lockstep.backbones import _ONEDNN

    return _ONEDNN


def matmul_peak(device: str = "cpu", n: int = 2048, repeats: int = 7) -> dict[str, float]:
    """Measured fp32 matmul throughput (GFLOP/s, median of ``repeats``) of an n x n x n product.

    On CPU both kernels torch can reach: MKL (``torch.mm``) and oneDNN (what clbench's MLP uses for
    its large GEMMs); on CUDA ``torch.mm`` with TF32 off (full fp32).
    """
    out: dict[str, float] = {}
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    kernels: dict[str, Callable[[], object]] = {}
    if str(device).startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        kernels["torch.mm (cuBLAS, fp32)"] = lambda: torch.mm(a, b)
    else:
        kernels["torch.mm (MKL)"] = lambda: torch.mm(a, b)
        if onednn_matmul_available():
            from clbench.lockstep.backbones import _onednn_mm

            bt = b.t().contiguous()
            kernels["oneDNN"] = lambda: _onednn_mm(a, bt)
    for name, fn in kernels.items():
        fn()
        times = [timed(fn, device)[1] for _ in range(repeats)]
        out[name] = 2 * n**3 / median(times) / 1e9
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (numbers already formatted by the caller)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def target(
    what: str, measured: float | None, unit: str, met: bool | None, *, shown: str | None = None, why: str = ""
) -> dict:
    """One target of a benchmark, judged from the number it measured and printed.

    ``what``: the target as the tables print it ("10-seed ER group >= 5x its runs one after
    another"); ``shown``: the measured number as printed ("3.83x (31.49 s / 8.23 s)"); ``met``:
    None when this run cannot judge it (a GPU target measured on the CPU), ``why`` then says why;
    otherwise ``why`` may say what bounds a miss."""
    return {
        "target": what,
        "measured": measured,
        "unit": unit,
        "shown": shown or (f"{measured:g} {unit}".strip() if measured is not None else "-"),
        "met": None if met is None else bool(met),
        "why": why,
    }


def measurement(what: str, measured: float | None, unit: str, *, shown: str | None = None) -> dict:
    """A number a benchmark measured that has no target (the tables print it with no verdict)."""
    return target(what, measured, unit, None, shown=shown)


def say_targets(targets: Sequence[dict]) -> None:
    """Print each target and its verdict: the lines the results file records."""
    from benchmarks.tables import verdict_text

    for entry in targets:
        if entry["met"] is None and not entry["why"]:
            print(f"measured (no target): {entry['target']}: {entry['shown']}")
        else:
            print(f"target: {entry['target']}: {entry['shown']}, {verdict_text(entry)}")


def results_path(name: str, args: argparse.Namespace | None = None) -> str:
    quick = bool(getattr(args, "quick", False))
    folder = getattr(args, "results_dir", None) or (QUICK_DIR if quick else RESULTS_DIR)
    return os.path.join(folder, f"{name}.json")


def write_result(name: str, targets: Sequence[dict], data: dict, args: argparse.Namespace | None = None) -> str:
    """Write ``NAME.json`` (``benchmarks/results/``; see ``results_path``): the command that ran,
    when, on what machine, whether it was a toy-size ``--quick`` run, each target with its measured
    number and verdict, the raw numbers (``data``) and everything the script printed since
    ``begin``. The README's performance table is generated from these files, never typed. Prints
    and returns the file's path."""
    device = str(getattr(args, "device", "cpu"))
    out = sys.stdout
    record = {
        "benchmark": name,
        "command": shlex.join([".venv/bin/python", os.path.relpath(os.path.abspath(sys.argv[0]), REPO), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine_line(device),
        "quick": bool(getattr(args, "quick", False)),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "targets": list(targets),
        "data": data,
        "output": out.text() if isinstance(out, _Transcript) else "",
    }
    path = results_path(name, args)
    check_record(record, path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=2, allow_nan=False, default=_plain)
        fh.write("\n")
    os.replace(tmp, path)
    print(f"wrote {os.path.relpath(path, REPO) if path.startswith(REPO) else path}", flush=True)
    return path


def _plain(value):
    """numpy scalars and arrays as JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")

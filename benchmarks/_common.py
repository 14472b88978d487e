"""Shared helpers of the benchmarks: the machine line, timing, the matmul peak, tables.

The machines these run on are shared: every benchmark prints the load average before and after,
and compares variants side by side in the same invocation (ratios of medians over repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import shlex
import sys
import time
from typing import Callable, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")  # what the README's performance numbers are read from
if REPO not in sys.path:  # run as `python benchmarks/NAME.py` from anywhere, installed or not
    sys.path.insert(0, REPO)

from clbench.engine.environment import cpu_model  # noqa: E402  (after the path above)
from clbench.sweep.executors.threads import usable_cpu_cores  # noqa: E402


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


def base_parser(description: str, repeats: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--repeats", type=int, default=repeats, help="repeats of each measurement (medians are reported)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return ap


def chosen(text: str, valid, what: str) -> list[str]:
    """The comma-separated names of ``text``, each one of ``valid``; else exit naming the valid ones."""
    names = text.split(",")
    bad = [n for n in names if n not in valid]
    if bad:
        sys.exit(f"unknown {what} {bad[0]!r}: valid are {', '.join(valid)}")
    return names


def setup(args: argparse.Namespace) -> None:
    if args.threads:
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


def target(what: str, measured: float, unit: str, met: bool, *, shown: str | None = None, why: str = "") -> dict:
    """One target of a benchmark, judged from the number it measured (``shown``: the number as the
    tables print it, e.g. ``"3.83x (31.49 s / 8.23 s)"``; ``why``: what bounds a miss)."""
    return {"target": what, "measured": measured, "unit": unit, "shown": shown or f"{measured:g} {unit}".strip(),
            "met": bool(met), "why": why}


def write_result(name: str, targets: Sequence[dict], data: dict, device: str = "cpu") -> str:
    """Write ``benchmarks/results/NAME.json``: the command that ran, when, on what machine, each target
    with its measured number and verdict, and the raw numbers (``data``). The README's performance
    table is generated from these files, never typed. Returns the file's path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    record = {
        "benchmark": name,
        "command": shlex.join([".venv/bin/python", os.path.relpath(os.path.abspath(sys.argv[0]), REPO), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine_line(device),
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "targets": list(targets),
        "data": data,
    }
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.replace(tmp, path)
    return path

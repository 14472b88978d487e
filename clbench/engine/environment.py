"""What a run's numbers depend on beyond its config and seed, recorded with every run.

A run's results are a function of its resolved config and seed for a fixed numeric environment:
the torch build and the kernels it picks (BLAS, oneDNN, the CPU's vector instructions or the GPU
and its libraries), the number of threads that split reductions, and the lockstep group's size and
composition (a group's batched kernels sum in another order than a run alone). Within one such
environment a run is bit-for-bit reproducible; across them its numbers agree only to rounding,
which a long training can grow (the README's "What holds" gives the measured size). So each run
stores the environment it was computed in (in its ``versions`` record, beside its ``group_size``),
and two runs can be told bit-identical or not by comparing those records.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import re
import sys

import numpy as np
import torch

from clbench.version import __version__


@functools.cache
def _build() -> dict[str, str]:
    """The torch build's numeric libraries (once per process: torch.__config__.show() is slow)."""
    shown = torch.__config__.show()
    out = {"torch_git": torch.version.git_version or "unknown"}
    if m := re.search(r"BLAS_INFO=([^,\s]+)", shown):
        out["blas"] = m.group(1)
    if m := re.search(r"Math Kernel Library Version ([^\s]+)", shown):
        out["blas"] = f"{out.get('blas', 'mkl')} {m.group(1)}"
    if m := re.search(r"MKL-DNN v([^\s]+)", shown):
        out["onednn"] = m.group(1)
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numeric_environment(device: str | torch.device = "cpu") -> dict[str, str]:
    """The numeric environment of a computation on ``device`` now, as strings (a run's
    ``versions`` record): torch build and kernels, threads, the device itself and, on a GPU, its
    libraries and whether TF32 may replace float32 products."""
    dev = torch.device(device)
    out = {
        **_build(),
        "threads": str(torch.get_num_threads()),
        "interop_threads": str(torch.get_num_interop_threads()),
        "deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()).lower(),
    }
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        out["device_name"] = torch.cuda.get_device_name(index)
        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())
        out["tf32_matmul"] = str(torch.backends.cuda.matmul.allow_tf32).lower()
        out["tf32_cudnn"] = str(torch.backends.cudnn.allow_tf32).lower()
        out["cudnn_benchmark"] = str(torch.backends.cudnn.benchmark).lower()
    else:
        out["device_name"] = cpu_model()
    return out


def software_versions() -> dict[str, str]:
    return {
        "clbench": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unsupported device {str(device)!r}: valid devices are cpu, cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for but CUDA is not available: valid devices here are cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        valid = ", ".join(["cpu", "cuda", *(f"cuda:{i}" for i in range(n))])
        raise ValueError(
            f"device {str(device)!r} does not exist here ({n} CUDA device(s)): valid devices here are {valid}"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(device)!r}: valid devices are cpu, cuda")
    return dev


@functools.cache
def keep_freed_memory() -> None:
    """Stop glibc from handing the memory of freed tensors back to the OS between steps (time, not numbers).

    Every step allocates and frees the same large tensors (a 90-run DER++ step: ~170 MB). glibc
    serves blocks above its mmap threshold (at most 32 MB) with fresh mappings and trims the heap's
    free top, so each step page-faults fresh zeroed pages again: 42k faults per step, 40 % of the
    time of a 90-run DER++ group on the 2-core dev machine. With mmap and trimming off, freed blocks
    are reused; the process keeps its peak memory. Once per process; Linux with glibc only.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)

"""How much memory a lockstep group needs, and how much there is: so that a sweep's groups are split
to fit the machine before anything trains, and a run that cannot fit at all is refused at once.

The estimate counts, per run of a group, what ``clbench.engine.loop.train_group`` allocates with a
leading run axis: the parameters three times over (initial, current, gradients), the replay
buffer (allocated for the group's largest buffer, plus one scratch slot), the activations a
training step keeps for its backward pass, the epoch's random plans and an evaluation chunk; and,
once per group, the dataset in memory. It is checked against the peak resident memory of real
groups (``measure_group``, used by ``tests/test_hardening.py`` and ``benchmarks/memory.py``, MLP and
ResNet-18); ``SAFETY`` covers what it leaves out (allocator rounding, autograd's transient buffers).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from clbench.data.specs import dataset_sizes, get_benchmark
from clbench.runs.config import curve_cache_bytes
from clbench.runs.resolved import ResolvedConfig

FLOAT = 4  # float32 bytes
INDEX = 8  # int64 bytes
EVAL_CHUNK = 2048  # test rows evaluated at once (clbench.evaluation.evaluate's chunk_size)
PLAN_CHUNK_STEPS = 256  # steps of replay plan drawn at once (clbench.engine.plans.PLAN_CHUNK_STEPS)
SAFETY = 1.25  # the estimate, times this, is what a group is budgeted
RUNTIME = 64 << 20  # torch's first kernels, thread pools and allocator arenas (measured 40-60 MB)
USABLE_FRACTION = 0.8  # of the memory available when a sweep starts: the rest is left to everyone else


def _spec(cfg: ResolvedConfig):
    return cfg.synthetic.spec() if cfg.benchmark == "synthetic" else get_benchmark(cfg.benchmark)


def _mlp_sizes(cfg: ResolvedConfig, spec) -> tuple[int, int, int]:
    """(parameters, floats a training step keeps per row, floats an evaluation keeps per test row)."""
    c, h, w = spec.input_shape
    d, k = c * h * w, spec.n_classes
    params = d * 100 + 100 + 100 * 100 + 100 + 100 * k + k
    # the input (gathered uint8 rows, their concatenation, the float copy), two hidden layers before
    # and after ReLU (and the stacked per-run GEMMs' copies), the logits and what the loss derives
    # from them (masked copy, softmax, gradient)
    train_row = 3 * d + 8 * 100 + 6 * k
    # per run: the hidden layers (outputs, ReLUs, the stacked per-run GEMMs), the logits and their
    # masked copies, softmax (and its float64 copy), the histograms' gathers and bins
    eval_row = 5 * 100 + 10 * k
    return params, train_row, eval_row


def _resnet_sizes(cfg: ResolvedConfig, spec) -> tuple[int, int, int]:
    from clbench.lockstep.resnet import BatchedResNet18  # noqa: PLC0415 - builds specs only, no tensors

    c, h, w = spec.input_shape
    net = BatchedResNet18(spec.n_classes, in_channels=c, width=cfg.width or 64)
    params = sum(s.c_out * s.c_in * s.kernel**2 + 2 * s.c_out for s in net.conv_specs())
    params += net.feature_dim * spec.n_classes + spec.n_classes
    maps = 3 * net.width * h * w  # stem: convolution, BatchNorm, ReLU outputs
    largest = net.width * h * w
    for blk in net.blocks:
        h, w = math.ceil(h / blk.stride), math.ceil(w / blk.stride)
        size = blk.c_out * h * w
        # conv1, bn1, relu, conv2, bn2, the sum, its ReLU (and the shortcut's conv and bn)
        maps += (7 + (2 if blk.shortcut is not None else 0)) * size
        largest = max(largest, size)
    k = spec.n_classes
    # + the input and its permuted copy; the backward's workspace (unfolded 3x3 inputs, activation
    # gradients) at the largest layer, 21 maps by measurement; the logits
    train_row = 2 * c * spec.input_shape[1] * spec.input_shape[2] + maps + 21 * largest + 6 * k
    eval_row = 18 * largest + 10 * k  # no graph, but a layer's workspace and several maps at a time
    return params, train_row, eval_row


def run_bytes(configs: Sequence[ResolvedConfig]) -> int:
    """Bytes each run of the lockstep group ``configs`` adds to it (its buffer sized for the group's
    largest, as the trainer allocates it): what it holds throughout (parameters, buffer, results)
    plus the larger of a training step's and an evaluation's working memory (freed memory is
    reused from one phase to the next, never given back: ``clbench.engine.environment.keep_freed_memory``)."""
    c0 = configs[0]
    spec = _spec(c0)
    method = c0.method_instance()
    params, train_row, eval_row = (_mlp_sizes if c0.backbone == "mlp" else _resnet_sizes)(c0, spec)
    n_train, n_test = dataset_sizes(c0.benchmark, c0.synthetic)
    c, h, w = spec.input_shape
    item = c * h * w  # uint8
    k = spec.n_classes
    task_rows = math.ceil(n_train / spec.n_tasks)
    epoch_rows = n_train if method.trains_on_seen_tasks else task_rows  # joint: tasks 0..t at task t
    if getattr(method, "exemplar_memory", False):  # iCaRL trains on the task's samples plus its exemplars
        epoch_rows += max(c.buffer_size for c in configs)
    step_rows = min(c0.batch_size, epoch_rows) + method.replay_draws * c0.minibatch_size
    capacity = max(c.buffer_size for c in configs)
    held = 3 * params * FLOAT  # initial, current and gradient
    if method.uses_buffer or getattr(method, "exemplar_memory", False):
        held += (capacity + 1) * (item + 2 * INDEX + (k * FLOAT if method.stores_logits else 0))
    held += 2 * spec.n_tasks * k * k * 8  # confidence sums and results
    if c0.eval_every:  # the subsets evaluated during training, prepared once and kept (or 0: not kept)
        held += curve_cache_bytes(spec.n_tasks, c0.eval_samples, item)
    training = step_rows * train_row * FLOAT
    # one epoch's order, samples and buffer slots (int64), their numpy sources, the augmentation
    training += epoch_rows * INDEX * (5 + (3 if spec.augment else 0))
    if method.replay_draws:
        training += (
            PLAN_CHUNK_STEPS * method.replay_draws * c0.minibatch_size * INDEX * (3 + (3 if spec.augment else 0))
        )
    evaluating = min(EVAL_CHUNK, math.ceil(n_test / spec.n_tasks)) * eval_row * FLOAT
    return int(held + max(training, evaluating))


def shared_bytes(configs: Sequence[ResolvedConfig]) -> int:
    """Bytes a group needs once, whatever its size: the dataset in memory (uint8 inputs, int64
    labels and task indices, held twice while it is prepared), an evaluation chunk's inputs and
    torch's own working memory."""
    c0 = configs[0]
    spec = _spec(c0)
    n_train, n_test = dataset_sizes(c0.benchmark, c0.synthetic)
    c, h, w = spec.input_shape
    data = (n_train + n_test) * (c * h * w + 2 * INDEX)
    return int(2 * data + EVAL_CHUNK * c * h * w * FLOAT * 2 + RUNTIME)


def group_bytes(configs: Sequence[ResolvedConfig]) -> int:
    """The estimated peak memory of training ``configs`` as one lockstep group."""
    return shared_bytes(configs) + len(configs) * run_bytes(configs)


def max_group_size(configs: Sequence[ResolvedConfig], budget: int) -> int:
    """The most runs of ``configs``'s group key that fit ``budget`` bytes in one group (0: not even
    one)."""
    per_run = SAFETY * run_bytes(configs)
    room = budget - SAFETY * shared_bytes(configs)
    return max(0, int(room // per_run)) if per_run > 0 else len(configs)


def available_bytes(device: str = "cpu") -> int:
    """The memory a sweep may use on ``device`` now: on a GPU, its free memory; on the CPU, the
    host's available memory (``MemAvailable``), within this process's cgroup limit if it has one."""
    import torch  # noqa: PLC0415

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    available = _meminfo_available()
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30  # unknown: assume a modest machine


def _cgroup_room() -> int | None:
    """Room left under the cgroup v2 memory limit of this process, if it has one."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def budget_bytes(device: str = "cpu") -> int:
    """What one group may take: ``USABLE_FRACTION`` of what is available on ``device``."""
    return int(USABLE_FRACTION * available_bytes(device))


def human(n: float) -> str:
    """Bytes as ``12.3 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# What ``measure_group`` runs in a fresh process: its peak resident memory (VmHWM, reset after the
# data is loaded) while one group trains, minus its memory before, beside the estimates.
_MEASURE = """
import gc, json, sys
import torch
torch.set_num_threads(1)
from clbench import RunConfig, SyntheticOptions
from clbench.sweep import ram as memory
from clbench.data.loading import load_benchmark
from clbench.engine.loop import train_group
kw, syn, r = json.loads(sys.argv[1])
syn["input_shape"] = tuple(syn["input_shape"])
syn = SyntheticOptions(**syn)
cfgs = [RunConfig(benchmark="synthetic", seed=s, synthetic=syn, **kw).resolve() for s in range(r)]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
data = load_benchmark("synthetic", synthetic=syn)
gc.collect()
base = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from here
train_group(cfgs, data)
print(json.dumps({"growth": status("VmHWM:") - base, "run": memory.run_bytes(cfgs), "group": memory.group_bytes(cfgs)}))
"""


def measure_group(config: dict, synthetic: dict, runs: int, timeout_s: float = 600) -> dict[str, int]:
    """Train a group of ``runs`` runs (``RunConfig`` fields ``config``, seeds 0..runs-1) on synthetic
    data (``SyntheticOptions`` fields ``synthetic``) in a fresh single-threaded process, Linux only:
    ``{"growth": its peak resident memory above what it held after loading the data, "run":
    run_bytes, "group": group_bytes}`` in bytes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps([config, synthetic, runs])],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout_s,
    )
    return json.loads(done.stdout.splitlines()[-1])

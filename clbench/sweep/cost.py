"""The cost model behind ``--dry-run``'s estimate and the progress display's ETA: seconds a lockstep
group takes on an unloaded 2-core CPU."""

from __future__ import annotations

import math
from collections.abc import Sequence

from clbench.data.specs import dataset_sizes, get_benchmark
from clbench.runs.resolved import ResolvedConfig

# Seconds per lockstep training step, per row (one sample through forward + backward) of one run,
# and per evaluated test row. Measured with an unloaded 2-core CPU (torch, float32): seq-fmnist er
# with 1 seed took 2.7 s and 10 seeds in one group 7.2 s; ResNet-18 (width 64, 32x32) rows are
# ~10^4 times costlier. Only an estimate: other load on the machine, a GPU, and the data loading
# all change it.
_STEP_S = 3.7e-4


_MLP_ROW_S = 4.2e-6  # the 784-100-100-10 MLP


_MLP_PARAMS = 784 * 100 + 100 * 100 + 100 * 10


_RESNET_ROW_S = 0.05  # width 64 at 32 x 32


_EVAL_ROW_FRACTION = 0.3  # a forward pass only


def _benchmark_sizes(cfg: ResolvedConfig):
    spec = cfg.synthetic.spec() if cfg.benchmark == "synthetic" else get_benchmark(cfg.benchmark)
    n_train, n_test = dataset_sizes(cfg.benchmark, cfg.synthetic)
    return spec, n_train, n_test


def _row_seconds(cfg: ResolvedConfig, spec) -> float:
    c, h, w = spec.input_shape
    if cfg.backbone == "mlp":
        return _MLP_ROW_S * (c * h * w * 100 + 100 * 100 + 100 * spec.n_classes) / _MLP_PARAMS
    return _RESNET_ROW_S * (h * w) / (32 * 32) * ((cfg.width or 64) / 64) ** 2


def estimate_group_seconds(configs: Sequence[ResolvedConfig]) -> float:
    """Estimated wall seconds to train and evaluate one lockstep group on this kind of CPU."""
    c0, n_runs = configs[0], len(configs)
    spec, n_train, n_test = _benchmark_sizes(c0)
    method = c0.method_instance()
    per_task = n_train / spec.n_tasks
    if method.exemplar_memory:  # iCaRL trains on the task's samples plus its exemplars
        per_task += c0.buffer_size * (spec.n_tasks - 1) / spec.n_tasks
    # joint retrains from scratch on tasks 0..t at task t: 1 + 2 + ... + T tasks' worth of data.
    task_multiples = spec.n_tasks * (spec.n_tasks + 1) / 2 if method.trains_on_seen_tasks else spec.n_tasks
    replaying_tasks = max(0, spec.n_tasks - method.replay_from_task) if method.replay_draws else 0
    steps = math.ceil(per_task / c0.batch_size) * c0.epochs
    rows_per_step = c0.batch_size
    row_s = _row_seconds(c0, spec)
    train = steps * task_multiples * (_STEP_S + n_runs * rows_per_step * row_s)
    train += steps * replaying_tasks * n_runs * method.replay_draws * c0.minibatch_size * row_s
    if method.refits:  # GDumb: every task end trains from scratch on the memory
        refit_steps = method.refit_epochs(c0.option_values) * math.ceil(c0.buffer_size / c0.batch_size) * spec.n_tasks
        train += refit_steps * (_STEP_S + n_runs * c0.batch_size * row_s)
    evaluate = spec.n_tasks * n_test * n_runs * row_s * _EVAL_ROW_FRACTION
    return train + evaluate

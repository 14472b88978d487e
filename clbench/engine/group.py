"""A lockstep group's fixed setup: its configs, data, method, network and per-run hyperparameters.

Runs are independent (own seed for initial weights, data order, buffer and augmentation; own
buffer size, mask, lr, alpha, beta): every tensor carries a leading run axis. What changes while
the group trains is its state (``clbench.engine.group_state``); this is what does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clbench.data.loading import ContinualData, hold_out_validation
from clbench.engine.checkpoint import checkpoint_key
from clbench.lockstep.backbones import BatchedBackbone, BatchedMLP, Params
from clbench.lockstep.step import LossLayer
from clbench.methods import Method
from clbench.runs.resolved import ResolvedConfig


def make_backbone(cfg: ResolvedConfig, data: ContinualData) -> BatchedBackbone:
    c, h, w = data.spec.input_shape
    if cfg.backbone == "mlp":
        return BatchedMLP(c * h * w, data.n_classes, head=cfg.head)
    from clbench.lockstep.resnet import BatchedResNet18  # noqa: PLC0415 - only ResNet groups need it

    return BatchedResNet18(data.n_classes, in_channels=c, width=cfg.width or 64, head=cfg.head)


@dataclass(frozen=True, kw_only=True, eq=False)
class Group:
    """What a lockstep group trains with, fixed for its whole training (``Group.of``)."""

    configs: tuple[ResolvedConfig, ...]
    data: ContinualData
    method: Method
    net: BatchedBackbone
    loss_layer: LossLayer  # the runs' mask specs, applied in every cross-entropy
    base_lr: torch.Tensor  # (R,) float32
    alpha: torch.Tensor  # (R,) float32
    beta: torch.Tensor  # (R,) float32
    buffer_sizes: np.ndarray  # (R,) int64
    options: Mapping[str, Any]  # the method's options (one group: one set)
    run_ids: tuple[str, ...]

    @classmethod
    def of(cls, configs: Sequence[ResolvedConfig], data: ContinualData) -> Group:
        """The group of ``configs`` (at least one, all with one ``group_key``) on ``data``."""
        cfgs = tuple(configs)
        key = cfgs[0].group_key()
        if any(c.group_key() != key for c in cfgs):
            raise ValueError("configs of one group must agree on benchmark, backbone, method, epochs and batch sizes")
        c0, spec, device = cfgs[0], data.spec, data.device
        if c0.benchmark != spec.name or spec.n_classes != data.n_classes:
            raise ValueError(f"data is {spec.name}, configs are for {c0.benchmark}")
        if c0.validation:  # each run's own split (one seed's where the method reads its rows itself)
            data = hold_out_validation(data, c0.validation, [c.seed for c in cfgs])
        method = c0.method_instance()
        net = make_backbone(c0, data)

        def as_tensor(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        return cls(
            configs=cfgs,
            data=data,
            method=method,
            net=net,
            base_lr=as_tensor([c.lr for c in cfgs]),
            alpha=as_tensor([c.alpha for c in cfgs]),
            beta=as_tensor([c.beta for c in cfgs]),
            loss_layer=LossLayer([c.mask for c in cfgs], data.class_task),
            buffer_sizes=np.array([c.buffer_size for c in cfgs], dtype=np.int64),
            options=c0.option_values,
            run_ids=tuple(c.identity() for c in cfgs),
        )

    @property
    def first(self) -> ResolvedConfig:
        """The first config: what every config of the group shares is read from it."""
        return self.configs[0]

    @property
    def n_runs(self) -> int:
        return len(self.configs)

    @property
    def n_tasks(self) -> int:
        return self.data.n_tasks

    @property
    def epochs(self) -> int:
        return self.first.epochs

    @property
    def batch_size(self) -> int:
        return self.first.batch_size

    @property
    def minibatch_size(self) -> int:
        return self.first.minibatch_size

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def checkpoint_key(self) -> str:
        return checkpoint_key(self.run_ids)

    def lr(self, epoch: int, params: Params) -> dict[str, torch.Tensor]:
        """Each run's lr at ``epoch`` of a task, as a view broadcasting over each parameter."""
        lr_runs = self.base_lr * 0.1 ** sum(epoch >= m for m in self.first.lr_milestones)
        return {k: lr_runs.view(-1, *([1] * (p.dim() - 1))) for k, p in params.items()}

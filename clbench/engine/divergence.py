"""The divergence watch: which runs of a group diverged (loss or gradient non-finite), where, and
their last finite loss, kept on the device so that watching costs no synchronisation per step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from clbench.runs.results import Divergence


class DivergenceWatch:
    """Which runs of the group diverged, where, and their last finite loss; all on the device.

    A diverged run is frozen: its parameters and BatchNorm statistics stop changing (its update is
    replaced by zero), so its NaNs never reach its parameters, and the runs beside it, whose
    computations are separate slices of the same tensors, are untouched.
    """

    def __init__(self, n_runs: int, device: torch.device):
        self.diverged = torch.zeros(n_runs, dtype=torch.bool, device=device)
        self.task = torch.full((n_runs,), -1, dtype=torch.int64, device=device)
        self.step = torch.full((n_runs,), -1, dtype=torch.int64, device=device)
        # A run's last finite loss is ``last_finite`` once it diverged, else ``latest`` (the loss of
        # the last step watched): while every run is healthy a step only keeps a reference.
        self.last_finite = torch.full((n_runs,), math.nan, device=device)
        self.latest = self.last_finite
        # On the CPU a look at a value costs nothing: while every run is healthy a step costs one
        # sum per gradient, added up on the host, and the exact per-run look, the bookkeeping and
        # the masking of updates run only once something is not finite (run every step they cost
        # 8 % of a 10-run MLP step: benchmarks/README.md). On a GPU a look would synchronise every
        # step, so the exact look, the bookkeeping and the masking always run there.
        self.check_on_host = device.type == "cpu"
        self.any_diverged = False  # known on the host (CPU only)

    def watch(self, total: torch.Tensor, grads: Sequence[torch.Tensor], task: int, step: int) -> torch.Tensor | None:
        """Flag the runs whose loss ``total`` (R,) or gradients are non-finite at this step; returns
        the (R,) mask of runs that may update, or ``None`` when every run may (known on the CPU)."""
        total = total.detach()
        if self.check_on_host and not self.any_diverged:
            # The fast look: one sum per gradient, added up on the host (a NaN or inf anywhere makes
            # it so; a float32 sum that overflows only sends the step to the exact look below).
            if math.isfinite(float(total.sum()) + sum(float(g.sum()) for g in grads)):
                self.latest = total
                return None
        finite = torch.isfinite(total)
        for g in grads:
            finite = finite & torch.isfinite(g.detach()).flatten(1).all(1)
        self.last_finite = torch.where(self.diverged, self.last_finite, self.latest)
        ok = finite & ~self.diverged
        new = ~ok & ~self.diverged
        self.task = torch.where(new, task, self.task)
        self.step = torch.where(new, step, self.step)
        self.last_finite = torch.where(ok, total, self.last_finite)
        self.latest = self.last_finite
        self.diverged = self.diverged | new
        if self.check_on_host:
            self.any_diverged = bool(self.diverged.any())
            if not self.any_diverged:
                return None
        return ok

    def state(self) -> dict[str, torch.Tensor]:
        last_finite = torch.where(self.diverged, self.last_finite, self.latest)
        return {"diverged": self.diverged, "task": self.task, "step": self.step, "last_finite": last_finite}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        device = self.diverged.device
        self.diverged, self.task, self.step, self.last_finite = (
            state[k].to(device) for k in ("diverged", "task", "step", "last_finite")
        )
        self.latest = self.last_finite
        self.any_diverged = bool(self.diverged.any())

    def per_run(self) -> list[Divergence | None]:
        state = self.state()
        flags, tasks, steps, losses = (state[k].cpu().tolist() for k in ("diverged", "task", "step", "last_finite"))
        return [Divergence(t, s, loss) if d else None for d, t, s, loss in zip(flags, tasks, steps, losses)]

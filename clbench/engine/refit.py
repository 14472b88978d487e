"""The refit at a task's end (``Method.refits``: GDumb): a freshly initialised network trained on the
buffer's rows alone, which then becomes the group's network."""

from __future__ import annotations

import math

import numpy as np
import torch

from clbench.data.augment import draw_crop_flip
from clbench.data.loading import prepare_inputs
from clbench.engine.group import Group
from clbench.engine.group_state import GroupState
from clbench.engine.plans import stacked_draws, step_slice
from clbench.engine.progress import PhaseTimer
from clbench.engine.update import NetState, train_step
from clbench.lockstep.step import Batch, Step


def refit(
    group: Group, st: GroupState, task: int, first_step: int, phase: PhaseTimer
) -> tuple[NetState, dict[str, np.ndarray]]:
    """Train a freshly initialised network on the buffer's rows; returns it and the mean of each
    loss term over the refit's steps (the task's ``train_loss``). Each epoch: every run's rows in a
    fresh order from its own generator, in batches of the batch size (a run holding fewer rows than
    another gets padding rows), augmented like replayed rows; lr from ``method.refit_lr``. Step
    ``first_step + i`` is where a divergence at the refit's step ``i`` is recorded (in ``st.divergence``;
    the draws come from each run's ``method`` stream in ``st.rand``)."""
    method, device, batch_size = group.method, group.device, group.batch_size
    # New initial weights, drawn from each run's own method stream.
    generators = [torch.Generator().manual_seed(int(r.method.integers(0, 2**63 - 1))) for r in st.rand]
    params, bn = group.net.init(generators, device)
    state = NetState(group.net, params, bn)
    held = st.buffer.available()
    width = int(held.max())
    n_steps = math.ceil(width / batch_size)
    names, sums, count = ("total",), None, 0
    for epoch in range(method.refit_epochs(group.options)):
        order, aug, draws = _epoch_draws(group, st, held, width, n_steps)
        lr_runs = method.refit_lr(epoch, group.base_lr, group.options)
        lr = {k: lr_runs.view(-1, *([1] * (p.dim() - 1))) for k, p in state.params.items()}
        for s in range(n_steps):
            step = _step(group, st, state, task, s, order, aug, draws)
            names, terms, _ = train_step(
                method,
                state,
                step,
                lr=lr,
                divergence=st.divergence,
                step_in_task=first_step + count,
                phase=phase,
                terms_of=method.refit_terms,
            )
            sums = terms if sums is None else sums + terms
            count += 1
    if sums is None:
        return state, {}
    return state, dict(zip(names, (sums / count).cpu().numpy()))


def _epoch_draws(
    group: Group, st: GroupState, held: np.ndarray, width: int, n_steps: int
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor] | None]:
    """An epoch's order of each run's ``held`` rows ((R, width), -1 = padding), their augmentation
    and the method's draws, all from each run's method stream."""
    spec, device, batch_size = group.data.spec, group.device, group.batch_size
    rows_per_step = [min(batch_size, width - s * batch_size) for s in range(n_steps)]
    order = np.full((len(st.rand), width), -1, dtype=np.int64)
    for i, (r, h) in enumerate(zip(st.rand, held)):
        order[i, :h] = r.method.permutation(h)
    order_t = torch.from_numpy(order).to(device)
    aug = None
    if spec.augment:
        aug = torch.from_numpy(np.stack([draw_crop_flip(r.method, (width,)) for r in st.rand])).to(device)
    draws = stacked_draws(
        [group.method.refit_draws(r.method, rows_per_step, spec.input_shape, group.options) for r in st.rand], device
    )
    return order_t, aug, draws


def _step(
    group: Group,
    st: GroupState,
    state: NetState,
    task: int,
    s: int,
    order: torch.Tensor,
    aug: torch.Tensor | None,
    draws: dict[str, torch.Tensor] | None,
) -> Step:
    """The refit's step ``s`` of an epoch: the next batch of each run's ``order`` of buffer slots."""
    cols = slice(s * group.batch_size, (s + 1) * group.batch_size)
    idx = order[:, cols]  # (R, B), -1 = padding
    rows = st.buffer.draw(idx)
    x = prepare_inputs(rows.x, group.data.spec, aug[:, cols] if aug is not None else None)
    padded = bool((idx < 0).any())
    batch = Batch(
        x,
        rows.y,
        rows.task,
        torch.ones(idx.shape[1], dtype=torch.bool, device=group.device),
        valid=rows.valid if padded else None,
    )
    return Step(
        task=task,
        stream=batch,
        replay=(),
        alpha=group.alpha,
        beta=group.beta,
        seen_classes=st.seen_classes,
        forward=state.forward,
        loss=group.loss_layer,
        state=st.method_state,
        replay_slots=(),
        draws=step_slice(draws, s),
        options=group.options,
        net=group.net,
        params=state.params,
    )

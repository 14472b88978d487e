"""One training step for every run of a group: the step's batches -> loss terms -> backward ->
per-run SGD -> buffer insertion (``train_step``), and the network state it updates (``NetState``).

Every tensor carries a leading run axis and the loss is the sum of the runs' losses, so each run's
parameters get exactly their own gradient; lr, alpha, beta and the mask are per run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from clbench.data.loading import ContinualData, prepare_inputs
from clbench.engine.divergence import DivergenceWatch
from clbench.engine.plans import PlannedDraw
from clbench.engine.progress import PhaseTimer
from clbench.lockstep.backbones import BatchedBackbone, Params
from clbench.lockstep.buffer import ReservoirBuffer
from clbench.lockstep.step import Batch, Step
from clbench.methods import Method, MethodOutput


class NetState:
    """The group's trainable state; ``forward`` advances BatchNorm running statistics."""

    def __init__(self, net: BatchedBackbone, params: Params, buffers: Params):
        self.net, self.params, self.buffers = net, params, buffers

    def forward(self, batch: Batch) -> torch.Tensor:
        logits, self.buffers = self.net.forward(self.params, self.buffers, batch.x, train=True, row_weight=batch.valid)
        return logits

    def features(self, batch: Batch) -> torch.Tensor:
        """The penultimate features of ``batch`` (training mode), like ``forward`` (ER-AML)."""
        features, self.buffers = self.net.features(
            self.params, self.buffers, batch.x, train=True, row_weight=batch.valid
        )
        return features

    def sgd(
        self, grads: Sequence[torch.Tensor], lr: dict[str, torch.Tensor], ok: torch.Tensor | None, bn_before: Params
    ) -> None:
        """Plain SGD in place, lr per run; runs not ``ok`` (diverged) keep their parameters and their
        BatchNorm statistics (``bn_before``: those before the step's forward)."""
        for (name, p), g in zip(self.params.items(), grads):
            if ok is not None:  # a diverged run's update is zero (not lr * NaN)
                g = torch.where(ok.view(-1, *([1] * (g.dim() - 1))), g, 0.0)
            p.addcmul_(g, lr[name], value=-1.0)  # plain SGD, lr per run (broadcast view), in place
        if ok is not None and self.buffers:  # nor do its BatchNorm running statistics move
            self.buffers = {
                k: torch.where(ok.view(-1, *([1] * (v.dim() - 1))), v, bn_before[k]) for k, v in self.buffers.items()
            }


def fresh(params: Params, grad: bool) -> Params:
    """Copies of ``params``, detached (and requiring grad with ``grad``)."""
    return {k: v.detach().clone().requires_grad_(grad) for k, v in params.items()}


class StepForward:
    """``Step.forward`` for one step.

    With a row-independent backbone (no batch statistics: the MLP), the first call forwards all
    the step's batches (stream and replay draws, whose inputs are consecutive slices of ``x``) as
    one batch and every call returns its batch's rows: one large GEMM per layer instead of one per
    batch (DER++: 3), the same logits. Any other batch (ER's concatenation) is forwarded alone.
    """

    def __init__(self, state: NetState, x: torch.Tensor, batches: Sequence[Batch]):
        self.state, self.x, self.batches = state, x, batches
        self.joint = getattr(state.net, "row_independent", False) and len(batches) > 1
        self.logits: tuple[torch.Tensor, ...] | None = None

    def __call__(self, batch: Batch) -> torch.Tensor:
        if self.joint:
            for i, b in enumerate(self.batches):
                if b is batch:
                    if self.logits is None:
                        logits, _ = self.state.net.forward(self.state.params, self.state.buffers, self.x, train=True)
                        self.logits = logits.split([len(b) for b in self.batches], dim=1)
                    return self.logits[i]
        return self.state.forward(batch)


def step_batches(
    data: ContinualData,
    x_raw: torch.Tensor,
    y: torch.Tensor,
    aug: torch.Tensor | None,
    planned: PlannedDraw | None,
    n_draws: int,
) -> tuple[torch.Tensor, Batch, tuple[Batch, ...]]:
    """A step's network inputs ``x`` (stream rows, then every replay draw's rows), prepared in one
    pass, and its batches, whose inputs are slices of ``x`` (see ``StepForward``)."""
    device, b = y.device, y.shape[1]
    if planned is not None:
        x_raw = torch.cat([x_raw, planned.rows.x], dim=1)
        aug = torch.cat([aug, planned.aug], dim=1) if aug is not None else None
    x = prepare_inputs(x_raw, data.spec, aug)
    stream = Batch(x[:, :b], y, data.class_task[y], torch.zeros(b, dtype=torch.bool, device=device))
    if planned is None:
        return x, stream, ()
    d, m = planned.rows, planned.rows.y.shape[1] // n_draws
    replay = tuple(
        Batch(
            x=x[:, b + i * m : b + (i + 1) * m],
            y=d.y[:, i * m : (i + 1) * m],
            task=d.task[:, i * m : (i + 1) * m],
            from_buffer=torch.ones(m, dtype=torch.bool, device=device),
            valid=d.valid[:, i * m : (i + 1) * m] if planned.padded else None,
            logits=d.logits[:, i * m : (i + 1) * m] if d.logits is not None else None,
        )
        for i in range(n_draws)
    )
    return x, stream, replay


def train_step(
    method: Method,
    state: NetState,
    step: Step,
    *,
    lr: dict[str, torch.Tensor],
    divergence: DivergenceWatch,
    step_in_task: int,
    phase: PhaseTimer,
    buffer: ReservoirBuffer | None = None,
    slots: torch.Tensor | None = None,
    x_raw: torch.Tensor | None = None,
    post_step_logits: bool = False,
    terms_of: Callable[[Step], MethodOutput] | None = None,
) -> tuple[tuple[str, ...], torch.Tensor, dict[str, torch.Tensor] | None]:
    """One step for every run: loss terms -> one backward (a second one for the method's reference
    terms, whose gradient the method's ``edit_gradients`` combines with the loss's) -> per-run SGD
    -> insertion of the stream rows into ``buffer`` at ``slots``. ``terms_of`` replaces
    ``method.loss_terms`` (the refit's terms).

    Runs whose loss or gradient is not finite take no step from here on (``DivergenceWatch``). With
    ``post_step_logits`` (DER's ``der_logits = "post"``) the buffer stores the logits of a fresh
    forward of the (augmented) stream batch after the update, instead of the training forward's;
    that forward uses batch statistics and leaves the BatchNorm running statistics alone.
    Returns the loss terms' names, the terms and their total stacked ``(n_terms + 1, R)``, and the
    method's new state values (``None``: unchanged).
    """
    bn_before = state.buffers
    with phase("forward and loss"):
        out = (terms_of or method.loss_terms)(step)
        terms = torch.stack(list(out.terms.values())) if out.terms else step.alpha.new_zeros((0, len(step.alpha)))
        total = terms.sum(0)
    if out.terms:  # a method may train nothing on the stream (GDumb only fills its memory)
        with phase("backward"):
            grads = _gradients(method, state, step, total, out)
        with phase("optimizer"), torch.no_grad():
            ok = divergence.watch(total, grads, step.task, step_in_task)
            state.sgd(grads, lr, ok, bn_before)
    if buffer is not None and slots is not None:  # after the update, like Mammoth; DER stores the pre-update logits
        with phase("buffer insertion"):
            logits = out.stream_logits
            if post_step_logits and logits is not None:
                with torch.no_grad():
                    logits, _ = state.net.forward(
                        state.params, state.buffers, step.stream.x, train=True, row_weight=step.stream.valid
                    )
            buffer.insert(slots, x_raw, step.stream.y, step.stream.task, logits)
    return (*out.terms, "total"), torch.cat([terms, total.unsqueeze(0)]).detach(), out.state


def _gradients(
    method: Method, state: NetState, step: Step, total: torch.Tensor, out: MethodOutput
) -> Sequence[torch.Tensor]:
    """Each run's gradient of its loss, edited by the method where it has reference terms (A-GEM)."""
    # Summing the runs' losses gives each run's parameters exactly its own gradient.
    params = list(state.params.values())
    grads = torch.autograd.grad(total.sum(), params, retain_graph=bool(out.reference))
    if out.reference:
        reference = torch.autograd.grad(torch.stack(list(out.reference.values())).sum(), params)
        grads = method.edit_gradients(step, grads, reference)
    return grads

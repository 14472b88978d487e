"""GDumb (Prabhu, Torr & Dokania, ECCV 2020): a greedy class-balanced memory and a network trained
from scratch on it.

Training steps train nothing: incoming samples only go to the memory, by the paper's greedy
sampler: while the memory is not full a sample is stored; once full, a sample of class c is
stored if c holds fewer than M / (classes seen so far) items, in place of a random item of the
largest class (ties: the lowest label). Every seen class then holds floor or ceil of M / classes.

At every task end (GDumb's own code retrains whenever it evaluates; Mammoth only after the last
task, leaving earlier rows of the accuracy matrix to an untrained network) the trainer's refit
phase trains a freshly initialised network (drawn from the run's own generator) on the memory:
``fitting_epochs`` passes in a fresh random order, batches of the benchmark's batch size,
augmented like any replayed row; lr 0.1 x lr in epoch 0, lr in epoch 1, then
CosineAnnealingWarmRestarts(T_0 = 1, T_mult = 2, eta_min = minlr) stepped once per later epoch;
plain SGD (Mammoth's momentum 0, no weight decay); CutMix with probability ``cutmix_prob``,
lambda ~ Beta(cutmix_alpha, cutmix_alpha), loss lambda CE(z, y_a) + (1 - lambda) CE(z, y_b).
The config's lr is the refit's maximum lr (Mammoth's maxlr).

Where the general mask acts: only on the refit's cross-entropy, whose rows are all memory rows
(``--mask-on buffer``); the stream is never trained on, so a stream mask (``stream`` or ``both``)
cannot act there and is refused. Under CutMix each of the two cross-entropies masks by its own target's task.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from clbench.lockstep.buffer import last_write_per_step
from clbench.lockstep.step import Batch, Step
from clbench.methods.base import Method, MethodOutput


def greedy_balanced_slots(
    rng: np.random.Generator, labels: np.ndarray, memory_labels: np.ndarray, held: int, size: int, batch_size: int
) -> np.ndarray:
    """GDumb's sampler for one run: the slot (-1: not stored) of each incoming sample, in order."""
    n_classes = int(max(labels.max(initial=0), memory_labels.max(initial=0))) + 1
    slot_class = np.full(size, -1, dtype=np.int64)
    slot_class[:held] = memory_labels[:held]
    counts = np.bincount(slot_class[:held], minlength=n_classes)
    seen = counts > 0
    out = np.full(len(labels), -1, dtype=np.int64)
    for i, c in enumerate(labels):
        seen[c] = True
        if held < size:
            slot = held
            held += 1
        elif counts[c] < size / seen.sum():
            largest = int(np.argmax(counts))
            candidates = np.flatnonzero(slot_class == largest)
            slot = int(candidates[rng.integers(len(candidates))])
            counts[largest] -= 1
        else:
            continue
        counts[c] += 1
        slot_class[slot] = c
        out[i] = slot
    return last_write_per_step(out, size, batch_size)


def cutmix_boxes(rng: np.random.Generator, lam: np.ndarray, height: int, width: int) -> np.ndarray:
    """CutMix boxes (Yun et al. 2019) ``(n, 4)`` = (top, left, bottom, right) of area about 1 - lam."""
    cut = np.sqrt(1.0 - lam)
    ch, cw = (height * cut).astype(np.int64), (width * cut).astype(np.int64)
    cy, cx = rng.integers(0, height, size=len(lam)), rng.integers(0, width, size=len(lam))
    return np.stack(
        [
            np.clip(cy - ch // 2, 0, height),
            np.clip(cx - cw // 2, 0, width),
            np.clip(cy + ch // 2, 0, height),
            np.clip(cx + cw // 2, 0, width),
        ],
        axis=1,
    )


class GDumb(Method):
    name = "gdumb"
    uses_buffer = True
    group_by_buffer_size = True  # the refit's steps per epoch depend on the memory's size
    mask_acts_on = ("buffer",)  # only the refit's cross-entropy, on memory rows
    refits = True
    loss_terms_names = ("ce",)
    options = {"minlr": 5e-4, "fitting_epochs": 256, "cutmix_alpha": 1.0, "cutmix_prob": 0.5}
    run_notes = (
        "gdumb: the stream only fills a greedy class-balanced memory; after every task a network trained "
        "from scratch on the memory is evaluated (GDumb's code; Mammoth refits after the last task only); "
        "lr is the refit's maximum lr",
    )

    def loss_terms(self, step: Step) -> MethodOutput:
        return MethodOutput({})  # nothing is trained on the stream

    def plan_insertions(self, rng, labels, memory_labels, n_seen, size, batch_size):
        return greedy_balanced_slots(rng, labels, memory_labels, min(n_seen, size), size, batch_size)

    def refit_epochs(self, options) -> int:
        return int(options["fitting_epochs"])

    def refit_lr(self, epoch: int, lr: torch.Tensor, options) -> torch.Tensor:
        if epoch == 0:
            return 0.1 * lr
        k = epoch - 1  # scheduler steps taken: cycles of 1, 2, 4, ... epochs, each restarting at lr
        n = int(math.floor(math.log2(k + 1)))
        t_cur, t_i = k - (2**n - 1), 2**n
        minlr = float(options["minlr"])
        return minlr + (lr - minlr) * (1 + math.cos(math.pi * t_cur / t_i)) / 2

    def refit_draws(self, rng, rows_per_step, input_shape, options):
        n_steps, width = len(rows_per_step), max(rows_per_step)
        alpha, prob = float(options["cutmix_alpha"]), float(options["cutmix_prob"])
        apply = rng.random(n_steps) < prob
        lam = rng.beta(alpha, alpha, size=n_steps) if alpha > 0 else np.ones(n_steps)
        boxes = cutmix_boxes(rng, lam, input_shape[-2], input_shape[-1])
        perm = np.tile(np.arange(width), (n_steps, 1))
        for s, rows in enumerate(rows_per_step):
            perm[s, :rows] = rng.permutation(rows)
        return {"apply": apply, "boxes": boxes, "perm": perm}

    def refit_terms(self, step: Step) -> MethodOutput:
        a, d = step.stream, step.draws
        h, w = a.x.shape[-2:]
        top, left, bottom, right = (d["boxes"][:, i].view(-1, 1, 1) for i in range(4))  # (R, 1, 1)
        rows = torch.arange(h, device=a.x.device).view(1, -1, 1)
        cols = torch.arange(w, device=a.x.device).view(1, 1, -1)
        inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right) & d["apply"].view(-1, 1, 1)
        perm = d["perm"][:, : a.y.shape[1]]  # the last batch of an epoch may be shorter
        partner = a.x.gather(1, perm.view(*perm.shape, *([1] * (a.x.dim() - 2))).expand_as(a.x))
        x = torch.where(inside.unsqueeze(1).unsqueeze(1), partner, a.x)  # (R, 1, 1, H, W) over (R, B, C, H, W)
        area = ((bottom - top) * (right - left)).view(-1).to(x.dtype)
        lam = torch.where(d["apply"], 1.0 - area / (h * w), 1.0)
        mixed = Batch(x, a.y, a.task, a.from_buffer, a.valid)
        b = Batch(
            x,
            a.y.gather(1, perm),
            a.task.gather(1, perm),
            a.from_buffer,
            a.valid.gather(1, perm) * a.valid if a.valid is not None else None,
        )
        z = step.forward(mixed)
        ce = lam * step.cross_entropy(z, mixed) + (1.0 - lam) * step.cross_entropy(z, b)
        return MethodOutput({"ce": ce})

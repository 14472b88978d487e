"""Evaluation of every run of a group on every task's test set, class-IL and task-IL at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from clbench.data.loading import ContinualData, prepare_inputs
from clbench.lockstep.backbones import BatchedBackbone, Params
from clbench.runs.results import HISTOGRAM_BINS, HISTOGRAM_KINDS


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of R runs after some task. Accuracies in %, arrays with a leading run axis."""

    class_il_correct: np.ndarray  # (R, T) int: argmax over all K classes
    class_il_seen_correct: np.ndarray  # (R, T) int: argmax over the classes of the tasks trained so far
    task_il_correct: np.ndarray  # (R, T) int: argmax over the evaluated task's classes
    test_counts: np.ndarray  # (T,) int
    class_correct: np.ndarray  # (R, K) int, class-IL
    class_counts: np.ndarray  # (K,) int
    confidence: np.ndarray  # (R, K, K): mean softmax vector (class-IL) over the test samples of each true class
    # kind (HISTOGRAM_KINDS) -> (R, T, HISTOGRAM_BINS) int: test samples of task t per probability bin
    histograms: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def class_il(self) -> np.ndarray:
        return 100.0 * self.class_il_correct / self.test_counts

    @property
    def class_il_seen(self) -> np.ndarray:
        return 100.0 * self.class_il_seen_correct / self.test_counts

    @property
    def task_il(self) -> np.ndarray:
        return 100.0 * self.task_il_correct / self.test_counts

    @property
    def per_class_accuracy(self) -> np.ndarray:
        return 100.0 * self.class_correct / np.maximum(self.class_counts, 1)


@torch.no_grad()
def _count_histograms(hists: dict[str, torch.Tensor], t: int, probs: torch.Tensor, y: torch.Tensor) -> None:
    """Add one chunk's softmax probabilities ``(R, B, K)`` of task ``t`` to the histograms, in place."""
    per_kind = {
        "true_class": probs.gather(-1, y.view(1, -1, 1).expand(probs.shape[0], -1, 1)).squeeze(-1),
        "max": probs.amax(-1),
    }
    for kind, p in per_kind.items():  # (R, B) -> bin index, then counts per run
        bins = (p * HISTOGRAM_BINS).long().clamp_(0, HISTOGRAM_BINS - 1)
        hists[kind][:, t].scatter_add_(1, bins, p.isfinite().long())  # a diverged run's NaNs: not counted


@torch.no_grad()
def evaluate(
    net: BatchedBackbone,
    params: Params,
    buffers: Params,
    data: ContinualData,
    n_runs: int,
    after_task: int,
    chunk_size: int = 2048,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Evaluation:
    """Evaluate R stacked networks (eval mode) on all test sets after training task ``after_task``;
    inputs are shared by the runs. Class-IL is counted twice from the same logits: the argmax over
    all classes, and over the classes of tasks ``0..after_task`` (the classes seen so far).
    ``classifier`` (a method's, e.g. iCaRL's nearest mean of exemplars) maps the inputs
    ``(R, N, C, H, W)`` to class scores ``(R, N, K)`` that take the logits' place."""
    k, t_count = data.n_classes, data.n_tasks
    device = data.device
    cil = torch.zeros((n_runs, t_count), dtype=torch.int64, device=device)
    cil_seen = torch.zeros_like(cil)
    til = torch.zeros_like(cil)
    unseen = data.class_task > after_task
    class_correct = torch.zeros((n_runs, k), dtype=torch.int64, device=device)
    prob_sums = torch.zeros((n_runs, k, k), dtype=torch.float64, device=device)
    hists = {
        kind: torch.zeros((n_runs, t_count, HISTOGRAM_BINS), dtype=torch.int64, device=device)
        for kind in HISTOGRAM_KINDS
    }
    for t, idx in enumerate(data.test_task_idx):
        outside_task = data.class_task != t
        for start in range(0, len(idx), chunk_size):
            rows = idx[start : start + chunk_size]
            y = data.test_y[rows]
            x = prepare_inputs(data.test_x[rows], data.spec)
            inputs = x.unsqueeze(0).expand(n_runs, *x.shape)
            if classifier is None:
                logits, _ = net.forward(params, buffers, inputs, train=False)
            else:
                logits = classifier(inputs)
            hit = logits.argmax(-1) == y
            cil[:, t] += hit.sum(1)
            cil_seen[:, t] += (logits.masked_fill(unseen, float("-inf")).argmax(-1) == y).sum(1)
            til[:, t] += (logits.masked_fill(outside_task, float("-inf")).argmax(-1) == y).sum(1)
            class_correct.index_add_(1, y, hit.to(torch.int64))
            probs = logits.softmax(-1)  # (R, B, K)
            prob_sums.index_add_(1, y, probs.to(torch.float64))
            _count_histograms(hists, t, probs, y)
    counts = np.array([len(i) for i in data.test_task_idx], dtype=np.int64)
    class_counts = torch.bincount(data.test_y, minlength=k).cpu().numpy()
    return Evaluation(
        class_il_correct=cil.cpu().numpy(),
        class_il_seen_correct=cil_seen.cpu().numpy(),
        task_il_correct=til.cpu().numpy(),
        test_counts=counts,
        class_correct=class_correct.cpu().numpy(),
        class_counts=class_counts,
        confidence=(prob_sums / torch.from_numpy(np.maximum(class_counts, 1)).to(device).view(1, k, 1)).cpu().numpy(),
        histograms={kind: h.cpu().numpy() for kind, h in hists.items()},
    )

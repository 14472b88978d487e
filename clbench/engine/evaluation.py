"""Evaluation of every run of a group on every task's test set, class-IL and task-IL at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from clbench.data.loading import ContinualData, prepare_inputs
from clbench.lockstep.backbones import BatchedBackbone, Params
from clbench.runs.config import CURVE_CACHE_BYTES, curve_cache_bytes
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
    # name (PLASTICITY_MEASURES) -> (R,): the penultimate features' effective rank and the fraction
    # of dead ReLU units, over the test samples of the tasks seen so far (empty in older checkpoints)
    plasticity: dict[str, np.ndarray] = field(default_factory=dict)

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


SPLITS = ("test", "validation")  # what a run is evaluated on (the validation split only where it has one)


def split_rows(data: ContinualData, split: str) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """(inputs, labels, per task the row indices into them) of ``split``: ``test`` (the test sets) or
    ``validation`` (the training rows held out, ``data.val_task_idx``: ``(R, v)`` per task, each run's own)."""
    if split == "test":
        return data.test_x, data.test_y, data.test_task_idx
    if split == "validation" and data.val_task_idx is not None:
        return data.train_x, data.train_y, data.val_task_idx
    raise ValueError(f"no {split!r} split in this data: valid are test" + (", validation" if data.val_task_idx else ""))


PLASTICITY_MEASURES = ("effective_rank", "dead_fraction")


class _FeatureStats:
    """What the plasticity measures need of the penultimate features ``(R, B, D)`` of the samples seen,
    accumulated chunk by chunk: their Gram matrix ``F^T F`` (float64) and each unit's largest value."""

    def __init__(self, n_runs: int, device: torch.device):
        self.n_runs, self.device = n_runs, device
        self.gram: torch.Tensor | None = None
        self.peak: torch.Tensor | None = None

    def add(self, features: torch.Tensor) -> None:
        f = features.to(torch.float64)
        gram = torch.bmm(f.transpose(1, 2), f)
        peak = f.amax(1)
        self.gram = gram if self.gram is None else self.gram + gram
        self.peak = peak if self.peak is None else torch.maximum(self.peak, peak)

    def measures(self) -> dict[str, np.ndarray]:
        """``effective_rank`` (Roy & Vetterli 2007, of the singular values, see
        ``clbench.metrics.effective_rank``) and ``dead_fraction`` (units never above 0); NaN for a
        run whose features are not finite (it diverged)."""
        if self.gram is None:
            return {}
        finite = torch.isfinite(self.gram).all(2).all(1)
        gram = torch.where(finite.view(-1, 1, 1), self.gram, torch.zeros_like(self.gram))
        eig = torch.linalg.eigvalsh(gram)
        # eigenvalues at the Gram matrix's rounding noise are zero singular values of F
        noise = eig.amax(1, keepdim=True) * eig.shape[1] * torch.finfo(torch.float64).eps
        sv = torch.where(eig > noise, eig, torch.zeros_like(eig)).sqrt()  # singular values of F
        p = sv / sv.sum(1, keepdim=True).clamp_min(1e-300)
        entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(1)
        rank = torch.where(sv.sum(1) > 0, torch.exp(entropy), torch.zeros_like(entropy))
        nan = torch.full_like(rank, float("nan"))
        dead = (self.peak <= 0).to(torch.float64).mean(1)
        return {
            "effective_rank": torch.where(finite, rank, nan).cpu().numpy(),
            "dead_fraction": torch.where(finite, dead, nan).cpu().numpy(),
        }


def _empty_histograms(n_runs: int, n_tasks: int, device: torch.device) -> dict[str, torch.Tensor]:
    shape = (n_runs, n_tasks, HISTOGRAM_BINS)
    return {kind: torch.zeros(shape, dtype=torch.int64, device=device) for kind in HISTOGRAM_KINDS}


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
    ``(R, N, C, H, W)`` to class scores ``(R, N, K)`` that take the logits' place. The plasticity
    measures (``PLASTICITY_MEASURES``) come from the same forward pass: the penultimate features of
    the test samples of tasks ``0..after_task``. The validation split: ``evaluate_validation``."""
    k, t_count, device = data.n_classes, data.n_tasks, data.device
    cil = torch.zeros((n_runs, t_count), dtype=torch.int64, device=device)
    cil_seen = torch.zeros_like(cil)
    til = torch.zeros_like(cil)
    unseen = data.class_task > after_task
    class_correct = torch.zeros((n_runs, k), dtype=torch.int64, device=device)
    prob_sums = torch.zeros((n_runs, k, k), dtype=torch.float64, device=device)
    hists = _empty_histograms(n_runs, t_count, device)
    xs, ys, task_idx = split_rows(data, "test")
    stats = _FeatureStats(n_runs, device)
    for t, idx in enumerate(task_idx):
        outside_task = data.class_task != t
        for start in range(0, len(idx), chunk_size):
            rows = idx[start : start + chunk_size]
            y = ys[rows]
            x = prepare_inputs(xs[rows], data.spec)
            inputs = x.unsqueeze(0).expand(n_runs, *x.shape)  # one batch, seen by every run
            features = net.features(params, buffers, inputs, train=False)[0]
            logits = net.head_logits(params, features) if classifier is None else classifier(inputs)
            if t <= after_task:
                stats.add(features)
            hit = logits.argmax(-1) == y
            cil[:, t] += hit.sum(1)
            cil_seen[:, t] += (logits.masked_fill(unseen, float("-inf")).argmax(-1) == y).sum(1)
            til[:, t] += (logits.masked_fill(outside_task, float("-inf")).argmax(-1) == y).sum(1)
            class_correct.index_add_(1, y, hit.to(torch.int64))
            probs = logits.softmax(-1)  # (R, B, K)
            prob_sums.index_add_(1, y, probs.to(torch.float64))
            _count_histograms(hists, t, probs, y)
    counts = np.array([len(i) for i in task_idx], dtype=np.int64)
    class_counts = torch.bincount(ys[torch.cat(task_idx)], minlength=k).cpu().numpy()
    return Evaluation(
        class_il_correct=cil.cpu().numpy(),
        class_il_seen_correct=cil_seen.cpu().numpy(),
        task_il_correct=til.cpu().numpy(),
        test_counts=counts,
        class_correct=class_correct.cpu().numpy(),
        class_counts=class_counts,
        confidence=(prob_sums / torch.from_numpy(np.maximum(class_counts, 1)).to(device).view(1, k, 1)).cpu().numpy(),
        histograms={kind: h.cpu().numpy() for kind, h in hists.items()},
        plasticity=stats.measures(),
    )


# -- evaluation during training (``eval_every``): a cheap accuracy-only pass on fixed subsets -------------


@dataclass(frozen=True)
class CurvePoint:
    """One evaluation during training of R runs: after ``step`` steps of the whole stream (global,
    counting every epoch of every task), while task ``task`` was trained, on the subsets of tasks
    ``0..task``. Counts of correct answers, class-IL (argmax over all classes) and task-IL."""

    step: int
    task: int
    class_il_correct: np.ndarray  # (R, task + 1) int
    task_il_correct: np.ndarray  # (R, task + 1) int
    counts: np.ndarray  # (task + 1,) int: samples of each task's subset


def curve_split(data: ContinualData) -> str:
    """The split evaluated during training: the validation split where the run holds one out, else the test sets."""
    return "validation" if data.val_task_idx is not None else "test"


def curve_subsets(data: ContinualData, seeds: list[int], n_samples: int) -> torch.Tensor:
    """``(R, T, n_samples)`` row indices (into ``split_rows(data, curve_split(data))``): per run and task, a
    fixed subset of that task's rows drawn without replacement from the run's seed alone (the seventh
    child of its seed sequence: the training streams, ``RunRandomness``, are the first six, never drawn
    from here), sorted."""
    _, _, task_idx = split_rows(data, curve_split(data))
    out = []
    for r, seed in enumerate(seeds):
        rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(7)[6])
        per_task = []
        for rows in task_idx:
            idx = rows if rows.dim() == 1 else rows[r]  # the test sets, or this run's validation rows
            pick = np.sort(rng.choice(len(idx), size=n_samples, replace=False))
            per_task.append(idx[torch.from_numpy(pick).to(idx.device)])
        out.append(torch.stack(per_task))
    return torch.stack(out).to(data.device)


class CurveInputs:
    """The subsets of ``curve_subsets`` and, within ``CURVE_CACHE_BYTES`` a run (counted by
    ``clbench.sweep.ram``), their float inputs, each task's prepared once (when it is first evaluated) and
    kept: the subsets are fixed for the whole run, and preparing them (gather, scale, standardise) cost
    twice the MLP's forward pass at every point."""

    def __init__(self, data: ContinualData, subsets: torch.Tensor):
        self.data, self.subsets = data, subsets
        self.n_ready = 0  # tasks prepared so far
        self.xs = xs = split_rows(data, curve_split(data))[0]
        # the module's limit, read at each call (a test lowers it)
        kept = curve_cache_bytes(subsets.shape[1], subsets.shape[2], int(np.prod(xs.shape[1:])), CURVE_CACHE_BYTES)
        shape = (subsets.shape[0], subsets.shape[1] * subsets.shape[2], *xs.shape[1:])
        # uint8 images only (prepared into float32); allocated empty: the pages of tasks not yet reached
        # are not touched
        keep = kept > 0 and xs.dtype == torch.uint8
        self.prepared = torch.empty(shape, dtype=torch.float32, device=data.device) if keep else None

    def upto(self, task: int) -> torch.Tensor | None:
        """The prepared inputs of tasks ``0..task``, ``(R, (task + 1) * S, C, H, W)``; None beyond the budget."""
        if self.prepared is None:
            return None
        n_samples = self.subsets.shape[2]
        for t in range(self.n_ready, task + 1):
            rows = self.subsets[:, t]
            self.prepared[:, t * n_samples : (t + 1) * n_samples] = prepare_inputs(self.xs[rows], self.data.spec)
        self.n_ready = max(self.n_ready, task + 1)
        return self.prepared[:, : (task + 1) * n_samples]


@torch.no_grad()
def evaluate_curve(
    net: BatchedBackbone,
    params: Params,
    buffers: Params,
    data: ContinualData,
    subsets: torch.Tensor | CurveInputs,
    *,
    step: int,
    task: int,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int = 2048,
) -> CurvePoint:
    """Accuracy only, of R stacked networks (eval mode) on each run's own subset (``curve_subsets``) of
    tasks ``0..task``, counted class-IL and task-IL from the same logits as in ``evaluate``. Given a
    ``CurveInputs``, the subsets' inputs are prepared once per task, not at every point."""
    cache = subsets if isinstance(subsets, CurveInputs) else None
    subsets = subsets.subsets if cache is not None else subsets
    xs, ys, _ = split_rows(data, curve_split(data))
    n_runs, n_samples = subsets.shape[0], subsets.shape[2]
    rows = subsets[:, : task + 1].reshape(n_runs, -1)  # (R, (task + 1) * S), task by task
    row_task = torch.arange(task + 1, device=data.device).repeat_interleave(n_samples)
    prepared = cache.upto(task) if cache is not None else None
    cil, til, _ = _own_rows_hits(
        net, params, buffers, data, xs, ys, rows, row_task, classifier, chunk_size, prepared=prepared
    )
    return CurvePoint(
        step=int(step),
        task=int(task),
        class_il_correct=cil.view(n_runs, task + 1, n_samples).sum(-1).cpu().numpy(),
        task_il_correct=til.view(n_runs, task + 1, n_samples).sum(-1).cpu().numpy(),
        counts=np.full(task + 1, n_samples, dtype=np.int64),
    )


@torch.no_grad()
def evaluate_validation(
    net: BatchedBackbone,
    params: Params,
    buffers: Params,
    data: ContinualData,
    *,
    after_task: int,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int = 2048,
) -> Evaluation:
    """Accuracy only (class-IL, over the seen classes, task-IL), of R stacked networks (eval mode) on each
    run's own validation rows of every task (``data.val_task_idx``, ``(R, v)`` per task): a run's inputs
    are its own, so its counts do not depend on the runs beside it. The per-class, confidence, histogram
    and plasticity fields are empty: they are measured on the test sets only."""
    xs, ys, task_idx = split_rows(data, "validation")
    n_runs = task_idx[0].shape[0]
    counts = np.array([idx.shape[-1] for idx in task_idx], dtype=np.int64)
    rows = torch.cat(task_idx, dim=1)  # (R, sum v), task by task
    row_task = torch.cat([torch.full((idx.shape[-1],), t, device=data.device) for t, idx in enumerate(task_idx)])
    unseen = data.class_task > after_task
    hits = _own_rows_hits(net, params, buffers, data, xs, ys, rows, row_task, classifier, chunk_size, unseen=unseen)

    def per_task(hit: torch.Tensor) -> np.ndarray:
        return np.stack([h.sum(1).cpu().numpy() for h in hit.split(counts.tolist(), dim=1)], axis=1)

    k = data.n_classes
    return Evaluation(
        class_il_correct=per_task(hits[0]),
        class_il_seen_correct=per_task(hits[2]),
        task_il_correct=per_task(hits[1]),
        test_counts=counts,
        class_correct=np.zeros((n_runs, 0), dtype=np.int64),
        class_counts=np.zeros(0, dtype=np.int64),
        confidence=np.zeros((n_runs, 0, k), dtype=np.float64),
    )


def _own_rows_hits(
    net: BatchedBackbone,
    params: Params,
    buffers: Params,
    data: ContinualData,
    xs: torch.Tensor,
    ys: torch.Tensor,
    rows: torch.Tensor,
    row_task: torch.Tensor,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None,
    chunk_size: int,
    unseen: torch.Tensor | None = None,
    prepared: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Whether each run's answer on each of its own rows ``(R, N)`` (of tasks ``row_task``) is right:
    class-IL, task-IL and, given the ``unseen`` classes, class-IL over the seen classes; ``(R, N)`` bool each.
    ``prepared``: the rows' inputs already prepared, ``(R, N, C, H, W)`` (the same values, bit for bit)."""
    cil = torch.zeros(rows.shape, dtype=torch.bool, device=data.device)
    til = torch.zeros_like(cil)
    seen = None if unseen is None else torch.zeros_like(cil)
    for start in range(0, rows.shape[1], chunk_size):
        part = rows[:, start : start + chunk_size]
        y = ys[part]  # (R, B)
        if prepared is None:
            inputs = prepare_inputs(xs[part], data.spec)  # (R, B, C, H, W): each run its own rows
        else:  # a view: each run's rows are contiguous, which the first layer reads without a copy
            inputs = prepared[:, start : start + part.shape[1]]
        if classifier is None:
            logits = net.head_logits(params, net.features(params, buffers, inputs, train=False)[0])
        else:
            logits = classifier(inputs)
        outside = data.class_task.view(1, -1) != row_task[start : start + chunk_size].view(-1, 1)  # (B, K)
        cil[:, start : start + part.shape[1]] = logits.argmax(-1) == y
        til[:, start : start + part.shape[1]] = logits.masked_fill(outside, float("-inf")).argmax(-1) == y
        if seen is not None:
            seen[:, start : start + part.shape[1]] = logits.masked_fill(unseen, float("-inf")).argmax(-1) == y
    return cil, til, seen

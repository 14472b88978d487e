"""Continual-learning metrics as functions of an accuracy matrix (../shared/reference, section 4).

``A[i][j]`` is the accuracy (%) on task j's test set after training task i; T tasks. Nothing here
knows about training: the matrices are the record, these are views of it.
"""

from __future__ import annotations

import numpy as np

FORGETTING_DEFINITIONS = {
    "chaudhry": "forgetting (Chaudhry et al. 2018): mean over j < T-1 of max_{i in [j, T-2]} A[i][j] - A[T-1][j]",
    "mammoth": "forgetting (Mammoth's variant): mean over j < T-1 of max_{i in [j, T-1]} A[i][j] - A[T-1][j] "
    "(never negative)",
}


def _square(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"an accuracy matrix is T x T with T >= 1, got shape {a.shape}")
    return a


def final_average_accuracy(a) -> float:
    """Mean over tasks of the accuracy after the last task: mean_j A[T-1][j]."""
    a = _square(a)
    return float(a[-1].mean())


def forgetting(a, variant: str = "chaudhry") -> float:
    """Average forgetting; ``variant`` is ``"chaudhry"`` (default) or ``"mammoth"``.

    Chaudhry: max over i in [j, T-2]; Mammoth also includes the last row, so never negative.
    NaN with a single task (nothing can be forgotten).
    """
    if variant not in FORGETTING_DEFINITIONS:
        raise ValueError(f"unknown forgetting variant {variant!r}: valid are {', '.join(FORGETTING_DEFINITIONS)}")
    a = _square(a)
    t = a.shape[0]
    if t < 2:
        return float("nan")
    last_row = t if variant == "mammoth" else t - 1
    drops = [a[j:last_row, j].max() - a[t - 1, j] for j in range(t - 1)]
    return float(np.mean(drops))


def backward_transfer(a) -> float:
    """GEM's backward transfer: mean over j < T-1 of A[T-1][j] - A[j][j] (NaN with one task)."""
    a = _square(a)
    t = a.shape[0]
    if t < 2:
        return float("nan")
    return float(np.mean([a[t - 1, j] - a[j, j] for j in range(t - 1)]))


def average_accuracy_curve(a) -> np.ndarray:
    """Mean accuracy over the tasks seen so far, after each task: mean_{j <= i} A[i][j]."""
    a = _square(a)
    return np.array([a[i, : i + 1].mean() for i in range(a.shape[0])])


def task_wise_average_accuracy(per_class_accuracy, classes_per_task: int) -> np.ndarray:
    """Paper's Figure 2: mean of the per-class accuracies within each task.

    ``per_class_accuracy`` is (after_task, K) or (K,); returns (after_task, T) or (T,).
    """
    p = np.asarray(per_class_accuracy, dtype=np.float64)
    k = p.shape[-1]
    if k % classes_per_task:
        raise ValueError(f"{k} classes do not split into tasks of {classes_per_task}")
    return p.reshape(*p.shape[:-1], k // classes_per_task, classes_per_task).mean(axis=-1)


def summarize(class_il, task_il) -> dict[str, float]:
    """The headline metrics of a run, for both settings; names state the definition used."""
    out = {}
    for setting, a in (("class_il", class_il), ("task_il", task_il)):
        out[f"faa_{setting}"] = final_average_accuracy(a)
        out[f"forgetting_{setting}"] = forgetting(a, "chaudhry")
        out[f"forgetting_mammoth_{setting}"] = forgetting(a, "mammoth")
        out[f"bwt_{setting}"] = backward_transfer(a)
    return out


# ---------------------------------------------------------------------------------------------
# Plasticity beside stability: what the run still learns, at each task's end.

PLASTICITY_DEFINITIONS = {
    "diagonal": "accuracy on the task just learned, after learning it: A[i][i] (its mean over tasks, "
    "Lopez-Paz & Ranzato 2017's learning accuracy)",
    "joint_shortfall": "mean over tasks i of A_joint[i][i] - A[i][i]: what the run learns of task i "
    "less than the joint model (trained on tasks 0..i together) does of it",
    "effective_rank": "effective rank of the penultimate features F (N x D) over the test samples of "
    "the tasks seen so far: exp(-sum_k p_k log p_k), p_k = s_k / sum_l s_l, s the singular values "
    "of F (Roy & Vetterli 2007; used for plasticity by Kumar et al. 2021, Dohare et al. 2024)",
    "dead_fraction": "fraction of the penultimate ReLU units that are 0 on every one of those samples "
    "(dead units; Sokar et al. 2023, Dohare et al. 2024)",
}


def diagonal_accuracy(a) -> np.ndarray:
    """A[i][i] for every task i: the accuracy on the task just learned, after learning it."""
    return np.diag(_square(a)).copy()


def joint_shortfall(a, joint) -> float:
    """Mean over tasks of ``joint[i][i] - a[i][i]`` (points): how much less of each new task the run
    learns than the joint model of the same benchmark, seed and class order (NaN when sizes differ)."""
    a, joint = _square(a), _square(joint)
    if a.shape != joint.shape:
        return float("nan")
    return float(np.mean(np.diag(joint) - np.diag(a)))


def effective_rank(singular_values) -> float:
    """Roy & Vetterli (2007): exp of the entropy of the normalised singular values,
    ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum_l s_l`` (0 log 0 = 0); between 1 and the
    number of values for a non-zero matrix, 0 for the zero matrix."""
    s = np.abs(np.asarray(singular_values, dtype=np.float64))
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))

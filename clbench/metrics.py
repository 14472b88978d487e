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


# ---------------------------------------------------------------------------------------------
# Evaluation during training (``--eval-every``): what task-end matrices cannot see.
#
# A curve is P evaluations: ``steps[p]``, the global step (every epoch of every task counted) after
# which evaluation p was taken, ``tasks[p]`` the task being trained then, and ``acc[p][j]`` the
# accuracy (%) on task j's fixed subset, NaN for a task not seen yet (j > tasks[p]).

CURVE_DEFINITIONS = {
    "stability_gap": "per task switch to task t (De Lange, van de Ven & Tuytelaars, ICLR 2023, 'Continual "
    "evaluation for lifelong learning: identifying the stability gap'): old(p) = mean_{j<t} acc[p][j]; "
    "gap_t = min_{p: tasks[p] = t} old(p) - old(p0), p0 the last evaluation before the switch (tasks[p0] = "
    "t-1): negative, in points, when the old tasks' accuracy drops after the switch",
    "steps_to_recover": "per task switch: steps[p] - steps[p0] for the first evaluation p of task t, at or "
    "after the minimum, with old(p) >= old(p0); 0 without a drop; None when it never recovers during task t",
    "aaa": "average anytime accuracy (Caccia et al. 2022; De Lange et al. 2023): mean over evaluations p of "
    "mean_{j <= tasks[p]} acc[p][j]",
    "min_acc": "worst-case accuracy min-ACC (De Lange et al. 2023): mean over the old tasks j (j < the "
    "last task trained) of min_{p: tasks[p] > j} acc[p][j], the lowest accuracy of task j once learned",
}


def _curve(steps, tasks, acc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps, tasks = np.asarray(steps, dtype=np.int64), np.asarray(tasks, dtype=np.int64)
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 2 or steps.shape != tasks.shape or steps.shape != (acc.shape[0],):
        raise ValueError(
            f"a curve is steps (P,), tasks (P,) and acc (P, T), got {steps.shape}, {tasks.shape}, {acc.shape}"
        )
    return steps, tasks, acc


def old_tasks_accuracy(tasks, acc) -> np.ndarray:
    """(P,): at each evaluation p, the mean accuracy over the tasks learned before the one being trained,
    ``mean_{j < tasks[p]} acc[p][j]`` (NaN during the first task)."""
    tasks, acc = np.asarray(tasks, dtype=np.int64), np.asarray(acc, dtype=np.float64)
    return np.array([acc[p, :t].mean() if t > 0 else np.nan for p, t in enumerate(tasks)])


def stability_gaps(steps, tasks, acc) -> list[dict]:
    """The stability gap at each task switch (``CURVE_DEFINITIONS["stability_gap"]`` and
    ``["steps_to_recover"]``): one dict per new task t with evaluations before and after its switch:
    ``task`` t, ``switch_step`` (the global step of the last evaluation before it), ``before`` old(p0),
    ``minimum`` (the lowest old(p) during task t), ``gap`` = minimum - before (points; negative: a drop),
    ``steps_to_minimum`` and ``steps_to_recover`` (steps after the switch; the latter None when old(p)
    never gets back to ``before`` during task t, 0 when it never dropped)."""
    steps, tasks, acc = _curve(steps, tasks, acc)
    old = old_tasks_accuracy(tasks, acc)
    out = []
    for t in sorted(set(tasks.tolist()) - {0}):
        before_idx, during = np.flatnonzero(tasks == t - 1), np.flatnonzero(tasks == t)
        if not len(before_idx) or not len(during):
            continue
        p0 = before_idx[-1]
        before, values = acc[p0, :t].mean(), old[during]  # old(p) of the tasks before t, at p0 too
        lowest = int(np.argmin(values))
        gap = float(values[lowest] - before)
        recover = 0 if gap >= 0 else None
        if recover is None:
            back = [p for p in during[lowest:] if old[p] >= before]  # old[p] = mean_{j<t} during task t
            recover = int(steps[back[0]] - steps[p0]) if back else None
        out.append(
            {
                "task": t,
                "switch_step": int(steps[p0]),
                "before": float(before),
                "minimum": float(values[lowest]),
                "gap": gap,
                "steps_to_minimum": int(steps[during[lowest]] - steps[p0]),
                "steps_to_recover": recover,
            }
        )
    return out


def average_anytime_accuracy(tasks, acc) -> float:
    """AAA (``CURVE_DEFINITIONS["aaa"]``): mean over evaluations of the mean accuracy over the tasks
    seen so far (tasks ``0..tasks[p]``); NaN without evaluations."""
    tasks, acc = np.asarray(tasks, dtype=np.int64), np.asarray(acc, dtype=np.float64)
    if not len(tasks):
        return float("nan")
    return float(np.mean([acc[p, : t + 1].mean() for p, t in enumerate(tasks)]))


def worst_case_accuracy(tasks, acc) -> float:
    """min-ACC (``CURVE_DEFINITIONS["min_acc"]``): per old task, its lowest accuracy over the evaluations
    after it was learned, averaged over the old tasks (NaN before a second task is trained)."""
    tasks, acc = np.asarray(tasks, dtype=np.int64), np.asarray(acc, dtype=np.float64)
    lows = [acc[tasks > j, j].min() for j in range(int(tasks.max(initial=0)))]
    return float(np.mean(lows)) if lows else float("nan")


def curve_summary(steps, tasks, acc) -> dict[str, float]:
    """A run's curve metrics: ``aaa``, ``min_acc``, the mean ``stability_gap`` over its task switches, the
    mean ``steps_to_minimum`` and ``recovered`` (the fraction of switches whose old tasks' accuracy got back
    to its pre-switch value during the new task)."""
    gaps = stability_gaps(steps, tasks, acc)
    nan = float("nan")
    return {
        "aaa": average_anytime_accuracy(tasks, acc),
        "min_acc": worst_case_accuracy(tasks, acc),
        "stability_gap": float(np.mean([g["gap"] for g in gaps])) if gaps else nan,
        "steps_to_minimum": float(np.mean([g["steps_to_minimum"] for g in gaps])) if gaps else nan,
        "recovered": float(np.mean([g["steps_to_recover"] is not None for g in gaps])) if gaps else nan,
    }

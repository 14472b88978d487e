"""What a run yields: its resolved config, the accuracy matrices and everything measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from clbench.metrics import summarize
from clbench.runs.resolved import ResolvedConfig

CLASS_IL_CONVENTIONS = ("all", "seen")
# How captions name each convention.
CLASS_IL_NAMES = {"all": "class-IL: argmax over all classes", "seen": "class-IL: argmax over the classes seen so far"}


@dataclass(frozen=True)
class Divergence:
    """Where a run's loss (or gradient) first became non-finite; it was frozen from that step on."""

    task: int  # 0-based
    step: int  # within the task, counting all its epochs' steps (0-based)
    last_finite_loss: float  # the run's total loss at its last finite step (NaN if none was)


@dataclass(frozen=True)
class SplitMatrices:
    """A run's accuracy matrices on a split other than the test sets (the validation split):
    A[i][j] on task j's samples of that split after training task i, as counts and in %."""

    class_il_correct: np.ndarray  # (T, T) int
    task_il_correct: np.ndarray  # (T, T) int
    class_il_seen_correct: np.ndarray  # (T, T) int
    counts: np.ndarray  # (T,) int: the split's samples per task

    @property
    def class_il(self) -> np.ndarray:
        return 100.0 * self.class_il_correct / self.counts

    @property
    def task_il(self) -> np.ndarray:
        return 100.0 * self.task_il_correct / self.counts

    @property
    def class_il_seen(self) -> np.ndarray:
        return 100.0 * self.class_il_seen_correct / self.counts

    @property
    def metrics(self) -> dict[str, float]:
        return summarize(self.class_il, self.task_il)

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in SPLIT_ARRAYS}

    @classmethod
    def from_dict(cls, d: dict) -> SplitMatrices:
        return cls(**{k: np.asarray(d[k], dtype=np.int64) for k in SPLIT_ARRAYS})


SPLIT_ARRAYS = ("class_il_correct", "task_il_correct", "class_il_seen_correct", "counts")


@dataclass(frozen=True)
class RunResult:
    config: ResolvedConfig
    class_il: np.ndarray  # (T, T) % : A[i][j], accuracy on task j after training task i
    task_il: np.ndarray  # (T, T) %
    class_il_correct: np.ndarray  # (T, T) int
    task_il_correct: np.ndarray  # (T, T) int
    test_counts: np.ndarray  # (T,) int: test samples per task
    per_class_accuracy: np.ndarray  # (T, K) %, class-IL, after each task
    confidence: np.ndarray  # (T, K, K): after task i, mean softmax vector of each true class's test samples
    train_loss: dict[str, np.ndarray]  # term -> (T,) mean per step over the task ("total" = sum of terms)
    train_s: np.ndarray  # (T,) wall seconds the whole group spent training each task
    eval_s: np.ndarray  # (T,) wall seconds the whole group spent evaluating after each task
    group_size: int  # runs that trained in lockstep with this one (times above are shared)
    device: str
    versions: dict[str, str]
    class_names: tuple[str, ...] = field(default=())
    # Class-IL with the argmax over the classes seen so far (tasks 0..i after task i; Mammoth since
    # 2023-12), from the same forward pass as ``class_il`` (argmax over all K classes). ``None`` for
    # runs stored before clbench measured it.
    class_il_seen: np.ndarray | None = None  # (T, T) %
    class_il_seen_correct: np.ndarray | None = None  # (T, T) int
    divergence: Divergence | None = None  # set when the run diverged (status ``diverged``)
    # kind ("true_class", "max") -> (T, T, HISTOGRAM_BINS) int: after task i, the test samples of
    # task j per bin of that softmax probability (clbench.evaluation); empty for older runs
    histograms: dict[str, np.ndarray] = field(default_factory=dict)
    # The matrices on the validation split (runs with ``config.validation`` > 0), else None.
    validation: SplitMatrices | None = None
    # Plasticity beside stability, after each task i: name -> (T,): ``effective_rank`` of the
    # penultimate features and ``dead_fraction`` of their ReLU units, over the test samples of tasks
    # 0..i (clbench.engine.evaluation); empty for runs stored before clbench measured them
    plasticity: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.config.identity()

    @property
    def diverged(self) -> bool:
        return self.divergence is not None

    def class_il_matrix(self, convention: str = "all") -> np.ndarray | None:
        """The class-IL matrix under ``convention``: ``all`` (argmax over every class) or ``seen``
        (over the classes seen so far). The final row is the same under both."""
        if convention not in CLASS_IL_CONVENTIONS:
            raise ValueError(f"invalid class-IL convention {convention!r}: valid are {', '.join(CLASS_IL_CONVENTIONS)}")
        return self.class_il if convention == "all" else self.class_il_seen

    @property
    def metrics(self) -> dict[str, float]:
        return summarize(self.class_il, self.task_il)

    @property
    def wall_s(self) -> float:
        """This run's share of its group's wall time (group time / group size)."""
        return float((self.train_s.sum() + self.eval_s.sum()) / self.group_size)

    def to_dict(self) -> dict:
        """JSON-ready: arrays as nested lists."""
        return {
            "run_id": self.run_id,
            "config": self.config.to_dict(),
            "class_il": self.class_il.tolist(),
            "task_il": self.task_il.tolist(),
            "class_il_correct": self.class_il_correct.tolist(),
            "task_il_correct": self.task_il_correct.tolist(),
            "test_counts": self.test_counts.tolist(),
            "per_class_accuracy": self.per_class_accuracy.tolist(),
            "confidence": self.confidence.tolist(),
            "train_loss": {k: v.tolist() for k, v in self.train_loss.items()},
            "train_s": self.train_s.tolist(),
            "eval_s": self.eval_s.tolist(),
            "group_size": self.group_size,
            "device": self.device,
            "versions": dict(self.versions),
            "class_names": list(self.class_names),
            "class_il_seen": None if self.class_il_seen is None else self.class_il_seen.tolist(),
            "class_il_seen_correct": None
            if self.class_il_seen_correct is None
            else self.class_il_seen_correct.tolist(),
            "divergence": None if self.divergence is None else asdict(self.divergence),
            "histograms": {k: v.tolist() for k, v in self.histograms.items()},
            "metrics": self.metrics,
            **({"validation": self.validation.to_dict()} if self.validation is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunResult:
        a = np.asarray
        return cls(
            config=ResolvedConfig.from_dict(d["config"]),
            class_il=a(d["class_il"], dtype=np.float64),
            task_il=a(d["task_il"], dtype=np.float64),
            class_il_correct=a(d["class_il_correct"], dtype=np.int64),
            task_il_correct=a(d["task_il_correct"], dtype=np.int64),
            test_counts=a(d["test_counts"], dtype=np.int64),
            per_class_accuracy=a(d["per_class_accuracy"], dtype=np.float64),
            confidence=a(d["confidence"], dtype=np.float64),
            train_loss={k: a(v, dtype=np.float64) for k, v in d["train_loss"].items()},
            train_s=a(d["train_s"], dtype=np.float64),
            eval_s=a(d["eval_s"], dtype=np.float64),
            group_size=int(d["group_size"]),
            device=d["device"],
            versions=dict(d["versions"]),
            class_names=tuple(d.get("class_names", ())),
            class_il_seen=None if d.get("class_il_seen") is None else a(d["class_il_seen"], dtype=np.float64),
            class_il_seen_correct=(
                None if d.get("class_il_seen_correct") is None else a(d["class_il_seen_correct"], dtype=np.int64)
            ),
            divergence=Divergence(**d["divergence"]) if d.get("divergence") else None,
            histograms={k: a(v, dtype=np.int64) for k, v in d.get("histograms", {}).items()},
            validation=SplitMatrices.from_dict(d["validation"]) if d.get("validation") else None,
        )


# Confidence histograms: HISTOGRAM_BINS equal bins over [0, 1] (bin b holds [b/B, (b+1)/B), the
# last one also 1.0), of the softmax probability of each test sample's true class and of its
# largest probability, per run and evaluated task.
HISTOGRAM_BINS = 20


HISTOGRAM_EDGES = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)


HISTOGRAM_KINDS = ("true_class", "max")

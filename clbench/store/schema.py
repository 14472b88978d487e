"""The registry's schema: the tables (SQLAlchemy 2 ORM classes), their version and the vocabularies their
columns hold.

The schema is explicit (the classes below) and versioned by one row in ``clbench_schema``:
``SCHEMA_VERSION`` is the version these classes describe. A column or table added since schema version 1
says so; ``clbench.store.migrations`` brings an older database to this version.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from clbench.runs.checks import MAX_LABEL_LENGTH

# The version and the vocabularies live in clbench.store.basics (no SQLAlchemy there): named here too.
from clbench.store.basics import (  # noqa: F401
    ACTIVE_STATUSES,
    APPLICATION,
    DONE_STATUSES,
    SCHEMA_VERSION,
    SETTINGS,
    SPLITS,
    STATUSES,
    STORED_STATUSES,
    TABLE_SINCE,
    utc_now,
)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON}


class SchemaInfo(Base):
    """One row: which application and schema version wrote this database."""

    __tablename__ = "clbench_schema"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Run(Base):
    """A run: its resolved config (the JSON is the record; the columns beside it are copies for
    filtering), its lifecycle and who ran it."""

    __tablename__ = "runs"
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ResolvedConfig.identity()
    config_hash: Mapped[str] = mapped_column(String(64), index=True)  # identity without the seed
    method: Mapped[str] = mapped_column(String(32), index=True)
    benchmark: Mapped[str] = mapped_column(String(64), index=True)
    backbone: Mapped[str] = mapped_column(String(32))
    buffer_size: Mapped[int] = mapped_column(Integer)
    mask: Mapped[str] = mapped_column(String(32))  # "none", "-inf" or the number
    mask_on: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    process_start: Mapped[int | None] = mapped_column(BigInteger)  # guards against pid reuse
    device: Mapped[str | None] = mapped_column(String(64))
    versions: Mapped[dict | None] = mapped_column(JSON)
    class_names: Mapped[list | None] = mapped_column(JSON)
    group_size: Mapped[int | None] = mapped_column(Integer)
    wall_s: Mapped[float | None] = mapped_column(Float)  # this run's share of its group's time
    error: Mapped[str | None] = mapped_column(Text)
    # Added in schema version 2.
    results_version: Mapped[int | None] = mapped_column(Integer)  # the engine's RESULTS_VERSION
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # owner last seen alive
    diverged_task: Mapped[int | None] = mapped_column(Integer)  # where the loss became non-finite
    diverged_step: Mapped[int | None] = mapped_column(Integer)  # step within that task (all epochs)
    last_finite_loss: Mapped[float | None] = mapped_column(Float)
    # Added in schema version 4: the class order (0: the benchmark's; K > 0: the permutation drawn from K).
    class_order: Mapped[int | None] = mapped_column(Integer, index=True)
    # Added in schema version 5.
    job_id: Mapped[str | None] = mapped_column(String(64))  # the cluster job (SLURM) computing it now


class RunExperiment(Base):
    """Experiment labels: a run belongs to every experiment whose sweep asked for it, cached or not."""

    __tablename__ = "run_experiments"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    experiment: Mapped[str] = mapped_column(String(MAX_LABEL_LENGTH), primary_key=True, index=True)


class Accuracy(Base):
    """A[after_task][on_task] for one setting and split: the record every metric is computed from."""

    __tablename__ = "accuracy"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    # Added in schema version 3 (rows before it: "test"): one of SPLITS.
    split: Mapped[str] = mapped_column(String(16), primary_key=True, default="test", server_default="test")
    setting: Mapped[str] = mapped_column(String(16), primary_key=True)  # one of SETTINGS
    after_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    on_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    accuracy: Mapped[float] = mapped_column(Float)  # %
    n_correct: Mapped[int] = mapped_column(Integer)
    n_total: Mapped[int] = mapped_column(Integer)


class ClassAccuracy(Base):
    """Class-IL accuracy (%) of each class after each task."""

    __tablename__ = "class_accuracy"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    after_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    accuracy: Mapped[float | None] = mapped_column(Float)


class Confidence(Base):
    """After each task, the mean softmax vector (over all K classes, a JSON list) of a true class's
    test samples. One row per vector rather than per cell: K x K cells per task grows too fast."""

    __tablename__ = "confidence"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    after_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    true_class: Mapped[int] = mapped_column(Integer, primary_key=True)
    probabilities: Mapped[list] = mapped_column(JSON)


class TaskLoss(Base):
    """Mean training loss per step of each term (``total`` = their sum) during each task."""

    __tablename__ = "task_losses"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    task: Mapped[int] = mapped_column(Integer, primary_key=True)
    term: Mapped[str] = mapped_column(String(64), primary_key=True)
    loss: Mapped[float | None] = mapped_column(Float)  # NULL where the loss was NaN (SQLite has no NaN)


class TaskTiming(Base):
    """Wall seconds the run's whole lockstep group spent training and evaluating each task."""

    __tablename__ = "task_timings"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    task: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_s: Mapped[float] = mapped_column(Float)
    eval_s: Mapped[float] = mapped_column(Float)


class ConfidenceHistogram(Base):
    """After each task, the histogram (``clbench.runs.results.HISTOGRAM_BINS`` equal bins over [0, 1],
    a JSON list of counts) of one softmax probability (``kind``: of the true class, or the largest)
    over the test samples of one task."""

    __tablename__ = "confidence_histograms"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    after_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    on_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # true_class | max
    counts: Mapped[list] = mapped_column(JSON)


class TaskPlasticity(Base):
    """Plasticity beside stability after each task (added with schema version 4): the effective rank of
    the penultimate features (Roy & Vetterli 2007) and the fraction of dead ReLU units, over the test
    samples of the tasks seen so far. The diagonal accuracy is the ``accuracy`` table's on_task = after_task."""

    __tablename__ = "task_plasticity"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    after_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    effective_rank: Mapped[float | None] = mapped_column(Float)  # NULL where not finite (a diverged run)
    dead_fraction: Mapped[float | None] = mapped_column(Float)


class AccuracyCurvePoint(Base):
    """Evaluations during training (runs with ``eval_every``; a new table, created by the migration of any
    older database): after ``step`` steps of the stream (global, every epoch of every task counted), while
    ``task_trained`` was trained, the correct answers on ``n_total`` samples of ``on_task``'s fixed subset
    of ``split`` (the validation split where the run holds one out, else the test sets), class-IL
    (``n_correct``, argmax over all classes) and task-IL (``n_correct_task_il``)."""

    __tablename__ = "accuracy_curve"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    split: Mapped[str] = mapped_column(String(16), primary_key=True)  # one of SPLITS
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    on_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_trained: Mapped[int] = mapped_column(Integer)
    n_correct: Mapped[int] = mapped_column(Integer)
    n_correct_task_il: Mapped[int] = mapped_column(Integer)
    n_total: Mapped[int] = mapped_column(Integer)


RESULT_TABLES = (
    Accuracy,
    ClassAccuracy,
    Confidence,
    TaskLoss,
    TaskTiming,
    ConfidenceHistogram,
    TaskPlasticity,
    AccuracyCurvePoint,
)


class MlflowRun(Base):
    """Which MLflow run holds what was exported to a tracking store (``clbench export --mlflow``):
    a clbench run (``entity`` run, ``key`` its run id) or a config's parent run (``entity``
    config, ``key`` the config hash). Exporting again to the same store adds nothing."""

    __tablename__ = "mlflow_runs"
    tracking_uri: Mapped[str] = mapped_column(String(1000), primary_key=True)
    entity: Mapped[str] = mapped_column(String(16), primary_key=True)  # run | config
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    mlflow_run_id: Mapped[str] = mapped_column(String(64))
    experiment_id: Mapped[str] = mapped_column(String(64))
    exported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


TABLE_NAMES = frozenset(Base.metadata.tables)
assert TABLE_NAMES == set(TABLE_SINCE), "every table has its TABLE_SINCE (clbench.store.basics)"

"""What a user asks for (``RunConfig``) and its resolution into what a run is (``ResolvedConfig``).

Resolution fills every unset hyperparameter from the benchmark protocol and the presets, and
records where each came from (``notes``). One validator (``validate_request``, ``check_field``)
serves every way a run is asked for: the CLI's options, a registered experiment's TOML file and
Python accept exactly the same runs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from clbench.data.specs import (
    MAX_VALIDATION,
    SyntheticOptions,
    check_validation_split,
    dataset_sizes,
    get_benchmark,
    validation_count,
)
from clbench.lockstep import BACKBONES, HEADS
from clbench.methods import METHODS, MethodRef, find_method
from clbench.methods.user import shipped_base
from clbench.runs.checks import InvalidValue, check_choice, check_in_range, check_real, check_whole
from clbench.runs.mask import MaskSpec
from clbench.runs.presets import Preset, lookup_preset
from clbench.runs.resolved import DER_LOGITS, LOGIT_STORING_METHODS, ResolvedConfig


@dataclass(frozen=True)
class RunConfig:
    """One run as requested. ``None`` means: take the protocol default or the preset."""

    method: str = "er"
    benchmark: str = "seq-fmnist"
    seed: int = 0
    buffer_size: int = 200
    mask: MaskSpec = field(default_factory=MaskSpec)
    backbone: str | None = None
    width: int | None = None  # ResNet base width (64 in the protocol)
    epochs: int | None = None
    batch_size: int | None = None
    minibatch_size: int | None = None
    lr: float | None = None
    alpha: float | None = None
    beta: float | None = None
    # The class order (``--class-order K``): None or 0, classes assigned to tasks in the benchmark's
    # label order; K > 0, a permutation of the classes drawn from K alone (see ``class_permutation``).
    class_order_seed: int | None = None
    synthetic: SyntheticOptions | None = None  # sizes of the "synthetic" benchmark
    der_logits: str | None = None  # DER/DER++: "pre" (default) or "post" (see DER_LOGITS); others ignore it
    head: str | None = None  # the classifier head: "linear" (default) or "cosine" (ER-ACE's original)
    options: Mapping[str, Any] | None = None  # the method's own hyperparameters (Method.options), overriding
    validation: float = 0.0  # fraction of each task's training data held out for validation (0: none)
    # Evaluation during training (``--eval-every N``): every N steps of a task's training, the accuracy of
    # each task seen so far on a fixed subset of ``eval_samples`` samples (default EVAL_SAMPLES) of its test
    # data (its validation data where the run holds some out), drawn from the seed alone. None: off.
    eval_every: int | None = None
    eval_samples: int | None = None

    def resolve(self) -> ResolvedConfig:
        """The resolved config (computed once per RunConfig: it is immutable)."""
        cached = self.__dict__.get("_resolved")
        if cached is None:
            cached = resolve(self)
            object.__setattr__(self, "_resolved", cached)  # not a field: eq, hash, asdict, replace ignore it
        return cached


# ---------------------------------------------------------------------------------------------
# Validation: one set of rules for every way a run is asked for (the CLI's options, a registered
# experiment's TOML file, Python), applied before anything is trained or stored.


# RunConfig field -> the check of a value given for it (None, where allowed, means "the default").
FIELD_CHECKS = {
    "seed": lambda v: check_whole("seed", v, 0),
    "buffer_size": lambda v: check_whole("buffer_size", v, 0),
    "width": lambda v: check_whole("width", v, 1),
    "epochs": lambda v: check_whole("epochs", v, 1),
    "batch_size": lambda v: check_whole("batch_size", v, 1),
    "minibatch_size": lambda v: check_whole("minibatch_size", v, 1),
    "lr": lambda v: check_real("lr", v, above=0.0),
    "alpha": lambda v: check_real("alpha", v, low=0.0),
    "beta": lambda v: check_real("beta", v, low=0.0),
    "class_order_seed": lambda v: check_whole("class_order_seed", v, 0),
    "backbone": lambda v: check_choice("backbone", v, BACKBONES, "valid backbones are"),
    "der_logits": lambda v: check_choice("der_logits", v, DER_LOGITS),
    "head": lambda v: check_choice("head", v, HEADS, "valid heads are"),
    "validation": lambda v: check_validation(v),
    "eval_every": lambda v: check_whole("eval_every", v, 1),
    "eval_samples": lambda v: check_whole("eval_samples", v, 1),
}
OPTIONAL_FIELDS = (
    "backbone",
    "width",
    "epochs",
    "batch_size",
    "minibatch_size",
    "lr",
    "alpha",
    "beta",
    "class_order_seed",
    "der_logits",
    "head",
    "eval_every",
    "eval_samples",
)
EVAL_SAMPLES = 1000  # samples per seen task evaluated during training, unless eval_samples says otherwise
# A run's subsets evaluated during training are prepared once (float32) and kept for the whole run when
# they take at most this many bytes (seq-fmnist: 5 tasks x 1,000 x 784 floats, 15.7 MB), else prepared
# again at every point: preparing them cost twice the MLP's forward pass (issue 21).
CURVE_CACHE_BYTES = 64 * 2**20


def curve_cache_bytes(n_tasks: int, n_samples: int, sample_size: int, max_bytes: int | None = None) -> int:
    """Bytes of one run's kept subsets (``n_tasks`` x ``n_samples`` inputs of ``sample_size`` float32
    values); 0 beyond ``max_bytes`` (default ``CURVE_CACHE_BYTES``), where none are kept."""
    size = n_tasks * n_samples * sample_size * 4
    return size if size <= (CURVE_CACHE_BYTES if max_bytes is None else max_bytes) else 0


SYNTHETIC_CHECKS = {
    "n_tasks": lambda v: check_whole("synthetic.n_tasks", v, 1, 10_000),
    "classes_per_task": lambda v: check_whole("synthetic.classes_per_task", v, 1, 10_000),
    "train_per_class": lambda v: check_whole("synthetic.train_per_class", v, 1),
    "test_per_class": lambda v: check_whole("synthetic.test_per_class", v, 1),
    "noise": lambda v: check_real("synthetic.noise", v, low=0.0),
    "data_seed": lambda v: check_whole("synthetic.data_seed", v, 0),
    "backbone": lambda v: check_choice("synthetic.backbone", v, BACKBONES),
}


def check_validation(value: Any) -> float:
    """A validation fraction: 0 (no split) or in (0, MAX_VALIDATION]."""
    requirement = f"give a fraction of each task's training data in (0, {MAX_VALIDATION:g}], or 0 for none"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InvalidValue("validation", value, requirement)
    if not 0.0 <= float(value) <= MAX_VALIDATION:
        raise InvalidValue("validation", value, requirement)
    return float(value)


def _check_validation_sizes(cfg: RunConfig, n_classes: int) -> None:
    """A split that leaves a class without validation or training samples is refused before anything
    runs (class sizes from the benchmark's sizes: exact for the balanced ones and the synthetic one)."""
    if cfg.validation:
        per_class = dataset_sizes(cfg.benchmark, cfg.synthetic)[0] // n_classes
        try:
            check_validation_split({0: per_class}, float(cfg.validation))
        except ValueError as exc:
            raise InvalidValue("validation", cfg.validation, str(exc).split(": ", 1)[1]) from None


def check_field(name: str, value: Any) -> Any:
    """The check of one :class:`RunConfig` field's value (``None`` passes for the optional ones)."""
    if value is None and name in OPTIONAL_FIELDS:
        return None
    return FIELD_CHECKS[name](value)


def check_synthetic(options: Any) -> SyntheticOptions:
    if not isinstance(options, SyntheticOptions):
        raise InvalidValue("synthetic", options, "give the synthetic benchmark's options as a table")
    for f in fields(SyntheticOptions):
        value = getattr(options, f.name)
        if f.name in SYNTHETIC_CHECKS:
            SYNTHETIC_CHECKS[f.name](value)
        elif f.name == "augment" and not isinstance(value, bool):
            raise InvalidValue("synthetic.augment", value, "give true or false")
        elif f.name == "input_shape":
            if not isinstance(value, (tuple, list)) or len(value) != 3:
                raise InvalidValue("synthetic.input_shape", value, "give [channels, height, width]")
            for v in value:
                check_whole("synthetic.input_shape", v, 1, 4096)
    return options


def validate_request(cfg: RunConfig) -> None:
    """Every value of ``cfg`` is one a run can have, and one every supported database can store.
    Raises :class:`InvalidValue` (or ``ValueError`` for names) naming the first that is not."""
    if not isinstance(cfg.method, str):  # which names exist: find_method, in resolve
        raise ValueError(f"unknown method {cfg.method!r}: valid methods are {', '.join(METHODS)}")
    if not isinstance(cfg.benchmark, str):
        raise InvalidValue("benchmark", cfg.benchmark, "give a benchmark's name")
    get_benchmark(cfg.benchmark)  # the one-line error naming the valid benchmarks
    if not isinstance(cfg.mask, MaskSpec):
        raise InvalidValue("mask", cfg.mask, "give a MaskSpec")
    for name in FIELD_CHECKS:
        check_field(name, getattr(cfg, name))
    if cfg.synthetic is not None:
        check_synthetic(cfg.synthetic)


def mask_rows(on: str) -> set[str]:
    """The rows a mask placed ``on`` (--mask-on) is asked to act on."""
    return {"stream", "buffer"} if on == "both" else {on}


def _placements(acts_on: tuple[str, ...]) -> list[str]:
    """The --mask-on values under which a mask acts for a method that masks ``acts_on`` rows: every
    row the placement names must be one the method's masked cross-entropy sees (``both`` asks for
    stream and buffer rows: a method that masks one of them only takes that one)."""
    return [p for p in ("stream", "buffer", "both") if mask_rows(p) <= set(acts_on)]


def _check_mask(mask: MaskSpec, name: str, acts_on: tuple[str, ...]) -> None:
    if not mask.enabled:
        return
    if not acts_on:
        raise ValueError(
            f"{name} has no softmax cross-entropy for a mask to act on (none at all, or one the method "
            f"already restricts to its own classes): run it with mask none"
        )
    if not mask_rows(mask.on) <= set(acts_on):
        where = "on both stream and buffer rows" if mask.on == "both" else f"on the {mask.on}"
        raise ValueError(
            f"a mask {where} cannot act in {name}, whose masked cross-entropy sees only {' and '.join(acts_on)} "
            f"rows: valid placements for {name} are {', '.join(_placements(acts_on))}"
        )


def _check_keep(mask: MaskSpec, name: str, keeps: tuple[str, ...]) -> None:
    if mask.enabled and mask.keep not in keeps:
        raise ValueError(
            f"a mask keeping the {mask.keep} classes cannot act in {name} (its cross-entropy already "
            f"limits its softmax there): valid keep-sets for {name} are {', '.join(keeps)}"
        )


def _option_value(name: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the option's default (bool, int, float or str); one-line errors."""
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
    elif kind in (int, float):
        try:
            number = kind(value) if not isinstance(value, str) else kind(float(value)) if kind is float else int(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if kind is int and isinstance(value, float) and not value.is_integer():
            number = None  # 1.7 from a file is no more a whole number than "1.7" on the command line
        if number is not None and not isinstance(value, bool) and math.isfinite(number):
            return number
    else:
        return str(value)
    what = {bool: "true or false", int: "a whole number", float: "a number"}.get(kind, f"a {kind.__name__}")
    raise ValueError(f"invalid value {value!r} for the {name} option {key}: give {what} (default {default!r})")


def _resolve_options(ref: MethodRef, preset: Preset, given: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    defaults = dict(ref.card.options)
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        valid = ", ".join(f"{k} (default {v!r})" for k, v in defaults.items()) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for {ref.name}: its options are {valid}")
    values = {**defaults, **{k: v for k, v in preset.options.items() if k in defaults}}
    values.update({k: _option_value(ref.name, k, v, defaults[k]) for k, v in (given or {}).items()})
    ranges = dict(ref.card.option_ranges)
    for key in sorted(set(given or {}) & set(ranges)):
        whole = type(defaults[key]) is int
        try:
            check_in_range(key, values[key], ranges[key], whole=whole)
        except InvalidValue as exc:
            raise ValueError(
                f"invalid value {given[key]!r} for the {ref.name} option {key}: {exc.requirement} "
                f"(default {defaults[key]!r})"
            ) from None
    return tuple(sorted(values.items()))


def _class_order(value: int | None, spec) -> int | None:
    """The stored class order: ``None`` for the benchmark's own (0 or None asked for, so the identity
    of every run in that order stays what it was), else K. A benchmark of one task has no order to
    change: K > 0 is refused there."""
    if not value:
        return None
    if spec.n_tasks < 2:
        raise InvalidValue(
            "class_order_seed",
            value,
            f"{spec.name} has {spec.n_tasks} task, so no class order to change: give 0 (its own order)",
        )
    return int(value)


def _task_sizes(cfg: RunConfig, spec) -> tuple[int, int]:
    """(training samples, evaluated samples) of the smallest task: its training rows once a validation
    split is held out, and its test rows (its validation rows where the run holds some out). Class
    sizes from the benchmark's sizes: exact for the balanced ones and the synthetic one."""
    train, test = dataset_sizes(cfg.benchmark, cfg.synthetic)
    per_class, per_task = train // spec.n_classes, spec.n_classes // spec.n_tasks
    held = validation_count(per_class, float(cfg.validation)) if cfg.validation else 0
    evaluated = held * per_task if held else (test // spec.n_classes) * per_task
    return (per_class - held) * per_task, evaluated


def _eval_schedule(cfg: RunConfig, spec, epochs: int, batch_size: int) -> tuple[int, int]:
    """(eval_every, eval_samples) as resolved: (0, 0) when off (so every identity stays what it was).
    Refused: an interval above a task's training steps, a subset larger than a task's evaluated data."""
    if not cfg.eval_every:
        if cfg.eval_samples is not None:
            raise InvalidValue(
                "eval_samples",
                cfg.eval_samples,
                "it sets the size of the evaluations during training: give --eval-every N (eval_every) too",
            )
        return 0, 0
    n_train, n_eval = _task_sizes(cfg, spec)
    steps = epochs * math.ceil(n_train / batch_size)
    if cfg.eval_every > steps:
        raise InvalidValue(
            "eval_every", cfg.eval_every, f"a task of {cfg.benchmark} trains {steps} steps: give 1 <= N <= {steps}"
        )
    samples = EVAL_SAMPLES if cfg.eval_samples is None else int(cfg.eval_samples)
    if cfg.eval_samples is None:
        samples = min(samples, n_eval)  # the default: at most the whole of a task's data
    if samples > n_eval:
        where = "validation" if cfg.validation else "test"
        raise InvalidValue(
            "eval_samples", samples, f"a task of {cfg.benchmark} has {n_eval} {where} samples: give 1 <= S <= {n_eval}"
        )
    return int(cfg.eval_every), samples


def resolve(cfg: RunConfig) -> ResolvedConfig:
    """Fill defaults from the benchmark protocol and the presets; validate everything."""
    validate_request(cfg)
    ref = find_method(cfg.method)
    card, name = ref.card, ref.name
    spec = get_benchmark(cfg.benchmark)
    if cfg.benchmark == "synthetic":
        spec = (cfg.synthetic or SyntheticOptions()).spec()
    elif cfg.synthetic is not None:
        raise ValueError("synthetic options are only valid with the synthetic benchmark")
    notes: list[str] = []
    class_order = _class_order(cfg.class_order_seed, spec)
    buffer_size = int(cfg.buffer_size)
    has_memory = card.has_memory
    if not has_memory:
        buffer_size = 0
    elif buffer_size < 1:
        raise ValueError(f"{name} needs a buffer of at least 1 sample, got {cfg.buffer_size}")
    else:
        stream = dataset_sizes(cfg.benchmark, cfg.synthetic)[0]
        if buffer_size > stream:
            # More slots than samples would only allocate memory that is never written.
            raise InvalidValue(
                "buffer_size",
                buffer_size,
                f"{cfg.benchmark}'s stream has {stream} training samples; a buffer holds at most that many",
            )
    backbone = cfg.backbone or spec.backbone
    width = (cfg.width or 64) if backbone == "resnet18" else None
    head = cfg.head or "linear"
    base = shipped_base(ref.cls) if ref.cls is not None else None
    try:
        preset = lookup_preset(cfg.benchmark, base or name, buffer_size)
        if base is not None:
            preset = replace(
                preset,
                notes=(f"{name} is a method of your own: using the presets of {base}, its shipped base class",)
                + preset.notes,
            )
    except ValueError:
        if cfg.lr is None:
            raise
        preset = Preset(None, None, None, None, "none", (f"no preset for {name} on {cfg.benchmark}: lr as given",))
    notes.extend(preset.notes)
    notes.extend(card.run_notes)
    if head == "cosine":
        notes.append("cosine classifier head: bias-free, 10 x cosine similarity (the original ER-ACE's)")
    mask = cfg.mask
    if not mask.enabled:  # where and what a mask keeps mean nothing without a mask
        mask = MaskSpec(None, "stream" if mask.on == "buffer" else mask.on)
    _check_mask(mask, name, card.mask_acts_on)
    _check_keep(mask, name, card.mask_keeps)
    _check_validation_sizes(cfg, spec.n_classes)
    der_logits = (cfg.der_logits or "pre") if name in LOGIT_STORING_METHODS else None
    options = _resolve_options(ref, preset, cfg.options)
    epochs, batch_size = (
        int(pick_value(cfg.epochs, None, spec.epochs)),
        int(pick_value(cfg.batch_size, None, spec.batch_size)),
    )
    eval_every, eval_samples = _eval_schedule(cfg, spec, epochs, batch_size)

    pick = pick_value
    needs_replay = card.replay_draws > 0
    resolved = ResolvedConfig(
        method=name,
        benchmark=cfg.benchmark,
        seed=int(cfg.seed),
        buffer_size=buffer_size,
        mask=mask,
        backbone=backbone,
        width=width,
        epochs=epochs,
        batch_size=batch_size,
        minibatch_size=int(pick(cfg.minibatch_size, preset.minibatch_size, spec.minibatch_size)) if needs_replay else 0,
        lr=float(pick(cfg.lr, preset.lr, None)),
        alpha=float(pick(cfg.alpha, preset.alpha, 0.0)) if "alpha" in card.weights else 0.0,
        beta=float(pick(cfg.beta, preset.beta, 0.0)) if "beta" in card.weights else 0.0,
        lr_milestones=spec.lr_milestones,
        class_order_seed=class_order,
        synthetic=(cfg.synthetic or SyntheticOptions()) if cfg.benchmark == "synthetic" else None,
        preset_source=preset.source,
        notes=tuple(notes),
        der_logits=der_logits,
        head=head,
        options=options,
        method_source=ref.source,
        method_sha256=ref.sha256,
        validation=float(cfg.validation),
        eval_every=eval_every,
        eval_samples=eval_samples,
    )
    overridden = [
        n for n in ("lr", "minibatch_size", "alpha", "beta", "epochs", "batch_size") if getattr(cfg, n) is not None
    ]
    overridden += [f"option {k}" for k in (cfg.options or {})]
    if overridden:
        resolved = replace(resolved, notes=resolved.notes + (f"overridden: {', '.join(overridden)}",))
    return resolved


def pick_value(override, preset_value, default):
    """The value given, else the preset's, else the default."""
    return override if override is not None else (preset_value if preset_value is not None else default)


def resolve_unique(configs: Sequence[RunConfig | ResolvedConfig]) -> list[ResolvedConfig]:
    """Resolve every config (raising its ``ValueError``) and drop duplicate runs, keeping the first:
    e.g. ``sgd`` with two buffer sizes is one run, since it has no buffer."""
    unique: dict[str, ResolvedConfig] = {}
    code: dict[str, ResolvedConfig] = {}  # method name -> the first config of that name
    for cfg in configs:
        resolved = cfg.resolve() if isinstance(cfg, RunConfig) else cfg
        first = code.setdefault(resolved.method, resolved)
        if first.method_sha256 != resolved.method_sha256:  # two methods, one name: rows no one could tell apart
            raise ValueError(
                f"two different methods are named {resolved.method!r}: {first.method_source or 'the shipped one'} "
                f'and {resolved.method_source}; give one of them another name (its class attribute name = "...")'
            )
        unique.setdefault(resolved.identity(), resolved)
    return list(unique.values())

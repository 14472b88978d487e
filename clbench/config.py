"""Run configuration: what a user asks for (``RunConfig``) and what a run is (``ResolvedConfig``).

Resolution fills every unset hyperparameter from the benchmark protocol and the presets, and
records where each came from (``notes``). The resolved config is the run's identity: its hash
(with the seed) names the run, and two runs with the same identity give the same results.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .backbones import HEADS
from .data.benchmarks import SyntheticOptions, dataset_sizes, get_benchmark
from .masking import MaskSpec
from .methods import METHOD_CLASSES, Method, MethodRef, find_method, load_method, shipped_base
from .presets import Preset, lookup_preset

# The version of what the engine computes. Bump it with every change that alters any number a run
# produces, even at rounding level: a run's identity includes it, so runs computed before the change
# are never served from the cache again (the store shows them as ``stale``).
#   1: clbench 0.1.0.
#   2: the replay plan from step 256 of an epoch on no longer counts the samples seen twice (a buffer
#      that was not yet full was sampled in slots never written: blank inputs with label 0).
RESULTS_VERSION = 2

# The largest whole number every supported database stores in an INTEGER column (PostgreSQL's
# integer is 32-bit signed; SQLite's would take more, so the two would disagree on what is valid).
INT_MAX = 2**31 - 1
MAX_LABEL_LENGTH = 200  # characters of an experiment label (the store's column width)
# A sweep's size is bounded before it is built: each run is a row to plan, store and list. 100,000
# runs plan in seconds; more belong in several sweeps (at ~1 s per run, this is a day of CPU).
MAX_SWEEP_RUNS = 100_000

METHODS = tuple(METHOD_CLASSES)  # the shipped ones; a method of your own is PATH.py:CLASS or an entry point
BUFFERLESS_METHODS = tuple(n for n, c in METHOD_CLASSES.items() if not (c.uses_buffer or c.exemplar_memory))
# Which logits DER and DER++ store with a sample: "pre", those of the training forward, before the
# step (Mammoth's DER/DER++); "post", a fresh forward of the incoming batch after the step (the
# paper's authors' earlier public code, for its masked DER++).
DER_LOGITS = ("pre", "post")
LOGIT_STORING_METHODS = ("der", "derpp")
BACKBONES = ("mlp", "resnet18")


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
    class_order_seed: int | None = None  # None: classes assigned to tasks in label order
    synthetic: SyntheticOptions | None = None  # sizes of the "synthetic" benchmark
    der_logits: str | None = None  # DER/DER++: "pre" (default) or "post" (see DER_LOGITS); others ignore it
    head: str | None = None  # the classifier head: "linear" (default) or "cosine" (ER-ACE's original)
    options: Mapping[str, Any] | None = None  # the method's own hyperparameters (Method.options), overriding

    def resolve(self) -> "ResolvedConfig":
        """The resolved config (computed once per RunConfig: it is immutable)."""
        cached = self.__dict__.get("_resolved")
        if cached is None:
            cached = resolve(self)
            object.__setattr__(self, "_resolved", cached)  # not a field: eq, hash, asdict, replace ignore it
        return cached


@dataclass(frozen=True)
class ResolvedConfig:
    """Every value a run depends on. Immutable; ``identity`` hashes all of it but the notes."""

    method: str
    benchmark: str
    seed: int
    buffer_size: int
    mask: MaskSpec
    backbone: str
    width: int | None
    epochs: int
    batch_size: int
    minibatch_size: int
    lr: float
    alpha: float
    beta: float
    lr_milestones: tuple[int, ...]
    class_order_seed: int | None
    synthetic: SyntheticOptions | None
    preset_source: str
    notes: tuple[str, ...] = ()
    der_logits: str | None = None  # "pre" or "post" for der/derpp; None for other methods
    head: str = "linear"  # the classifier head (clbench.backbones.HEADS)
    options: tuple[tuple[str, Any], ...] = ()  # the method's options, every one (sorted by name)
    method_source: str | None = None  # a method of your own: "/path/file.py:Class" or "entry-point:NAME"
    method_sha256: str | None = None  # ... and the SHA-256 of the file defining it (part of the identity)

    def to_dict(self) -> dict:
        """The config as JSON-able values. Fields added after results version 2 appear only when not
        at their default (a linear head, no options, a shipped method), so the configs, and the
        identities, of the runs of the earlier methods stay what they were."""
        # Every field is a plain value but those converted below (asdict's deep copy costs 10x more,
        # and a sweep's planning calls this once per run).
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["mask"] = self.mask.to_dict()
        d["lr_milestones"] = list(self.lr_milestones)
        d["notes"] = list(self.notes)
        d["synthetic"] = self.synthetic.to_dict() if self.synthetic else None
        d["options"] = dict(self.options)
        for name, default in _LATER_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @property
    def option_values(self) -> dict[str, Any]:
        return dict(self.options)

    def method_instance(self) -> Method:
        """The method object this run trains with (a file of your own must still hash to
        ``method_sha256``)."""
        return load_method(self.method, self.method_source, self.method_sha256)

    @classmethod
    def from_dict(cls, d: dict) -> "ResolvedConfig":
        d = dict(d)
        d["mask"] = MaskSpec.from_dict(d["mask"])
        d["lr_milestones"] = tuple(d["lr_milestones"])
        d["notes"] = tuple(d.get("notes", ()))
        d.setdefault("der_logits", "pre" if d["method"] in LOGIT_STORING_METHODS else None)
        d["options"] = tuple(sorted(dict(d.get("options") or {}).items()))
        if d.get("synthetic"):
            s = dict(d["synthetic"])
            s["input_shape"] = tuple(s["input_shape"])
            d["synthetic"] = SyntheticOptions(**s)
        return cls(**d)

    def identity(self) -> str:
        """A stable hash of the resolved config, the seed and the engine's ``RESULTS_VERSION``
        (notes excluded: they are derived). The same config computed by an engine whose results
        differ has another identity."""
        cached = self.__dict__.get("_identity")  # computed once: a sweep asks for it many times
        if cached is None:
            d = self.to_dict()
            d.pop("notes")
            d.pop("preset_source")
            d.pop("method_source", None)  # where the file is does not change what it computes; its hash does
            blob = json.dumps(d, sort_keys=True, separators=(",", ":")) + f"|results_version={RESULTS_VERSION}"
            cached = hashlib.sha256(blob.encode()).hexdigest()[:16]
            object.__setattr__(self, "_identity", cached)  # not a field: eq, hash, asdict, replace ignore it
        return cached

    def group_key(self) -> tuple:
        """Runs with equal keys can train in lockstep as one batched computation.

        Everything that shapes the computation (data, network, step schedule) must agree; the seed,
        buffer size, mask, lr, alpha and beta may differ per run.
        """
        key = (
            self.benchmark, self.synthetic, self.class_order_seed, self.backbone, self.width,
            self.method, self.epochs, self.batch_size, self.minibatch_size, self.lr_milestones, self.der_logits,
            self.head, self.options, self.method_sha256,
        )
        # Methods whose per-run shapes follow the buffer size (class-balanced memories, exemplars
        # added to the training set) group only runs of one buffer size.
        return key + ((self.buffer_size,) if _method_class(self).group_by_buffer_size else ())

    @property
    def uses_buffer(self) -> bool:
        return self.buffer_size > 0


# Added after results version 2: left out of to_dict (and the identity) at these values.
_LATER_FIELDS = {"head": "linear", "options": {}, "method_source": None, "method_sha256": None}


def _method_class(cfg: ResolvedConfig) -> type[Method]:
    if cfg.method_source is None:
        return METHOD_CLASSES[cfg.method]
    return type(cfg.method_instance())


# ---------------------------------------------------------------------------------------------
# Validation: one set of rules for every way a run is asked for (the CLI's options, a registered
# experiment's TOML file, Python), applied before anything is trained or stored.


class InvalidValue(ValueError):
    """A value no run can have. ``field`` names it as a :class:`RunConfig` field (``synthetic.noise``
    for a synthetic option); ``requirement`` says what is valid. Callers that know where the value
    came from (an option, a key of a file) reword it with :meth:`message_for`."""

    def __init__(self, field: str, value: Any, requirement: str):
        self.field, self.value, self.requirement = field, value, requirement
        super().__init__(self.message_for(field))

    def message_for(self, name: str) -> str:
        return f"invalid {name} {_shown(self.value)}: {self.requirement}"


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_whole(name: str, value: Any, low: int, high: int = INT_MAX) -> int:
    """``value`` as an int in ``[low, high]`` (bools and fractional numbers are not whole numbers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer() and low <= value <= high:
            raise InvalidValue(name, value, f"give a whole number such as {int(value)}, not a decimal")
        raise InvalidValue(name, value, f"give a whole number from {low} to {high}")
    if not low <= value <= high:
        raise InvalidValue(name, value, f"give a whole number from {low} to {high}")
    return int(value)


def check_real(name: str, value: Any, *, low: float | None = None, above: float | None = None) -> float:
    """``value`` as a finite float, ``>= low`` or ``> above`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        bound = f" >= {low:g}" if low is not None else (f" > {above:g}" if above is not None else "")
        raise InvalidValue(name, value, f"give a finite number{bound}")
    v = float(value)
    if low is not None and v < low:
        raise InvalidValue(name, value, f"give a finite number >= {low:g}")
    if above is not None and not v > above:
        raise InvalidValue(name, value, f"give a finite number > {above:g}")
    return v


def check_choice(name: str, value: Any, choices: tuple[str, ...], valid: str = "valid are") -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidValue(name, value, f"{valid} {', '.join(choices)}")
    return value


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
}
OPTIONAL_FIELDS = ("backbone", "width", "epochs", "batch_size", "minibatch_size", "lr", "alpha", "beta",
                   "class_order_seed", "der_logits", "head")
SYNTHETIC_CHECKS = {
    "n_tasks": lambda v: check_whole("synthetic.n_tasks", v, 1, 10_000),
    "classes_per_task": lambda v: check_whole("synthetic.classes_per_task", v, 1, 10_000),
    "train_per_class": lambda v: check_whole("synthetic.train_per_class", v, 1),
    "test_per_class": lambda v: check_whole("synthetic.test_per_class", v, 1),
    "noise": lambda v: check_real("synthetic.noise", v, low=0.0),
    "data_seed": lambda v: check_whole("synthetic.data_seed", v, 0),
    "backbone": lambda v: check_choice("synthetic.backbone", v, BACKBONES),
}


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


def validate_request(cfg: "RunConfig") -> None:
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


def check_label(label: Any, what: str = "experiment label") -> str:
    """An experiment label every supported database stores as given: non-empty text of at most
    ``MAX_LABEL_LENGTH`` characters, without control characters."""
    if not isinstance(label, str) or not label.strip():
        raise InvalidValue(what, label, "give a non-empty name")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidValue(what, f"{label[:20]}...", f"it has {len(label)} characters; give at most {MAX_LABEL_LENGTH}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in label):
        raise InvalidValue(what, label, "give a name without control characters (newlines, tabs, ...)")
    return label


def _placements(acts_on: tuple[str, ...]) -> list[str]:
    """The --mask-on values under which a mask acts for a method that masks ``acts_on`` rows."""
    return [p for p in ("stream", "buffer", "both") if ({"stream", "buffer"} if p == "both" else {p}) & set(acts_on)]


def _check_mask(mask: MaskSpec, name: str, acts_on: tuple[str, ...]) -> None:
    if not mask.enabled:
        return
    if not acts_on:
        raise ValueError(f"{name} has no softmax cross-entropy for a mask to act on (an unmasked reference "
                         f"baseline): run it with mask none")
    if not ({"stream", "buffer"} if mask.on == "both" else {mask.on}) & set(acts_on):
        raise ValueError(f"a mask on the {mask.on} cannot act in {name}, whose cross-entropy sees {' or '.join(acts_on)} "
                         f"rows: valid placements for {name} are {', '.join(_placements(acts_on))}")


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
        except (TypeError, ValueError):
            number = None
        if number is not None and not isinstance(value, bool) and math.isfinite(number):
            return number
    else:
        return str(value)
    raise ValueError(f"invalid value {value!r} for the {name} option {key}: give a {kind.__name__} (default {default!r})")


def _resolve_options(ref: MethodRef, preset: Preset, given: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    defaults = dict(ref.cls.options)
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        valid = ", ".join(f"{k} (default {v!r})" for k, v in defaults.items()) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for {ref.name}: its options are {valid}")
    values = {**defaults, **{k: v for k, v in preset.options.items() if k in defaults}}
    values.update({k: _option_value(ref.name, k, v, defaults[k]) for k, v in (given or {}).items()})
    return tuple(sorted(values.items()))


def resolve(cfg: RunConfig) -> ResolvedConfig:
    """Fill defaults from the benchmark protocol and the presets; validate everything."""
    validate_request(cfg)
    ref = find_method(cfg.method)
    cls, name = ref.cls, ref.name
    spec = get_benchmark(cfg.benchmark)
    if cfg.benchmark == "synthetic":
        spec = (cfg.synthetic or SyntheticOptions()).spec()
    elif cfg.synthetic is not None:
        raise ValueError("synthetic options are only valid with the synthetic benchmark")
    if cfg.seed < 0:
        raise ValueError(f"seed must be >= 0, got {cfg.seed}")
    notes: list[str] = []
    buffer_size = int(cfg.buffer_size)
    has_memory = cls.uses_buffer or cls.exemplar_memory
    if not has_memory:
        buffer_size = 0
    elif buffer_size < 1:
        raise ValueError(f"{name} needs a buffer of at least 1 sample, got {cfg.buffer_size}")
    else:
        stream = dataset_sizes(cfg.benchmark, cfg.synthetic)[0]
        if buffer_size > stream:
            # More slots than samples would only allocate memory that is never written.
            raise InvalidValue("buffer_size", buffer_size, f"{cfg.benchmark}'s stream has {stream} training "
                               f"samples; a buffer holds at most that many")
    backbone = cfg.backbone or spec.backbone
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}: valid backbones are {', '.join(BACKBONES)}")
    width = (cfg.width or 64) if backbone == "resnet18" else None
    head = cfg.head or "linear"
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}: valid heads are {', '.join(HEADS)}")
    base = shipped_base(cls) if ref.source is not None else None
    try:
        preset = lookup_preset(cfg.benchmark, base or name, buffer_size)
        if base is not None:
            preset = replace(preset, notes=(f"{name} is a method of your own: using the presets of {base}, its "
                                            "shipped base class",) + preset.notes)
    except ValueError:
        if cfg.lr is None:
            raise
        preset = Preset(None, None, None, None, "none", (f"no preset for {name} on {cfg.benchmark}: lr as given",))
    notes.extend(preset.notes)
    notes.extend(cls.run_notes)
    if head == "cosine":
        notes.append("cosine classifier head: bias-free, 10 x cosine similarity (the original ER-ACE's)")
    mask = cfg.mask
    if mask.on == "buffer" and not mask.enabled:
        mask = MaskSpec(None, "stream")
    _check_mask(mask, name, cls.mask_acts_on)
    if cfg.der_logits is not None and cfg.der_logits not in DER_LOGITS:
        raise ValueError(f"invalid der_logits {cfg.der_logits!r}: valid are {', '.join(DER_LOGITS)}")
    der_logits = (cfg.der_logits or "pre") if name in LOGIT_STORING_METHODS else None
    options = _resolve_options(ref, preset, cfg.options)

    def pick(override, preset_value, default):
        return override if override is not None else (preset_value if preset_value is not None else default)

    needs_replay = cls.replay_draws > 0
    resolved = ResolvedConfig(
        method=name,
        benchmark=cfg.benchmark,
        seed=int(cfg.seed),
        buffer_size=buffer_size,
        mask=mask,
        backbone=backbone,
        width=width,
        epochs=int(pick(cfg.epochs, None, spec.epochs)),
        batch_size=int(pick(cfg.batch_size, None, spec.batch_size)),
        minibatch_size=int(pick(cfg.minibatch_size, preset.minibatch_size, spec.minibatch_size)) if needs_replay else 0,
        lr=float(pick(cfg.lr, preset.lr, None)),
        alpha=float(pick(cfg.alpha, preset.alpha, 0.0)) if "alpha" in cls.weights else 0.0,
        beta=float(pick(cfg.beta, preset.beta, 0.0)) if "beta" in cls.weights else 0.0,
        lr_milestones=spec.lr_milestones,
        class_order_seed=cfg.class_order_seed,
        synthetic=(cfg.synthetic or SyntheticOptions()) if cfg.benchmark == "synthetic" else None,
        preset_source=preset.source,
        notes=tuple(notes),
        der_logits=der_logits,
        head=head,
        options=options,
        method_source=ref.source,
        method_sha256=ref.sha256,
    )
    for field_name in ("epochs", "batch_size"):
        if getattr(resolved, field_name) < 1:
            raise ValueError(f"{field_name} must be >= 1, got {getattr(resolved, field_name)}")
    if needs_replay and resolved.minibatch_size < 1:
        raise ValueError(f"minibatch_size must be >= 1, got {resolved.minibatch_size}")
    if not resolved.lr > 0:
        raise ValueError(f"lr must be > 0, got {resolved.lr}")
    if resolved.alpha < 0 or resolved.beta < 0:
        raise ValueError("alpha and beta must be >= 0")
    overridden = [n for n in ("lr", "minibatch_size", "alpha", "beta", "epochs", "batch_size") if getattr(cfg, n) is not None]
    overridden += [f"option {k}" for k in (cfg.options or {})]
    if overridden:
        resolved = replace(resolved, notes=resolved.notes + (f"overridden: {', '.join(overridden)}",))
    return resolved

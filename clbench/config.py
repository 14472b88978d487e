"""Run configuration: what a user asks for (``RunConfig``) and what a run is (``ResolvedConfig``).

Resolution fills every unset hyperparameter from the benchmark protocol and the presets, and
records where each came from (``notes``). The resolved config is the run's identity: its hash
(with the seed) names the run, and two runs with the same identity give the same results.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from .data.benchmarks import SyntheticOptions, get_benchmark
from .masking import MaskSpec
from .methods import get_method
from .presets import lookup_preset

# The version of what the engine computes. Bump it with every change that alters any number a run
# produces, even at rounding level: a run's identity includes it, so runs computed before the change
# are never served from the cache again (the store shows them as ``stale``).
#   1: clbench 0.1.0.
#   2: the replay plan from step 256 of an epoch on no longer counts the samples seen twice (a buffer
#      that was not yet full was sampled in slots never written: blank inputs with label 0).
RESULTS_VERSION = 2

METHODS = ("sgd", "joint", "er", "der", "derpp", "er_ace")
BUFFERLESS_METHODS = ("sgd", "joint")
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

    def resolve(self) -> "ResolvedConfig":
        return resolve(self)


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mask"] = self.mask.to_dict()
        d["lr_milestones"] = list(self.lr_milestones)
        d["notes"] = list(self.notes)
        d["synthetic"] = self.synthetic.to_dict() if self.synthetic else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ResolvedConfig":
        d = dict(d)
        d["mask"] = MaskSpec.from_dict(d["mask"])
        d["lr_milestones"] = tuple(d["lr_milestones"])
        d["notes"] = tuple(d.get("notes", ()))
        d.setdefault("der_logits", "pre" if d["method"] in LOGIT_STORING_METHODS else None)
        if d.get("synthetic"):
            s = dict(d["synthetic"])
            s["input_shape"] = tuple(s["input_shape"])
            d["synthetic"] = SyntheticOptions(**s)
        return cls(**d)

    def identity(self) -> str:
        """A stable hash of the resolved config, the seed and the engine's ``RESULTS_VERSION``
        (notes excluded: they are derived). The same config computed by an engine whose results
        differ has another identity."""
        d = self.to_dict()
        d.pop("notes")
        d.pop("preset_source")
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")) + f"|results_version={RESULTS_VERSION}"
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def group_key(self) -> tuple:
        """Runs with equal keys can train in lockstep as one batched computation.

        Everything that shapes the computation (data, network, step schedule) must agree; the seed,
        buffer size, mask, lr, alpha and beta may differ per run.
        """
        return (
            self.benchmark, self.synthetic, self.class_order_seed, self.backbone, self.width,
            self.method, self.epochs, self.batch_size, self.minibatch_size, self.lr_milestones, self.der_logits,
        )

    @property
    def uses_buffer(self) -> bool:
        return self.method not in BUFFERLESS_METHODS


def _placements(acts_on: tuple[str, ...]) -> list[str]:
    """The --mask-on values under which a mask acts for a method that masks ``acts_on`` rows."""
    return [p for p in ("stream", "buffer", "both") if ({"stream", "buffer"} if p == "both" else {p}) & set(acts_on)]


def resolve(cfg: RunConfig) -> ResolvedConfig:
    """Fill defaults from the benchmark protocol and the presets; validate everything."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}: valid methods are {', '.join(METHODS)}")
    spec = get_benchmark(cfg.benchmark)
    if cfg.benchmark == "synthetic":
        spec = (cfg.synthetic or SyntheticOptions()).spec()
    elif cfg.synthetic is not None:
        raise ValueError("synthetic options are only valid with the synthetic benchmark")
    if cfg.seed < 0:
        raise ValueError(f"seed must be >= 0, got {cfg.seed}")
    notes: list[str] = []
    buffer_size = int(cfg.buffer_size)
    if cfg.method in BUFFERLESS_METHODS:
        buffer_size = 0
    elif buffer_size < 1:
        raise ValueError(f"{cfg.method} needs a buffer of at least 1 sample, got {cfg.buffer_size}")
    backbone = cfg.backbone or spec.backbone
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}: valid backbones are {', '.join(BACKBONES)}")
    width = (cfg.width or 64) if backbone == "resnet18" else None
    preset = lookup_preset(cfg.benchmark, cfg.method, buffer_size)
    notes.extend(preset.notes)
    mask = cfg.mask
    if mask.on == "buffer" and not mask.enabled:
        mask = MaskSpec(None, "stream")
    acts_on = get_method(cfg.method).mask_acts_on
    if mask.enabled and not ({"stream", "buffer"} if mask.on == "both" else {mask.on}) & set(acts_on):
        where = " or ".join(acts_on) if acts_on else "nowhere"
        raise ValueError(f"a mask on the {mask.on} cannot act in {cfg.method}, whose cross-entropy sees {where} rows: "
                         f"valid placements for {cfg.method} are {', '.join(_placements(acts_on)) or 'none (no mask)'}")
    if cfg.der_logits is not None and cfg.der_logits not in DER_LOGITS:
        raise ValueError(f"invalid der_logits {cfg.der_logits!r}: valid are {', '.join(DER_LOGITS)}")
    der_logits = (cfg.der_logits or "pre") if cfg.method in LOGIT_STORING_METHODS else None

    def pick(override, preset_value, default):
        return override if override is not None else (preset_value if preset_value is not None else default)

    needs_replay = cfg.method not in BUFFERLESS_METHODS
    resolved = ResolvedConfig(
        method=cfg.method,
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
        alpha=float(pick(cfg.alpha, preset.alpha, 0.0)) if cfg.method in ("der", "derpp") else 0.0,
        beta=float(pick(cfg.beta, preset.beta, 0.0)) if cfg.method == "derpp" else 0.0,
        lr_milestones=spec.lr_milestones,
        class_order_seed=cfg.class_order_seed,
        synthetic=(cfg.synthetic or SyntheticOptions()) if cfg.benchmark == "synthetic" else None,
        preset_source=preset.source,
        notes=tuple(notes),
        der_logits=der_logits,
    )
    for name in ("epochs", "batch_size"):
        if getattr(resolved, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(resolved, name)}")
    if needs_replay and resolved.minibatch_size < 1:
        raise ValueError(f"minibatch_size must be >= 1, got {resolved.minibatch_size}")
    if not resolved.lr > 0:
        raise ValueError(f"lr must be > 0, got {resolved.lr}")
    if resolved.alpha < 0 or resolved.beta < 0:
        raise ValueError("alpha and beta must be >= 0")
    overridden = [n for n in ("lr", "minibatch_size", "alpha", "beta", "epochs", "batch_size") if getattr(cfg, n) is not None]
    if overridden:
        resolved = replace(resolved, notes=resolved.notes + (f"overridden: {', '.join(overridden)}",))
    return resolved

"""What a run is: ``ResolvedConfig``, every value a run depends on, and its identity (a hash of all
of them with the seed and the engine's ``RESULTS_VERSION``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from clbench.data.specs import SyntheticOptions
from clbench.methods import CARDS, MethodCard, load_method
from clbench.methods.catalogue import card_of
from clbench.runs.mask import MaskSpec
from clbench.version import RESULTS_VERSION

if TYPE_CHECKING:
    from clbench.methods.base import Method


# Which logits DER and DER++ store with a sample: "pre", those of the training forward, before the
# step (Mammoth's DER/DER++); "post", a fresh forward of the incoming batch after the step (the
# paper's authors' earlier public code, for its masked DER++).
DER_LOGITS = ("pre", "post")
LOGIT_STORING_METHODS = ("der", "derpp")


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
    validation: float = 0.0  # fraction of each task's training data held out for validation (0: none)
    # Evaluation during training: every eval_every steps of a task, eval_samples samples per seen task
    # (0, 0: off; then left out of the config and the identity, as for every run before them).
    eval_every: int = 0
    eval_samples: int = 0
    # The fingerprint of the dataset's files (clbench.data.fingerprint) when they are not the
    # published release: None for the published data and for synthetic data (left out of the
    # config and the identity then, so the identities of runs on the published data stay theirs).
    data: str | None = None

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
    def class_order(self) -> int:
        """The class order as ``--class-order`` gives it: 0, the benchmark's own; K > 0, the
        permutation drawn from K alone."""
        return int(self.class_order_seed or 0)

    @property
    def option_values(self) -> dict[str, Any]:
        return dict(self.options)

    def method_instance(self) -> Method:
        """The method object this run trains with (a file of your own must still hash to
        ``method_sha256``)."""
        return load_method(self.method, self.method_source, self.method_sha256)

    @classmethod
    def from_dict(cls, d: dict) -> ResolvedConfig:
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

    def _identity_fields(self) -> dict:
        """What the run computes from: the config without what is derived (notes, preset source)
        and without where a method of your own was loaded from (its file's hash stays in)."""
        d = self.to_dict()
        for derived in ("notes", "preset_source"):
            d.pop(derived)
        d.pop("method_source", None)
        return d

    def identity(self) -> str:
        """A stable hash of the resolved config, the seed and the engine's ``RESULTS_VERSION``. The
        same config computed by an engine whose results differ has another identity."""
        cached = self.__dict__.get("_identity")  # computed once: a sweep asks for it many times
        if cached is None:
            blob = _canonical(self._identity_fields()) + f"|results_version={RESULTS_VERSION}"
            cached = hashlib.sha256(blob.encode()).hexdigest()[:16]
            object.__setattr__(self, "_identity", cached)  # not a field: eq, hash, asdict, replace ignore it
        return cached

    def config_hash(self) -> str:
        """What the seeds of one experimental cell share: the identity's hash without the seed (and
        without the results version: a cell is the same cell whichever engine computed it)."""
        d = self._identity_fields()
        d.pop("seed")
        return hashlib.sha256(b"config:" + _canonical(d).encode()).hexdigest()[:16]

    def group_key(self) -> tuple:
        """Runs with equal keys can train in lockstep as one batched computation.

        Everything that shapes the computation (data, network, step schedule) must agree; the seed,
        buffer size, mask, lr, alpha and beta may differ per run.
        """
        key = (
            self.benchmark,
            self.synthetic,
            self.class_order_seed,
            self.backbone,
            self.width,
            self.method,
            self.epochs,
            self.batch_size,
            self.minibatch_size,
            self.lr_milestones,
            self.der_logits,
            self.head,
            self.options,
            self.method_sha256,
        )
        # Methods whose per-run shapes follow the buffer size (class-balanced memories, exemplars
        # added to the training set) group only runs of one buffer size.
        key += (self.buffer_size,) if _card(self).group_by_buffer_size else ()
        # Runs on other files than the published ones train on those files.
        key += (("data", self.data),) if self.data else ()
        # Runs evaluated during training do it together, on one schedule.
        key += (("eval", self.eval_every, self.eval_samples),) if self.eval_every else ()
        # A validation split is drawn from the seed: each run holds out its own (equal-sized) rows,
        # except for methods that read a task's rows as one tensor: their groups hold one seed's split.
        if self.validation:
            key += (("validation", self.validation, self.seed if _card(self).reads_task_rows else None),)
        return key

    @property
    def uses_buffer(self) -> bool:
        return self.buffer_size > 0


# Added after results version 2: left out of to_dict (and the identity) at these values.
_LATER_FIELDS = {
    "head": "linear",
    "options": {},
    "method_source": None,
    "method_sha256": None,
    "validation": 0.0,
    "eval_every": 0,
    "eval_samples": 0,
    "data": None,
}


def _card(cfg: ResolvedConfig) -> MethodCard:
    if cfg.method_source is None:
        return CARDS[cfg.method]
    return card_of(type(cfg.method_instance()), cfg.method)


def _canonical(d: dict) -> str:
    return json.dumps(d, sort_keys=True, separators=(",", ":"))

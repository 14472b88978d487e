"""How a run masks (``MaskSpec``): the mask value m of the general masked softmax and where it applies.

The loss itself is ``clbench.masking.masked_cross_entropy``; this is the run's specification of it,
as the config, the command line and the store hold it (no tensors here)."""

from __future__ import annotations

import math
from dataclasses import dataclass

MASK_ON_CHOICES = ("stream", "buffer", "both")
# Which classes stay live on a masked row (the rest take the value m): the row's own task (the
# paper's rule, the default), the classes present in the batch's rows of the same kind (stream or
# replayed; ER-ACE's rule), or every class of the tasks seen so far (masks only the future).
MASK_KEEP_CHOICES = ("task", "batch", "seen")


@dataclass(frozen=True)
class MaskSpec:
    """How a run masks: the value m (``None`` = unmasked baseline) and where it applies.

    ``on`` is ``"stream"`` (incoming samples, the default and the paper's setting), ``"buffer"``
    (replayed samples) or ``"both"``. ``keep`` is the keep-set of a masked row (``MASK_KEEP_CHOICES``):
    ``"task"`` (the default), ``"batch"`` or ``"seen"``. Both are meaningless without a value; the
    run's resolution normalises them away.
    """

    value: float | None = None
    on: str = "stream"
    keep: str = "task"

    def __post_init__(self) -> None:
        if self.on not in MASK_ON_CHOICES:
            raise ValueError(f"mask 'on' must be one of {', '.join(MASK_ON_CHOICES)}, got {self.on!r}")
        if self.keep not in MASK_KEEP_CHOICES:
            raise ValueError(f"invalid mask keep-set {self.keep!r}: valid are {', '.join(MASK_KEEP_CHOICES)}")
        if self.value is not None:
            v = float(self.value)
            if math.isnan(v) or v == math.inf:
                raise ValueError(f"mask value must be none, -inf or a finite number, got {self.value!r}")
            object.__setattr__(self, "value", v + 0.0)  # -0.0 is 0.0: one mask, one identity

    @property
    def enabled(self) -> bool:
        return self.value is not None

    @property
    def on_stream(self) -> bool:
        return self.enabled and self.on in ("stream", "both")

    @property
    def on_buffer(self) -> bool:
        return self.enabled and self.on in ("buffer", "both")

    @property
    def label(self) -> str:
        """``none``, ``-inf`` or the number as written by ``repr`` (e.g. ``-5.0``)."""
        return format_mask_value(self.value)

    @classmethod
    def parse(cls, text: str, on: str = "stream", keep: str = "task") -> MaskSpec:
        return cls(parse_mask_value(text), on, keep)

    def to_dict(self) -> dict:
        """The spec as JSON; ``keep`` only where it is not the default ``task`` (added later: the
        configs, and so the identities, of the runs with the paper's keep-set stay what they were)."""
        d = {"value": self.label, "on": self.on}
        if self.keep != "task":
            d["keep"] = self.keep
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MaskSpec:
        return cls(parse_mask_value(str(d["value"])), d.get("on", "stream"), d.get("keep", "task"))


def parse_mask_value(text: str) -> float | None:
    """``'none'`` -> None, ``'-inf'`` -> -inf, a finite number -> float; anything else raises."""
    t = str(text).strip().lower()
    if t in ("none", "baseline"):
        return None
    if t in ("-inf", "-infinity"):
        return -math.inf
    try:
        v = float(t)
    except ValueError:
        raise ValueError(f"invalid mask {text!r}: valid masks are none, -inf or a finite number") from None
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"invalid mask {text!r}: valid masks are none, -inf or a finite number")
    return v + 0.0  # -0.0 is the mask 0.0 (e^0 for every masked logit), not a second one


def format_mask_value(value: float | None) -> str:
    if value is None:
        return "none"
    if value == -math.inf:
        return "-inf"
    return repr(float(value))

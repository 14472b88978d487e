"""Checks of single values, shared by every way a run is asked for (the CLI's options, an
experiment's TOML file, Python): each raises :class:`InvalidValue` naming the value and what is valid."""

from __future__ import annotations

import math
import numbers
from typing import Any

# The largest whole number every supported database stores in an INTEGER column (PostgreSQL's
# integer is 32-bit signed; SQLite's would take more, so the two would disagree on what is valid).
INT_MAX = 2**31 - 1


MAX_LABEL_LENGTH = 200  # characters of an experiment label (the store's column width)


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


def check_label(label: Any, what: str = "experiment label") -> str:
    """An experiment label every supported database stores as given: non-empty text of at most
    ``MAX_LABEL_LENGTH`` characters, without control characters."""
    if not isinstance(label, str) or not label.strip():
        raise InvalidValue(what, label, "give a non-empty name")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidValue(what, f"{label[:20]}...", f"it has {len(label)} characters; give at most {MAX_LABEL_LENGTH}")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in label):  # bytes of the command line that are not UTF-8
        shown = label.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise InvalidValue(what, shown, "it holds bytes that are not UTF-8 text; give a name in UTF-8")
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in label):  # C0, DEL, C1 (0x9b: a terminal's CSI)
        raise InvalidValue(what, label, "give a name without control characters (newlines, tabs, ...)")
    return label

"""Methods of your own: a class with the ``Method`` interface, from a file or an installed package.

``--method path/to/my_method.py:MyMethod`` imports the file (any location) and takes the class;
``--method NAME`` finds, after the shipped methods, the entry point ``NAME`` of the group
``clbench.methods`` of an installed distribution (``[project.entry-points."clbench.methods"]``,
``NAME = "package.module:MyMethod"``). Either way the run's config records where the class came
from (``method_source``, not part of the run's identity) and the SHA-256 of the file that defines
it (``method_sha256``, part of it): an edited file makes new runs, never cached ones. The hash
covers that one file, not what it imports.

The method's name in tables and filters is the class's own ``name`` attribute when it defines
one, else its class name (at most 32 characters, not a shipped method's name).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import socket
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from clbench.errors import first_line
from clbench.methods.catalogue import CARDS, SHIPPED, MethodCard, card_of

if TYPE_CHECKING:
    from clbench.methods.base import Method

ENTRY_POINT_GROUP = "clbench.methods"
MAX_NAME = 32  # the registry's method column
_ENTRY_PREFIX = "entry-point:"


@dataclass(frozen=True)
class MethodRef:
    """A method found by ``find_method``: its name and card and (for methods of your own) where it
    came from, the hash of its file and its class, imported to read its card."""

    name: str
    card: MethodCard
    source: str | None = None  # "/abs/path.py:Class" or "entry-point:NAME"; None for a shipped method
    sha256: str | None = None
    cls: type[Method] | None = None  # None for a shipped method: imported only to train

    def instance(self) -> Method:
        return (self.cls or method_class(self.name))()


def method_class(name: str) -> type[Method]:
    """A shipped method's class, imported now (with torch); a one-line ``ValueError`` for an unknown name."""
    if name not in SHIPPED:
        raise ValueError(f"unknown method {name!r}: valid methods are {', '.join(SHIPPED)}")
    module, _, cls = SHIPPED[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def shipped_base(cls: type) -> str | None:
    """The name of the nearest shipped method ``cls`` derives from (None: none)."""
    by_place = {where: name for name, where in SHIPPED.items()}
    return next(
        (
            by_place[f"{c.__module__}:{c.__qualname__}"]
            for c in cls.__mro__
            if f"{c.__module__}:{c.__qualname__}" in by_place
        ),
        None,
    )


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=64)
def _import_file(path: str, sha256: str):
    """Import the file once per content (the module is named after its hash)."""
    name = f"clbench_user_method_{sha256[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import the method file {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by their module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - whatever the file raises is bad input
        del sys.modules[name]
        raise ValueError(f"cannot import the method file {path}: {first_line(exc, with_type=True)}") from None
    except (SystemExit, KeyboardInterrupt) as exc:  # the file's own, unlike a Ctrl-C meanwhile
        del sys.modules[name]
        if (mine := _raised_by(exc, {path})) is None:
            raise
        raise ValueError(f"cannot import the method file {path}: it {_ended(exc, mine)}") from None
    return module


class MethodCodeError(RuntimeError):
    """A method of your own tried to end the process (``sys.exit``, ``raise KeyboardInterrupt``):
    its group fails, its runs are marked ``failed``, the sweep goes on as after any failed group."""


def _raised_by(exc: BaseException, files: set[str]) -> traceback.FrameSummary | None:
    """The innermost frame of ``exc``'s traceback in one of ``files`` if the exception is that
    file's own: any ``SystemExit`` raised under it; a ``KeyboardInterrupt`` only where a ``raise``
    line of the file raised it (a Ctrl-C lands in whatever line runs, often the method's)."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if os.path.abspath(f.filename) in files]
    if not mine:
        return None
    if isinstance(exc, KeyboardInterrupt) and not (
        frames[-1] is mine[-1] and (mine[-1].line or "").startswith("raise")
    ):
        return None
    return mine[-1]


def _ended(exc: BaseException, frame: traceback.FrameSummary) -> str:
    what = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else "raised KeyboardInterrupt"
    where = "at import" if frame.name == "<module>" else f"in {frame.name}"
    return f"{what} {where} (line {frame.lineno}): a method must raise an exception, not end the process"


def method_code_error(exc: BaseException, sources: Sequence[str | None]) -> MethodCodeError | None:
    """``exc`` (a ``SystemExit`` or ``KeyboardInterrupt`` out of training) as the one-line error of
    the method file that raised it; ``None`` when no method of your own among ``sources`` (the
    configs' ``method_source``) raised it (a real Ctrl-C, SIGTERM)."""
    files = {}
    for source in set(filter(None, sources)):
        path = _source_file(source)
        if path is not None:
            files[os.path.abspath(path)] = source
    frame = _raised_by(exc, set(files))
    if frame is None:
        return None
    return MethodCodeError(f"the method file {os.path.abspath(frame.filename)} {_ended(exc, frame)}")


def _source_file(source: str) -> str | None:
    if not source.startswith(_ENTRY_PREFIX):
        return source.rpartition(":")[0]
    try:
        return inspect.getsourcefile(find_method(source[len(_ENTRY_PREFIX) :]).cls)
    except (ValueError, TypeError):
        return None


def _check_class(cls, where: str) -> type[Method]:
    from clbench.methods.base import Method  # noqa: PLC0415 - a file of your own brings torch anyway

    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise ValueError(f"{where} is not a method: a method is a class deriving from clbench.methods.Method")
    if cls.loss_terms is Method.loss_terms and not cls.refits:
        raise ValueError(f"{where} does not define loss_terms(self, step), the method's update rule")
    return cls


def _label(cls: type[Method], where: str) -> str:
    name = cls.__dict__.get("name") or cls.__name__
    if (
        not isinstance(name, str)
        or not name
        or len(name) > MAX_NAME
        or any(c in name for c in ":/\\ ")
        or not name.isprintable()  # control characters: escape codes on terminals, split rows and CSV lines
    ):
        raise ValueError(
            f"{where}: the method's name {name!r} must be 1 to {MAX_NAME} printable characters without "
            "':', '/', spaces or control characters (set the class attribute name = \"...\")"
        )
    if name in SHIPPED:
        raise ValueError(
            f"{where} is named {name!r}, like the shipped method: give it its own name "
            '(the class attribute name = "...")'
        )
    return name


def _from_file(spec: str) -> MethodRef:
    path_text, _, class_name = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not class_name.isidentifier():
        raise ValueError(f"invalid method {spec!r}: give PATH.py:CLASS, the class's name after the colon")
    if not path.is_file():
        raise ValueError(f"no method file {path_text} (from --method {spec}): give PATH.py:CLASS")
    path = path.resolve()
    sha256 = _file_sha256(path)
    module = _import_file(str(path), sha256)
    if not hasattr(module, class_name):
        from clbench.methods.base import Method  # noqa: PLC0415 - a file of your own brings torch anyway

        classes = sorted(
            n
            for n, v in vars(module).items()
            if inspect.isclass(v) and issubclass(v, Method) and v.__module__ == module.__name__
        )
        raise ValueError(
            f"no class {class_name} in the method file {path_text}: "
            f"its method classes are {', '.join(classes) or 'none'}"
        )
    where = f"{class_name} in {path_text}"
    cls = _check_class(getattr(module, class_name), where)
    name = _label(cls, where)
    return MethodRef(name, card_of(cls, name), f"{path}:{class_name}", sha256, cls)


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _from_entry_point(name: str, ep) -> MethodRef:
    where = f"the entry point {name} ({ep.value}) of group {ENTRY_POINT_GROUP}"
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot load {where}: {first_line(exc, with_type=True)}") from None
    cls = _check_class(cls, where)
    try:
        source_file = Path(inspect.getsourcefile(cls) or "")
    except TypeError:
        source_file = Path("")
    if not source_file.is_file():
        raise ValueError(f"{where}: the file defining {cls.__name__} cannot be found to hash it")
    label = _label(cls, where)
    return MethodRef(label, card_of(cls, label), _ENTRY_PREFIX + name, _file_sha256(source_file), cls)


def find_method(spec: str) -> MethodRef:
    """A shipped method by name, an entry point of ``clbench.methods`` by name, or a class in a
    file (``"PATH.py:CLASS"``). Bad specs raise a one-line ``ValueError`` naming the choices."""
    spec = str(spec).strip()
    if spec in SHIPPED:
        return MethodRef(spec, CARDS[spec])
    if ":" in spec and ("/" in spec or ".py:" in spec or "\\" in spec):
        return _from_file(spec)
    installed = _entry_points()
    if spec in installed:
        return _from_entry_point(spec, installed[spec])
    extra = f"; installed ({ENTRY_POINT_GROUP}): {', '.join(sorted(installed))}" if installed else ""
    raise ValueError(
        f"unknown method {spec!r}: valid methods are {', '.join(SHIPPED)}{extra}, "
        "or a class of your own as PATH.py:CLASS"
    )


def load_method(name: str, source: str | None = None, sha256: str | None = None) -> Method:
    """The method of a resolved config: a shipped one by name, else the class at ``source``, which
    must still hash to ``sha256`` (a run is never computed by code other than its identity says)."""
    if source is None:
        return method_class(name)()
    spec = source[len(_ENTRY_PREFIX) :] if source.startswith(_ENTRY_PREFIX) else source
    path = spec.rpartition(":")[0]
    if not source.startswith(_ENTRY_PREFIX) and not Path(path).is_file():
        raise ValueError(
            f"the method file {path} of {name} is not on this machine ({socket.gethostname()}): a method of "
            "your own must lie at the same path on every machine that trains (shared storage, or a copy there)"
        )
    ref = find_method(spec)
    if sha256 is not None and ref.sha256 != sha256:
        raise ValueError(
            f"the method {name} ({source}) changed since the run was planned: its file's sha256 is "
            f"{(ref.sha256 or '')[:12]}..., the run's {sha256[:12]}..."
        )
    return ref.instance()

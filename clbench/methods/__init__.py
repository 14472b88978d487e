"""Continual-learning methods, one small file each (``er.py``, ``derpp.py``, ...), all with the
interface of ``base.Method``: a training step in, named loss terms out.

This package's face imports no method (nor torch): what planning needs of the shipped methods is
their card (``catalogue``), and a method's class is imported when a group trains with it
(``method_class``, ``get_method``). Besides the shipped methods, a method may come from a file
(``"path/to/my_method.py:MyMethod"``) or from an installed package that declares it in the entry
point group ``clbench.methods`` (``find_method``, in ``user``): the same interface, nothing in the
package to edit.
"""

from __future__ import annotations

import importlib
from typing import Any

from clbench.methods.catalogue import CARDS, SHIPPED, MethodCard
from clbench.methods.user import ENTRY_POINT_GROUP, MethodRef, find_method, load_method, method_class

METHODS = tuple(SHIPPED)  # the shipped ones; a method of your own is PATH.py:CLASS or an entry point

# The classes a method of your own builds on, imported when first named (PEP 562).
_BASE = {"Method": "base", "MethodContext": "base", "MethodOutput": "base", "TaskEnd": "base"}


def get_method(name: str) -> Any:
    """A shipped method by name, ready to train (an instance of its class); raises a one-line
    ``ValueError`` for an unknown name."""
    return method_class(name)()


def __getattr__(name: str) -> Any:
    if name in _BASE:
        return getattr(importlib.import_module(f"clbench.methods.{_BASE[name]}"), name)
    shipped = {where.partition(":")[2]: where for where in SHIPPED.values()}
    if name in shipped:  # a shipped class by its class name: ER, DERpp, ...
        module, _, cls = shipped[name].partition(":")
        return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module 'clbench.methods' has no attribute {name!r}")


__all__ = [
    "CARDS",
    "ENTRY_POINT_GROUP",
    "METHODS",
    "MethodCard",
    "MethodRef",
    "SHIPPED",
    "find_method",
    "get_method",
    "load_method",
    "method_class",
    *_BASE,
]

"""Continual-learning methods, one small file each; ``get_method(name)`` returns one.

Besides the shipped methods, a method may come from a file (``"path/to/my_method.py:MyMethod"``)
or from an installed package that declares it in the entry point group ``clbench.methods``
(``find_method``): the same interface (``Method``), nothing in the package to edit.
"""

from .agem import AGEM
from .base import Method, MethodContext, MethodOutput, TaskEnd
from .der import DER
from .derpp import DERpp
from .er import ER
from .er_ace import ERACE
from .gdumb import GDumb
from .icarl import ICaRL
from .joint import Joint
from .sgd import SGD
from .user import ENTRY_POINT_GROUP, MethodRef, find_method, load_method, shipped_base
from .xder import XDER

METHOD_CLASSES: dict[str, type[Method]] = {
    m.name: m for m in (SGD, Joint, ER, DER, DERpp, ERACE, XDER, ICaRL, AGEM, GDumb)
}


def get_method(name: str) -> Method:
    try:
        return METHOD_CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown method {name!r}: valid methods are {', '.join(METHOD_CLASSES)}") from None


__all__ = ["AGEM", "DER", "DERpp", "ENTRY_POINT_GROUP", "ER", "ERACE", "GDumb", "ICaRL", "Joint", "METHOD_CLASSES",
           "Method", "MethodContext", "MethodOutput", "MethodRef", "SGD", "TaskEnd", "XDER", "find_method", "get_method",
           "load_method", "shipped_base"]

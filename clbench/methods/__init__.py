"""Continual-learning methods, one small file each; ``get_method(name)`` returns one.

Besides the shipped methods, a method may come from a file (``"path/to/my_method.py:MyMethod"``)
or from an installed package that declares it in the entry point group ``clbench.methods``
(``find_method``): the same interface (``Method``), nothing in the package to edit.
"""

from clbench.methods.agem import AGEM
from clbench.methods.base import Method, MethodContext, MethodOutput, TaskEnd
from clbench.methods.der import DER
from clbench.methods.derpp import DERpp
from clbench.methods.er import ER
from clbench.methods.er_ace import ERACE
from clbench.methods.gdumb import GDumb
from clbench.methods.icarl import ICaRL
from clbench.methods.joint import Joint
from clbench.methods.sgd import SGD
from clbench.methods.user import ENTRY_POINT_GROUP, MethodRef, find_method, load_method, shipped_base
from clbench.methods.xder import XDER

METHOD_CLASSES: dict[str, type[Method]] = {
    m.name: m for m in (SGD, Joint, ER, DER, DERpp, ERACE, XDER, ICaRL, AGEM, GDumb)
}
METHODS = tuple(METHOD_CLASSES)  # the shipped ones; a method of your own is PATH.py:CLASS or an entry point


def get_method(name: str) -> Method:
    try:
        return METHOD_CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown method {name!r}: valid methods are {', '.join(METHOD_CLASSES)}") from None


__all__ = ["AGEM", "METHODS", "DER", "DERpp", "ENTRY_POINT_GROUP", "ER", "ERACE", "GDumb", "ICaRL", "Joint", "METHOD_CLASSES",
           "Method", "MethodContext", "MethodOutput", "MethodRef", "SGD", "TaskEnd", "XDER", "find_method", "get_method",
           "load_method", "shipped_base"]

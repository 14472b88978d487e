"""Continual-learning methods, one small file each; ``get_method(name)`` returns one."""

from .base import Method, MethodOutput
from .der import DER
from .derpp import DERpp
from .er import ER
from .er_ace import ERACE
from .joint import Joint
from .sgd import SGD

METHOD_CLASSES: dict[str, type[Method]] = {m.name: m for m in (SGD, Joint, ER, DER, DERpp, ERACE)}


def get_method(name: str) -> Method:
    try:
        return METHOD_CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown method {name!r}: valid methods are {', '.join(METHOD_CLASSES)}") from None


__all__ = ["Method", "MethodOutput", "METHOD_CLASSES", "get_method"]

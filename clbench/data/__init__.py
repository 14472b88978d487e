"""Continual benchmarks and their data sources."""

from .benchmarks import (
    BENCHMARKS,
    BenchmarkSpec,
    ContinualData,
    SyntheticOptions,
    get_benchmark,
    load_benchmark,
    prepare_inputs,
)
from .sources import DataNotFoundError

__all__ = [
    "BENCHMARKS", "BenchmarkSpec", "ContinualData", "DataNotFoundError", "SyntheticOptions",
    "get_benchmark", "load_benchmark", "prepare_inputs",
]

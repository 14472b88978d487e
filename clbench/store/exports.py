"""Exporting runs from the registry to files: csv, json or parquet (``clbench export``).

One row per run (``EXPORT_COLUMNS``, from :func:`clbench.store.queries.load_runs`) or the accuracy
matrices in long format (``MATRIX_COLUMNS``). A file is written whole or not at all. The export to an
MLflow tracking store is ``clbench.store.mlflow``.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from clbench.files import atomic_file, check_output_file

if TYPE_CHECKING:  # pandas and the queries load with the first export, not with the CLI
    import pandas as pd

    from clbench.store.queries import Db

EXPORT_FORMATS = ("csv", "json", "parquet")


def export_runs(
    db: Db = None,
    out: str | os.PathLike | IO | None = None,
    *,
    format: str = "csv",
    matrices: bool = False,
    **filters: Any,
) -> int:
    """Write the runs matching ``filters`` (one row each, ``EXPORT_COLUMNS``) or, with ``matrices``,
    their accuracy matrices in long format (``MATRIX_COLUMNS``) to ``out`` (a path or a stream;
    ``None``: standard output, not for parquet). Returns the number of rows written."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"invalid export format {format!r}: valid are {', '.join(EXPORT_FORMATS)}")
    if format == "parquet":
        if out is None:
            raise ValueError("parquet is binary: give an output file (--output runs.parquet)")
        try:
            import pyarrow  # noqa: F401, PLC0415 - optional, only for parquet
        except ImportError:
            raise ValueError("parquet export needs pyarrow: pip install pyarrow") from None
    if isinstance(out, (str, os.PathLike)):
        check_output_file(out)  # before the database is read: a bad path is one line, at once
    from clbench.store.queries import EXPORT_COLUMNS, MATRIX_COLUMNS, load_matrices, load_runs  # pandas

    if matrices:
        df = load_matrices(db, **filters)[list(MATRIX_COLUMNS)]
    else:
        df = load_runs(db, **filters)[list(EXPORT_COLUMNS)]
    if isinstance(out, (str, os.PathLike)):
        with atomic_file(out) as tmp:  # all or nothing: a failed write leaves no half file
            _write_frame(df, tmp, format)
    else:
        _write_frame(df, out if out is not None else sys.stdout, format)
    return len(df)


def _write_frame(df: pd.DataFrame, target: Any, format: str) -> None:
    if format == "csv":
        df.to_csv(target, index=False)
    elif format == "json":
        text = df.to_json(orient="records", indent=1)
        if isinstance(target, Path):
            target.write_text(text + "\n")
        else:
            target.write(text + "\n")
    else:
        df.to_parquet(target if isinstance(target, Path) else _binary(target), index=False)


def _binary(stream: IO) -> IO:
    return stream.buffer if isinstance(stream, io.TextIOBase) and hasattr(stream, "buffer") else stream

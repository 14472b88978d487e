"""Long listings as plain aligned columns: ``clbench runs`` over ``PLAIN_ROWS`` runs."""

from __future__ import annotations

from rich.control import strip_control_codes
from rich.table import Table
from rich.text import Span, Text

PLAIN_ROWS = 200  # a listing longer than this is printed as plain aligned columns (see plain_table)


def plain_table(table: Table) -> Text:
    """``table`` as plain aligned columns under its title and header, cells styled as in the table:
    what a boxed rich table of thousands of rows would show, laid out in milliseconds, not seconds
    (the text is joined once and its styles placed as spans, not appended cell by cell)."""
    columns = table.columns
    cells = [[_cell(c) for c in col.cells] for col in columns]  # (text, style, spans)
    widths = [max([len(col.header), *(len(c[0]) for c in col_cells)]) for col, col_cells in zip(columns, cells)]
    parts = [f"{table.title}\n"] if table.title else []
    header = "  ".join(_aligned(col.header, w, col.justify) for col, w in zip(columns, widths)).rstrip() + "\n"
    pos = len(parts[0]) if parts else 0
    spans = [Span(pos, pos + len(header), "bold")]
    parts.append(header)
    pos += len(header)
    last = len(columns) - 1
    for i in range(len(table.rows)):
        for j, (col, w) in enumerate(zip(columns, widths)):
            text, style, cell_spans = cells[j][i]
            pad = " " * (w - len(text))
            if col.justify == "right":
                parts.append(pad)
                pos += len(pad)
            if style:
                spans.append(Span(pos, pos + len(text), style))
            spans.extend(Span(start + pos, end + pos, style) for start, end, style in cell_spans)
            parts.append(text)
            pos += len(text)
            if j < last:
                gap = (pad if col.justify != "right" else "") + "  "
                parts.append(gap)
                pos += len(gap)
        parts.append("\n")
        pos += 1
    out = Text("".join(parts), spans=spans)
    out.rstrip()
    return out


def _cell(value) -> tuple:
    """A table cell as its text (control codes stripped, as ``Text`` does), style and spans."""
    if isinstance(value, Text):
        return value.plain, value.style, value.spans
    return strip_control_codes(str(value)), None, ()


def _aligned(text: str, width: int, justify: str) -> str:
    return text.rjust(width) if justify == "right" else text.ljust(width)

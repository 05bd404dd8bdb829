"""One table formatter for the CLIs and reports: a GitHub Markdown table, or plain text in padded columns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal


def text_table(header: Sequence[object], rows: Iterable[Sequence[object]],
               style: Literal["markdown", "plain"] = "markdown") -> str:
    """The rows under the header, each cell as its str, one line per row and no trailing newline.

    "markdown": `| a | b |` lines under a `|---|---|` rule. "plain": columns padded to their widest cell,
    two spaces apart, no trailing blanks (for a terminal).
    """
    lines = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    if style == "markdown":
        rule = "|" + "---|" * len(header)
        return "\n".join(["| " + " | ".join(lines[0]) + " |", rule, *("| " + " | ".join(line) + " |" for line in lines[1:])])
    if style != "plain":
        raise ValueError(f"unknown table style {style!r}: markdown or plain")
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)

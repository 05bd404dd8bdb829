"""Render the run report as one self-contained HTML file: a Jinja2 template, autoescaped, figures as data URIs."""

from __future__ import annotations

import base64
from functools import cache
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

TEMPLATE = "report.html"  # components/report/templates/


def figure(path: Path, caption: str) -> dict[str, str | None]:
    """A figure for the template: the PNG as a data URI, or src None (the page says the figure is missing)."""
    src = f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}" if path.is_file() else None
    return {"caption": caption, "src": src, "path": str(path)}


def cell(value: object) -> str:
    """A table cell: floats with 3 decimals, anything else as its str."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def ci(entry: dict) -> str:
    """An estimate with its 95% CI: "0.912 [0.880, 0.940]"."""
    return f"{entry['estimate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


@cache
def environment() -> Environment:
    """The report's Jinja2 environment: templates from the package, every value HTML-escaped."""
    env = Environment(loader=PackageLoader("components.report"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(cell=cell, ci=ci)
    return env


def page(title: str, context: dict) -> str:
    """The whole document: the title, the decision-support notice, then the sections `context` holds
    (data, comparison, candidates, leakage; see components/report/templates/report.html)."""
    return environment().get_template(TEMPLATE).render(title=title, **context)

"""Render the run report as one self-contained HTML file (figures embedded as data URIs)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
.notice{background:#fff4e5;border-left:4px solid #f0a020;padding:.6em 1em}.bad{color:#b00}.good{color:#070}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}"""


def image_tag(path: Path, caption: str) -> str:
    """A <figure> with the PNG embedded, or a note when the figure is missing."""
    if not path.is_file():
        return f"<p class='bad'>figure missing: {html.escape(str(path))}</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return (f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table(header: list[str], rows: list[list[object]]) -> str:
    """A plain HTML table; floats shown with 3 decimals."""
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def ci(entry: dict) -> str:
    return f"{entry['estimate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """The whole document: a title, the decision-support notice, then (heading, html) sections."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            "<p class='notice'>Decision support only: these models are not a substitute for a radiologist. "
            "Every number below is measured on patients / scan series the model never saw in training, "
            "unless it is explicitly labelled as the leaky random split.</p>"
            f"{body}</body></html>")

"""The layers hold (docs/development.md#layers): a stage imports only components.common, components.lib and its own
folder; components.lib imports only common and lib; components.common imports only common. Every import counts:
top level or inside a function, `import x` or `from x import y`, absolute or relative."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.tiny import REPO

SHARED = {"common": {"common"}, "lib": {"common", "lib"}}  # what each shared layer may import


def allowed(folder: str | None) -> set[str]:
    """The components.<folder>s a file of components/<folder>/ may import (None: a file of components/ itself)."""
    if folder is None:
        return {"common", "lib"}
    return SHARED.get(folder, {folder, "common", "lib"})


def imported_components(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every `components...` import in `path`, a module of `package`; relative imports
    resolved, and `from components import x` read as components.x."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "components":  # `from components import train`: the package is the name
                found += [(node.lineno, f"components.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return [(line, module) for line, module in found if module.split(".")[0] == "components"]


def layer_violations(root: Path) -> list[str]:
    """`path:line imports module` for every import under root/components that crosses the layers."""
    bad = []
    for path in sorted((root / "components").rglob("*.py")):
        rel = path.relative_to(root)
        folder = rel.parts[1] if len(rel.parts) > 2 else None
        package = ".".join(rel.parts[:-1])
        for line, module in imported_components(path, package):
            parts = module.split(".")
            if len(parts) > 1 and parts[1] not in allowed(folder):
                bad.append(f"{rel}:{line} imports {module}")
    return bad


def test_no_stage_imports_another_stage_and_the_shared_layers_import_no_stage():
    bad = layer_violations(REPO)
    assert not bad, ("imports across the layers (move the shared code to components/lib; docs/development.md#layers):\n"
                     + "\n".join(bad))


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_check_finds_every_kind_of_crossing_import(tmp_path):
    write(tmp_path, "components/alpha/__main__.py", "from components.beta.core import f\n")
    write(tmp_path, "components/alpha/core.py", "def g():\n    import components.beta.core\n")
    write(tmp_path, "components/alpha/more.py", "from ..beta import core\nfrom components import gamma\n")
    write(tmp_path, "components/lib/shared.py", "from components.alpha.core import g\n")
    write(tmp_path, "components/common/base.py", "from components.lib import shared\n")
    assert layer_violations(tmp_path) == [
        "components/alpha/__main__.py:1 imports components.beta.core",
        "components/alpha/core.py:2 imports components.beta.core",
        "components/alpha/more.py:1 imports components.beta",
        "components/alpha/more.py:2 imports components.gamma",
        "components/common/base.py:1 imports components.lib",
        "components/lib/shared.py:1 imports components.alpha.core",
    ]


def test_the_check_lets_each_layer_import_what_it_may(tmp_path):
    write(tmp_path, "components/alpha/__main__.py",
          "from components.alpha.core import g\nfrom . import core\nfrom components.lib.shared import h\n"
          "def f():\n    from components.common.base import b\n")
    write(tmp_path, "components/alpha/core.py", "import numpy\n")
    write(tmp_path, "components/lib/shared.py", "from components.common.base import b\nfrom .other import o\n")
    write(tmp_path, "components/common/base.py", "from components.common import other\n")
    write(tmp_path, "components/__main__.py", "from components.common.base import b\n")
    assert layer_violations(tmp_path) == []

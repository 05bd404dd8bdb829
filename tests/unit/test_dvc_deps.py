"""dvc.yaml is the catalog: every module a stage's entry point imports (transitively, at any depth, also inside
functions) is one of that stage's code deps, so `dvc repro` reruns a stage whenever code it runs changes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.tiny import REPO

PACKAGES = ("components", "serving")


def module_file(module: str) -> Path | None:
    """The file of a dotted module of this repository, or None (a third-party module, a name in a module)."""
    path = REPO.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Dotted names of this repository's modules that `path` imports anywhere (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(PACKAGES)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGES):
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if module_file(f"{node.module}.{alias.name}")}
    return found


def runs_code(path: Path) -> bool:
    """False for a package __init__ that holds only its docstring (editing it changes nothing a stage does)."""
    body = ast.parse(path.read_text()).body
    return not all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def code_closure(entry: Path) -> set[Path]:
    """`entry` and every repository module it reaches through imports (and their packages' __init__ that hold
    more than a docstring)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in imported_modules(path):
            parts = module.split(".")
            todo += [f for f in (module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)) if f]
    return {path for path in seen if path.name != "__init__.py" or runs_code(path)}


def stage_specs() -> list[tuple[str, str, list[str]]]:
    """(stage, its `python -m` module, its deps) of every dvc.yaml stage that runs a module of this repository."""
    specs = []
    for name, spec in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        body = spec.get("do", spec)
        module = body["cmd"].split("python -m ", 1)[1].split()[0]
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
        specs.append((name, module, deps))
    return specs


def stage_entry(module: str) -> Path | None:
    return module_file(f"{module}.__main__") or module_file(module)


def missing_deps(entry: Path, deps: list[str]) -> list[str]:
    """Repository files `entry` runs (its import closure) that no code dep of `deps` (a file or a folder) covers."""
    code = [d.rstrip("/") for d in deps if d.startswith(PACKAGES)]
    return sorted(str(path.relative_to(REPO)) for path in code_closure(entry)
                  if not any(str(path.relative_to(REPO)) == d or path.relative_to(REPO).is_relative_to(d)
                             for d in code))


@pytest.mark.parametrize("stage, module, deps", stage_specs(), ids=[s[0] for s in stage_specs()])
def test_every_module_a_stage_runs_is_one_of_its_deps(stage, module, deps):
    entry = stage_entry(module)
    assert entry is not None, f"{stage}: no module {module}"
    missing = missing_deps(entry, deps)
    assert not missing, f"dvc.yaml stage {stage} runs code it does not list in its deps: {missing}"


@pytest.mark.parametrize("stage, module, deps", stage_specs(), ids=[s[0] for s in stage_specs()])
def test_a_stage_lists_each_library_module_it_runs_and_no_other(stage, module, deps):
    """Per-module lib deps, exact: a change to one components/lib module reruns only the stages that run it."""
    listed = {d for d in deps if d.startswith("components/lib/")}
    assert "components/lib" not in {d.rstrip("/") for d in deps}, f"{stage}: list components/lib modules one by one"
    runs = {str(p.relative_to(REPO)) for p in code_closure(stage_entry(module))
            if p.relative_to(REPO).is_relative_to("components/lib")}
    assert listed == runs, f"dvc.yaml stage {stage}: lib deps {sorted(listed)}, runs {sorted(runs)}"


@pytest.mark.parametrize("stage, module, deps", stage_specs(), ids=[s[0] for s in stage_specs()])
def test_every_code_dep_exists(stage, module, deps):
    gone = [d for d in deps if d.startswith(PACKAGES) and not (REPO / d).exists()]
    assert not gone, f"dvc.yaml stage {stage} lists code that is not there (moved?): {gone}"


def test_removing_a_module_from_a_stages_deps_is_caught():
    stage, module, deps = next(spec for spec in stage_specs() if spec[0] == "train")
    assert missing_deps(stage_entry(module), deps) == []
    assert missing_deps(stage_entry(module), [d for d in deps if d != "components/lib/heads.py"]) == [
        "components/lib/heads.py"]
    assert "components/train/__main__.py" in missing_deps(stage_entry(module), [d for d in deps if d != "components/train"])


def test_the_closure_follows_imports_inside_functions():
    closure = {str(p.relative_to(REPO)) for p in code_closure(REPO / "components/register/__main__.py")}
    assert "components/lib/registry_store.py" in closure  # imported inside run(): promote through the CLI's path


COSTLY = ("backbone", "features", "train", "leakage")  # minutes each: rerun only for the code they run


COSTLY_SPECS = [spec for spec in stage_specs() if spec[0] in COSTLY]


@pytest.mark.parametrize("stage, module, deps", COSTLY_SPECS, ids=[spec[0] for spec in COSTLY_SPECS])
def test_a_costly_stage_lists_each_common_module_it_runs_and_no_other(stage, module, deps):
    """An edit to a components/common module the stage never runs (the serving runtime, the monitor's helpers)
    must not retrain the default or recompute the real data's features."""
    listed = {d for d in deps if d.startswith("components/common")}
    runs = {str(p.relative_to(REPO)) for p in code_closure(stage_entry(module))
            if p.relative_to(REPO).is_relative_to("components/common")}
    assert listed == runs, f"dvc.yaml stage {stage}: common deps {sorted(listed)}, runs {sorted(runs)}"

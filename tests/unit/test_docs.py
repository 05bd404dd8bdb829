"""The docs stay true: the MkDocs site builds with --strict (links and anchors), and every repo path, code
reference and `make` target that README.md and docs/ name exists."""

from __future__ import annotations

import ast
import difflib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").glob("*.md"))
# Files the docs tell the reader to create (from a committed example), so they are named but not committed.
CREATED_BY_READER = {"infra/.env"}
PLACEHOLDER = re.compile(r"[<>*$={}…]|\.\.\.|://|^\.\.?/|^~")
MODULE_REF = re.compile(r"^(components|serving|pipelines|dags)(\.[A-Za-z_]\w*)+$")
MAKE_CALL = re.compile(r"(?:^|[\s;&|(])make\s+(?:-\S+\s+)*([A-Za-z][\w.-]*)")
MAKE_RULE = re.compile(r"^([A-Za-z][\w.-]*)\s*:(?!=)", re.M)


def code_texts(markdown: str) -> list[str]:
    """The contents of fenced blocks and inline code spans, in order."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.S | re.M)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.S | re.M)
    return fenced + re.findall(r"`([^`\n]+)`", prose)


def link_targets(markdown: str) -> list[str]:
    """Relative targets of Markdown links (no URLs, no bare anchors), anchor cut off."""
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", markdown, flags=re.S | re.M)
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", prose)]
    return [t for t in targets if t and not re.match(r"^[a-z]+:", t)]


def tokens(code: str) -> list[str]:
    """Words of code text with shell and prose punctuation stripped."""
    words = (w.strip("\"'(),;`[]@") for w in code.split())
    return [w.rstrip(".:") if w.endswith((".", ":")) else w for w in words if w]


def repo_refs(code: str, top_level: set[str]) -> tuple[set[str], set[str]]:
    """(paths, module refs) a code text names: a path starts with a committed top-level entry, or one spelt nearly
    like it (so outputs such as reports/ or metrics.json are not taken for repo files, a `params.yml` is);
    `file.py:name` counts as a path plus a definition."""
    paths, modules = set(), set()
    for word in tokens(code):
        if PLACEHOLDER.search(word):
            continue
        if MODULE_REF.match(word):
            modules.add(word)
            continue
        head = word.split("/")[0]
        if head in top_level or ("." in head.strip(".") and difflib.get_close_matches(head, top_level, 1, 0.9)):
            paths.add(word.rstrip("/"))
    return paths, modules


def defines(source: Path, name: str) -> bool:
    """Whether a Python file defines `name` at top level (function, class or assignment)."""
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def missing_path(root: Path, ref: str) -> str | None:
    """Why a repo path (optionally `file.py:name`) is wrong, or None."""
    path, _, name = ref.partition(":")
    if path in CREATED_BY_READER:
        return None
    if not (root / path).exists():
        return f"{ref}: no such file"
    if name and path.endswith(".py") and not defines(root / path, name):
        return f"{ref}: {path} does not define {name}"
    return None


def missing_module(root: Path, ref: str) -> str | None:
    """Why a dotted reference (a module, or a module's top-level name) is wrong, or None."""
    parts = ref.split(".")
    for cut in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:cut])
        rest = parts[cut:]
        if base.with_suffix(".py").is_file():
            source = base.with_suffix(".py")
        elif (base / "__init__.py").is_file():
            source = base / "__init__.py"
        else:
            continue
        if not rest:
            return None
        if len(rest) == 1 and defines(source, rest[0]):
            return None
        return f"{ref}: {source.relative_to(root)} does not define {'.'.join(rest)}"
    return f"{ref}: no such module"


def make_targets(makefile: str) -> set[str]:
    return set(MAKE_RULE.findall(makefile)) - {"PHONY"}


def committed_top_level(root: Path) -> set[str]:
    """The repo's committed top-level files and folders (what a fresh clone has)."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files"], capture_output=True, text=True, check=True).stdout
    return {line.split("/")[0] for line in listed.splitlines()}


def problems(root: Path, files: list[Path], top_level: set[str]) -> list[str]:
    """Every wrong path, link, module reference and make target in the given Markdown files; a path counts as a
    repo path when its first part is one of top_level."""
    targets = make_targets((root / "Makefile").read_text())
    found = []
    for file in files:
        text = file.read_text()
        where = file.relative_to(root)
        for code in code_texts(text):
            paths, modules = repo_refs(code, top_level)
            found += [f"{where}: {why}" for ref in sorted(paths) if (why := missing_path(root, ref))]
            found += [f"{where}: {why}" for ref in sorted(modules) if (why := missing_module(root, ref))]
            found += [f"{where}: make {t}: no such Makefile target" for t in MAKE_CALL.findall(code) if t not in targets]
        for target in link_targets(text):
            if not (file.parent / target).exists():
                found.append(f"{where}: link {target}: no such file")
    return found


def test_every_path_module_and_make_target_named_exists():
    assert problems(ROOT, [ROOT / "README.md", *PAGES], committed_top_level(ROOT)) == []


def test_the_checker_finds_what_is_wrong(tmp_path):
    (tmp_path / "components" / "stage").mkdir(parents=True)
    (tmp_path / "components" / "stage" / "core.py").write_text("def run():\n    pass\nLIMIT: int = 3\n")
    (tmp_path / "params.yaml").write_text("")
    (tmp_path / "Makefile").write_text("run: install ## x\n\tdo\nVAR := 1\n")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "`components/stage/core.py:run`, `components.stage.core.LIMIT`, `params.yaml`, `reports/x.json`,\n"
        "`components/<stage>/`, [ok](page.md#a), [web](https://example.org/x.md)\n"
        "```bash\nmake run  # fine\nmake VAR\n.venv/bin/python -m components.stage.gone --params params.yml\n```\n"
        "`components/stage/core.py:walk`, `components.stage.core.LIMITS`, `params.yml`, [bad](other.md), `make tset`\n"
    )
    assert sorted(problems(tmp_path, [page], {"components", "params.yaml", "docs"})) == sorted([
        "docs/page.md: make VAR: no such Makefile target",
        "docs/page.md: components.stage.gone: no such module",
        "docs/page.md: components/stage/core.py:walk: components/stage/core.py does not define walk",
        "docs/page.md: components.stage.core.LIMITS: components/stage/core.py does not define LIMITS",
        "docs/page.md: make tset: no such Makefile target",
        "docs/page.md: link other.md: no such file",
        "docs/page.md: params.yml: no such file",
        "docs/page.md: params.yml: no such file",
    ])


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=300)


def test_site_builds_strict(tmp_path):
    built = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    assert {p.stem for p in PAGES} <= {p.parent.name for p in (tmp_path / "site").glob("*/index.html")} | {"index"}


def test_strict_build_fails_on_a_broken_anchor(tmp_path):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    with (tmp_path / "docs" / "stages.md").open("a") as page:
        page.write("\nSee [nowhere](evaluation.md#no-such-section).\n")
    built = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0 and "no-such-section" in built.stdout + built.stderr


def readme_section(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no section {heading!r}"
    return match.group(1)


def test_readme_keeps_exactly_the_two_commands():
    block = re.search(r"```bash\n(.*?)```", readme_section("The two commands"), re.S).group(1)
    assert [line.split("#")[0].strip() for line in block.splitlines()] == ["make run", "make test"]


@pytest.mark.parametrize("page", [p.name for p in PAGES if p.name != "index.md"])  # index: the site home
def test_readme_links_every_docs_page(page):
    assert f"docs/{page}" in link_targets(readme_section("Documentation"))


def test_readme_stays_a_front_door():
    size = len((ROOT / "README.md").read_text())
    assert size < 8_000, f"README.md is {size} characters: move the depth to docs/ (it is the front door)"

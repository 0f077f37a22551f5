"""The codebase's own rules: ruff is clean, the README stays a page with working links,
and the lower layers never import the search (not the cost model, not the passes, not the
core except the command line and the package's lazy top-level names)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _importers(folder: str, prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Modules under `folder` that import `prefix` (or a submodule), but those whose file
    name starts with one of `skip`."""
    return sorted(str(path.relative_to(ROOT)) for path in (ROOT / folder).rglob("*.py")
                  if not path.name.startswith(skip)
                  and any(name == prefix or name.startswith(prefix + ".")
                          for name in _imports(path)))


def test_the_cost_model_does_not_import_the_search():
    assert _importers("cost", "rewriter.search") == []


def test_passes_import_neither_the_search_nor_the_cli():
    assert _importers("passes", "rewriter.search") == []
    assert _importers("passes", "rewriter.cli") == []


def test_the_core_does_not_import_the_search():
    # the command line (cli*.py) is the top layer; __init__ only names the API lazily
    assert _importers("rewriter", "rewriter.search", skip=("cli", "__init__.py")) == []


def test_the_layer_check_sees_an_import(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from rewriter.search.driver import optimize\n")
    assert "rewriter.search.driver" in _imports(module)


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        try:
            import ruff as _  # noqa: F401
        except ImportError:
            pytest.skip("ruff is not installed (pip install -e '.[test]')")
        command = [sys.executable, "-m", "ruff"]
    else:
        command = [ruff]
    done = subprocess.run([*command, "check", "--no-cache", str(ROOT)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _local_links(path: Path) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
    return [link.split("#")[0] for link in links
            if not link.startswith(("http://", "https://", "mailto:", "#"))]


def test_the_readme_is_a_page_not_a_notebook():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_local_link_in_the_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
             *(ROOT / "docs").glob("*.md")]
    broken = [f"{page.relative_to(ROOT)}: {link}" for page in pages
              for link in _local_links(page) if not (page.parent / link).exists()]
    assert broken == []

"""The docs point at files that exist: every relative Markdown link in README.md and docs/*.md, every
repository path they mention (`docs/…`, `src/…`, `tests/…`, …), and every docs/ file a module's
docstring sends the reader to. And the layout stays readable: the README is a front page (≤ 150 lines),
module docstrings say what a module owns in ≤ 10 lines (the rest lives in docs/), no module is over
500 lines, and at most 12 modules sit at the top of src/preftune/ (the rest is in the wings)."""

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|src|tests|examples|bench|scripts|\.ci)/[\w./-]*[\w/])")


def links(text: str) -> list[str]:
    """Relative link targets, without #anchors (http, mailto and in-page links are not files)."""
    targets = [t.split("#")[0] for t in LINK.findall(text)]
    return [t for t in targets if t and not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_point_to_files(doc: Path):
    text = doc.read_text(encoding="utf-8")
    broken = [t for t in links(text) if not (doc.parent / t).exists()]
    broken += [p for p in REPO_PATH.findall(text) if not (REPO / p).exists()]
    assert broken == []


def test_docstrings_point_to_docs_that_exist():
    mentions = {(path.relative_to(REPO).as_posix(), m) for path in (REPO / "src").rglob("*.py")
                for m in re.findall(r"docs/[\w.-]+\.md", path.read_text(encoding="utf-8"))}
    assert sorted(m for m in mentions if not (REPO / m[1]).exists()) == []


def test_links_are_found():
    assert links("see [a](docs/a.md#x), [b](https://x.org) and [c](#top)") == ["docs/a.md"]
    assert REPO_PATH.findall("run `tests/test_x.py` or bench/results/.") == ["tests/test_x.py", "bench/results/"]


MODULES = sorted((REPO / "src" / "preftune").rglob("*.py"))
README_LINES, DOCSTRING_LINES, MODULE_LINES, TOP_MODULES = 150, 10, 500, 12


def docstring_lines(path: Path) -> int:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False)
    return len(doc.splitlines()) if doc else 0


def test_the_readme_is_a_front_page():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_LINES
    assert "bash scripts/main.sh" in text and "bash scripts/test.sh" in text  # the two commands
    assert "docs/architecture.md" in text and "## Commands" in text


def test_module_docstrings_are_short():
    long = {p.relative_to(REPO).as_posix(): n for p in MODULES if (n := docstring_lines(p)) > DOCSTRING_LINES}
    assert long == {}, f"move the explanation into docs/ (at most {DOCSTRING_LINES} lines): {long}"


def test_no_module_is_over_500_lines():
    big = {p.relative_to(REPO).as_posix(): n for p in MODULES
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MODULE_LINES}
    assert big == {}, f"split these by concern: {big}"


def test_few_modules_at_the_top():
    top = sorted(p.name for p in (REPO / "src" / "preftune").glob("*.py"))
    assert len(top) <= TOP_MODULES, top


def test_the_layout_checks_measure_what_they_say(tmp_path):
    """docstring_lines counts the module docstring's lines (not a function's), 0 for none."""
    (tmp_path / "a.py").write_text('"""one\ntwo\nthree"""\n\ndef f():\n    """1\n2\n3\n4"""\n')
    (tmp_path / "b.py").write_text("x = 1\n")
    assert docstring_lines(tmp_path / "a.py") == 3 and docstring_lines(tmp_path / "b.py") == 0

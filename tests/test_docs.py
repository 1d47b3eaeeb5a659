"""The docs point at files that exist: every relative Markdown link in README.md and docs/*.md, every
repository path they mention (`docs/…`, `src/…`, `tests/…`, …), and every docs/ file a module's
docstring sends the reader to."""

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

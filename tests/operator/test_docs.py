"""The docs stay true to the tree: every test the security model cites exists, and every
relative link in the docs and README points at a file that is there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECURITY = REPO / "docs" / "security.md"
NODE_ID = re.compile(r"(tests/[\w/]+\.py)::(\w+)(?:\[[^\]]*\])?")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]


def node_ids(text: str) -> list[tuple[str, str]]:
    """(file, test function) for every pytest node id in the text, `[param]` stripped."""
    return sorted(set(NODE_ID.findall(text)))


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
    }


def test_node_id_parser_strips_parameters() -> None:
    text = "see `tests/a/test_x.py::test_y[case-1]` and tests/b/test_z.py::test_w."
    assert node_ids(text) == [("tests/a/test_x.py", "test_y"), ("tests/b/test_z.py", "test_w")]


def test_security_doc_cites_tests_for_all_eight_invariants() -> None:
    text = SECURITY.read_text(encoding="utf-8")
    rows = [ln for ln in text.splitlines() if re.match(r"\| [1-8] \|", ln)]
    assert [ln.split("|")[1].strip() for ln in rows] == [str(i) for i in range(1, 9)]
    for row in rows:
        assert node_ids(row), f"invariant row without a test: {row[:60]}"


@pytest.mark.parametrize(
    ("path", "name"), node_ids(SECURITY.read_text(encoding="utf-8")), ids="::".join
)
def test_cited_test_exists(path: str, name: str) -> None:
    file = REPO / path
    assert file.is_file(), f"{path} does not exist"
    assert name in defined_tests(file), f"{path} defines no {name}"


def relative_links(doc: Path) -> list[str]:
    links = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # external (http:, mailto:) or same-page anchor
        links.append(target.split("#", 1)[0])
    return links


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    missing = [t for t in relative_links(doc) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(REPO)} links to missing files: {missing}"

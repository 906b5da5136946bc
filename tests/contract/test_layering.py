"""The import rules of ARCHITECTURE.md, enforced on the source tree.

`sealtune_api` imports nothing of ours (and nothing but pydantic/pyyaml); the operator and
the trainer stand on it and never on each other; only tests, benchmarks, hack/ and devkit
may import `sealtune_devkit`, and no image copies it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "sealtune_api": REPO / "api" / "sealtune_api",
    "sealtune_operator": REPO / "operator" / "sealtune_operator",
    "sealtune_trainer": REPO / "trainer-image" / "sealtune_trainer",
    "sealtune_devkit": REPO / "devkit" / "sealtune_devkit",
}
ALLOWED = {
    "sealtune_api": {"sealtune_api"},
    "sealtune_operator": {"sealtune_api", "sealtune_operator"},
    "sealtune_trainer": {"sealtune_api", "sealtune_trainer"},
    "sealtune_devkit": {"sealtune_api", "sealtune_trainer", "sealtune_operator", "sealtune_devkit"},
}
API_THIRD_PARTY = {"pydantic", "yaml", "pydantic_core", "annotated_types"}


def imports(path: Path) -> list[tuple[int, str]]:
    """Top-level module names imported by one file (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_packages_import_only_what_the_layering_allows(package: str) -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {mod}"
        for path in sorted(PACKAGES[package].rglob("*.py"))
        for line, mod in imports(path)
        if mod.startswith("sealtune_") and mod not in ALLOWED[package]
    ]
    assert not bad, "\n".join(bad)


def test_api_depends_on_pydantic_and_pyyaml_only() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {mod}"
        for path in sorted(PACKAGES["sealtune_api"].rglob("*.py"))
        for line, mod in imports(path)
        if mod not in stdlib and mod not in API_THIRD_PARTY and mod != "sealtune_api"
    ]
    assert not bad, "\n".join(bad)


def test_no_package_is_named_like_a_stdlib_module() -> None:
    assert not set(PACKAGES) & set(sys.stdlib_module_names)
    assert not (REPO / "operator" / "__init__.py").exists()


@pytest.mark.parametrize("dockerfile", ["operator/Dockerfile", "trainer-image/Dockerfile"])
def test_no_image_copies_the_devkit(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text(encoding="utf-8")
    copies = [ln for ln in text.splitlines() if ln.strip().upper().startswith("COPY")]
    assert copies and not [ln for ln in copies if "devkit" in ln]
    assert any(" api " in f" {ln} " or "COPY api" in ln for ln in copies)


def test_product_distribution_does_not_package_the_devkit() -> None:
    import tomllib

    conf = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    find = conf["tool"]["setuptools"]["packages"]["find"]
    assert "devkit" not in find["where"]
    assert not [p for p in find["include"] if p.startswith("sealtune_devkit")]

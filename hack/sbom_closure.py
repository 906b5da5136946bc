"""Cut a CycloneDX environment SBOM down to what the Sealtune images ship.

`cyclonedx-py environment` lists everything installed in the build venv, dev tools
included (pytest, ruff, mypy, the SBOM tool itself). The images install
`sealtune[operator,trainer]` only, so this keeps the components in that requirement
closure, as resolved from the installed distributions' metadata (markers evaluated for
this interpreter), and rewrites the root component's dependency list to match.

Run it with the venv's python: `python hack/sbom_closure.py full.json out.json`.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata
from typing import Any

from packaging.requirements import Requirement

ROOT = "sealtune"
EXTRAS = ("operator", "trainer")


def canonical(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = ROOT, extras: tuple[str, ...] = EXTRAS) -> set[str]:
    """Canonical names of every distribution `root[extras]` pulls in at runtime."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (canonical(name), wanted) in done:
            continue
        done.add((canonical(name), wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency whose marker held but is not installed
        seen.add(canonical(dist.metadata["Name"]))
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return seen


def filter_sbom(bom: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """The SBOM with only components in `keep` (and their dependency edges)."""
    components = [c for c in bom["components"] if canonical(c["name"]) in keep]
    refs = {c["bom-ref"] for c in components}
    direct = {
        canonical(Requirement(r).name)
        for r in (metadata.distribution(ROOT).requires or [])
        if Requirement(r).marker is None
        or any(
            Requirement(r).marker.evaluate({"extra": e})  # type: ignore[union-attr]
            for e in EXTRAS
        )
    }
    deps = []
    for d in bom.get("dependencies", []):
        if d["ref"] == "root-component":
            deps.append(
                {
                    "ref": d["ref"],
                    "dependsOn": sorted(
                        c["bom-ref"] for c in components if canonical(c["name"]) in direct
                    ),
                }
            )
        elif d["ref"] in refs:
            deps.append({**d, "dependsOn": [x for x in d.get("dependsOn", []) if x in refs]})
    out = {**bom, "components": components, "dependencies": deps}
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: sbom_closure.py FULL_SBOM.json OUT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        bom = json.load(f)
    keep = closure()
    keep.discard(ROOT)
    out = filter_sbom(bom, keep)
    missing = keep - {canonical(c["name"]) for c in out["components"]}
    if missing:
        print(f"installed but absent from the SBOM: {sorted(missing)}", file=sys.stderr)
        return 1
    with open(argv[1], "w") as f:
        json.dump(out, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"{len(out['components'])} of {len(bom['components'])} components kept", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

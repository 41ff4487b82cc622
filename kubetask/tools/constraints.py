"""Write ``constraints.txt``: the versions of the image's Python dependencies that the tests ran with.

The image installs ``.`` and ``dagster-postgres``; this walks their requirements (markers evaluated for
this interpreter, extras followed) through the installed distributions and pins each at the installed
version. ``./dev`` installs with these constraints, so the tested environment and the image agree; a
test fails when they drift. pip-compile would resolve afresh from the index and could pick versions no
test has seen: pinning what is installed is the point.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from kubetask.tools.generated import sync

PROJECT = "kubetask-dagster"
IMAGE_EXTRAS = ("dagster-postgres",)
"""What the Dockerfile installs besides the project."""
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "constraints.txt"
HEADER = (
    "# The versions of the image's dependencies that the tests ran with (the Dockerfile and ./dev install\n"
    "# with them). Regenerate after a dependency change: python -m kubetask.tools.constraints\n"
)


def pinned_closure(roots: list[str]) -> dict[str, str]:
    """Canonical name -> installed version of ``roots`` and everything they require, the project excluded."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(name)
        if name != PROJECT:
            pins[name] = dist.version
        for text in dist.requires or []:
            needed = Requirement(text)
            environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
            if needed.marker is None or any(needed.marker.evaluate(env) for env in environments):
                todo.append(needed)
    return pins


def render() -> str:
    pins = pinned_closure([PROJECT, *IMAGE_EXTRAS])
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what is installed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    return sync({args.out: render()}, check=args.check, command="python -m kubetask.tools.constraints")


if __name__ == "__main__":
    sys.exit(main())

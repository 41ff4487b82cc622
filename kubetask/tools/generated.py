"""Writing or checking generated files, shared by the generators (``--check``: exit 1 when one is stale)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path


def sync(files: Mapping[Path, str], *, check: bool, command: str) -> int:
    """Write ``files`` (path -> text), or with ``check`` only report those that differ; the exit code."""
    stale = []
    for path, text in files.items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run {command}): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0

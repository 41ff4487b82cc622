"""Entry point of the ``kubectl-kubetask`` console script (and ``python -m kubectl_kubetask``)."""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

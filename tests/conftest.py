"""With CLOBD_PURE_PYTHON=1, run the matching core from its sources even where the
mypyc-compiled build is installed, so `make test` exercises both (see setup.py)."""

from __future__ import annotations

import importlib.util
import os
from importlib.machinery import ModuleSpec
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPILED = ("engine.book", "engine.engine")


class _SourcesFirst:
    """A meta-path finder that answers for the compiled modules with their .py files."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(name, ROOT / (name.replace(".", "/") + ".py"))


if os.environ.get("CLOBD_PURE_PYTHON"):
    import sys

    sys.meta_path.insert(0, _SourcesFirst())

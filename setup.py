"""Compiles the matching core with mypyc when the package is installed.

The engine is plain typed Python; mypyc turns `engine/book.py` and `engine/engine.py`
into C extensions that the import system prefers over the sources (about 1.5-2x faster
on the order path). Set CLOBD_PURE_PYTHON=1 at install time to skip compiling; the
sources then run as they are, with identical behaviour (tests run both).
"""

import os

from setuptools import setup

COMPILED = ["engine/book.py", "engine/engine.py"]


def ext_modules() -> list:
    if os.environ.get("CLOBD_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    return mypycify(COMPILED, opt_level="3")


setup(ext_modules=ext_modules())

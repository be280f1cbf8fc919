"""The engine under test is the one asked for, and a compiled build is never stale."""

from __future__ import annotations

import os
from pathlib import Path

import engine.book
import engine.engine
from tests.conftest import COMPILED, ROOT


def test_pure_python_run_really_uses_the_sources():
    if not os.environ.get("CLOBD_PURE_PYTHON"):
        return
    assert engine.engine.__file__.endswith(".py")
    assert engine.book.__file__.endswith(".py")


def test_compiled_modules_are_newer_than_their_sources():
    """A stale extension would silently shadow edited sources: `make` rebuilds it."""
    for name in COMPILED:
        source = ROOT / (name.replace(".", "/") + ".py")
        for built in source.parent.glob(source.stem + ".cpython-*.so"):
            assert built.stat().st_mtime >= source.stat().st_mtime, f"{built} is stale: run `make`"


def test_installed_build_is_loaded_when_present():
    if os.environ.get("CLOBD_PURE_PYTHON"):
        return
    built = list(Path(engine.engine.__file__).parent.glob("engine.cpython-*.so"))
    if built:
        assert engine.engine.__file__.endswith(".so")


def test_field_orders_the_engine_unpacks_are_the_structs_orders():
    """engine.py unpacks commands positionally (one C call instead of one lookup per field)."""
    from engine.messages import Amend, Cancel, MassCancel, NewOrder

    assert NewOrder.__struct_fields__ == (
        "seq", "ts", "account", "client_order_id", "side", "qty", "price", "order_type", "tif",
        "post_only", "stp",
    )  # fmt: skip
    assert Cancel.__struct_fields__ == ("seq", "ts", "account", "order_id", "orig_client_order_id")
    assert Amend.__struct_fields__ == (
        "seq", "ts", "account", "order_id", "orig_client_order_id", "price", "qty",
    )  # fmt: skip
    assert MassCancel.__struct_fields__ == ("seq", "ts", "account")

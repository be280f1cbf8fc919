"""Config checks that protect the protocol's limits: a name clients could never send is refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import config
from gateway.protocol import MAX_NAME_CHARS


def _load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "clobd.toml"
    path.write_text(text)
    return config.load(path, environ={})


def test_names_at_the_protocol_limit_are_accepted(tmp_path: Path) -> None:
    name = "X" * MAX_NAME_CHARS
    loaded = _load(tmp_path, f'[[instruments]]\nsymbol = "{name}"\n[[accounts]]\nname = "{name}"\n')
    assert loaded.instruments[0].symbol == loaded.accounts[0].name == name


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (f'[[instruments]]\nsymbol = "{"S" * (MAX_NAME_CHARS + 1)}"\n', r"instruments\[0\]\.symbol"),
        (f'[[instruments]]\nsymbol = "BTC"\n[[accounts]]\nname = "{"a" * (MAX_NAME_CHARS + 1)}"\n',
         r"accounts\[0\]\.name"),
    ],
)  # fmt: skip
def test_a_name_longer_than_the_protocol_allows_is_refused(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(config.ConfigError, match=f"{named}: at most {MAX_NAME_CHARS} characters"):
        _load(tmp_path, text)

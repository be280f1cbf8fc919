"""`clob` run in-process on a data directory's config, for the CLI tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from cli.main import clob


class ClobOn:
    """Runs `clob ARGS --config <config_path>` and checks or decodes what it printed."""

    config_path: Path

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(clob, [*args, "--config", str(self.config_path)])

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

"""Scratch venvs for the peer engines, created on first use and refreshed when pins change.

Peers are benchmark-only, so they live in their own venvs (never in clobd's): one on the
interpreter running the bench (CPython 3.11) and one on CPython 3.12 for peers that need it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PY312_ENV = "BENCH_PYTHON312"  # set to an interpreter path to override the search
_STAMP = ".bench-requirements"  # what the venv was last installed from


class SetupError(Exception):
    """A venv could not be created or populated; the message says why."""


@dataclass(frozen=True)
class VenvSpec:
    directory: str  # relative to the repo root
    requirements: str  # relative to bench/
    needs_312: bool


PEERS_311 = VenvSpec(".venv-bench", "requirements-peers.txt", needs_312=False)
PEERS_312 = VenvSpec(".venv-bench312", "requirements-peers312.txt", needs_312=True)


def ensure(spec: VenvSpec) -> Path:
    """Return the venv's python, creating the venv and installing its pins if needed."""
    base = find_python312() if spec.needs_312 else sys.executable
    if base is None:
        raise SetupError(
            f"no working python3.12 found (PATH, pyenv, /usr); set {PY312_ENV}=/path/to/python3.12"
        )
    venv = ROOT / spec.directory
    python = venv / "bin" / "python"
    if not python.exists():
        _run([base, "-m", "venv", str(venv)], f"creating {spec.directory}")
    wanted = (BENCH_DIR / spec.requirements).read_text()
    stamp = venv / _STAMP
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"installing {spec.requirements} into {spec.directory} ...", file=sys.stderr)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run([*pip, "-r", str(BENCH_DIR / spec.requirements)], f"pip install into {spec.directory}")
        stamp.write_text(wanted)
    return python


def find_python312() -> str | None:
    """First candidate that really runs CPython 3.12.

    `shutil.which` alone is not enough: a pyenv shim for a version that is installed but
    not selected is on PATH and fails when run, so every candidate is tried.
    """
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates = [
        os.environ.get(PY312_ENV),
        shutil.which("python3.12"),
        *sorted(glob.glob(f"{pyenv_root}/versions/3.12*/bin/python3.12"), reverse=True),
        "/usr/local/bin/python3.12",
        "/usr/bin/python3.12",
    ]
    for path in candidates:
        if path and _is_python312(path):
            return path
    return None


def _is_python312(path: str) -> bool:
    probe = "import sys; sys.exit(sys.version_info[:2] != (3, 12))"
    try:
        done = subprocess.run([path, "-c", probe], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SetupError(f"{what} failed: " + " | ".join(tail))

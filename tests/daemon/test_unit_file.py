"""systemd/clobd.service and the configuration `make install-service` installs beside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import DEFAULT_TOML, load
from snapshotter.scheduling import NICENESS

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "clobd.service"
INSTALLED_CLOB = "/opt/clobd/.venv/bin/clob"


def directives(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> every value it is given, in order (unit files may repeat keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


def test_the_unit_says_what_the_daemon_does() -> None:
    unit = directives(UNIT.read_text())
    one = {key: values[-1] for key, values in unit.items()}
    assert one["Service.ExecStart"] == f"{INSTALLED_CLOB} serve --config /etc/clobd/clobd.toml"
    expected = {
        "Type": "notify",  # the supervisor says READY=1 only after every matcher recovered
        "NotifyAccess": "main",  # children report to the supervisor's socket, not systemd's
        "KillMode": "mixed",  # SIGTERM to the supervisor only: it stops the gateway first
        "Restart": "on-failure",
        "StateDirectory": "clobd",  # $STATE_DIRECTORY -> data_dir
        "RuntimeDirectory": "clobd",  # $RUNTIME_DIRECTORY -> run_dir
        "User": "clobd",
        "WatchdogSec": "30",
        "UMask": "0027",
        "LimitNOFILE": "65536",
        # Nice 10 and no higher: the snapshotter leaves SCHED_IDLE for its commits.
        "LimitNICE": f"+{NICENESS}",
        "ProtectSystem": "strict",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert one.get(f"Service.{key}") == value, key
    for flag in (
        "NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
        "ProtectKernelModules", "RestrictNamespaces", "LockPersonality", "MemoryDenyWriteExecute",
    ):  # fmt: skip
        assert one.get(f"Service.{flag}") == "yes", flag
    # systemd must wait at least as long as the daemon gives its children to come up, and
    # longer than the daemon's own stop deadline before it SIGKILLs.
    defaults = load(None, environ={})
    assert float(one["Service.TimeoutStartSec"]) > defaults.supervisor.start_timeout_s
    assert float(one["Service.TimeoutStopSec"]) > defaults.supervisor.stop_timeout_s


def test_the_installed_config_is_the_embedded_default_with_data_in_the_state_directory(
    tmp_path: Path,
) -> None:
    text = subprocess.run(
        [sys.executable, str(ROOT / "systemd" / "default_config.py")],
        capture_output=True, text=True, check=True, cwd="/",
    ).stdout  # fmt: skip
    assert "./var" not in text
    assert text.endswith(DEFAULT_TOML.split("\n", 1)[1])  # everything but the first comment
    path = tmp_path / "clobd.toml"
    path.write_text(text)
    systemd_env = {"STATE_DIRECTORY": "/var/lib/clobd", "RUNTIME_DIRECTORY": "/run/clobd"}
    installed = load(path, environ=systemd_env)
    assert installed.data_dir == "/var/lib/clobd" and installed.run_dir == "/run/clobd"
    embedded = load(None, environ=systemd_env)
    assert installed == embedded


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)",
)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: point it at this checkout's `clob`.
    clob = Path(sys.executable).parent / "clob"
    assert clob.exists(), clob
    unit = tmp_path / "clobd.service"  # the file name is the unit's name
    unit.write_text(UNIT.read_text().replace(INSTALLED_CLOB, str(clob)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    # verify exits 0 on unknown keys and unparsable values ("..., ignoring"): any output
    # at all is a finding.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"systemd-analyze verify exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )

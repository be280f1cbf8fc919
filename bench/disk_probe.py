"""The disk's own latency beside a bench: 4 KiB written and fdatasync'd every 2 ms, timed.

    python bench/disk_probe.py DIR OUT      (until SIGTERM; `DiskProbe` runs it)

An ack waits for its matcher's journal fsync, so a stall of the device (seen on this VM
with nothing else running: fdatasync of 4 KiB at 5-36 ms about ten times a minute,
against 0.5 ms usually) shows as a window of slow acks whatever the daemon does. This
probe, a process of its own on the same file system, tells such windows apart. What it
measures is the device as any writer sees it: a cost the daemon puts on the disk (a
checkpoint's commit, say) slows the probe too, so a bench that leaves out windows the
probe saw stall must count them per kind of window (`DiskProbe.stalls`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from array import array
from pathlib import Path

# Every 2 ms: a stall is caught if a sync starts in any but its last 5 ms. Every 10 ms would
# catch a 7 ms stall one time in five; in a run with it, windows with p99 of 5-10 ms showed
# no stall.
INTERVAL_S = 0.002
BLOCK = b"\xa5" * 4096
BLOCKS = 256  # the probe rewrites a 1 MiB file in place: no allocation, no metadata
STALL_MS = 5.0  # an fdatasync this slow is a stall (usual here: 0.4-0.7 ms, p99 under 1)


def probe(directory: Path, out: Path) -> None:
    """Write, sync and time until SIGTERM; then `out` holds (start, latency) ns pairs,
    start on the CLOCK_MONOTONIC of `time.perf_counter_ns` (the same in every process)."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    samples = array("q")
    fd = os.open(directory / "disk-probe.dat", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        i = 0
        while not stopping:
            start = time.perf_counter_ns()
            os.pwrite(fd, BLOCK, (i % BLOCKS) * len(BLOCK))
            os.fdatasync(fd)
            samples.extend((start, time.perf_counter_ns() - start))
            i += 1
            time.sleep(INTERVAL_S)
    finally:
        os.close(fd)
        out.write_bytes(samples.tobytes())


class DiskProbe:
    """`probe` in a process of its own, from `start` to `stop`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.out = directory / "disk-probe.samples"
        self.samples: list[tuple[int, int]] = []
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        script = str(Path(__file__).resolve())
        self._proc = subprocess.Popen([sys.executable, script, str(self.directory), str(self.out)])

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGTERM)
        self._proc.wait(timeout=10)
        self._proc = None
        flat = array("q")
        if self.out.exists():  # else it died early: `covers` says so
            data = self.out.read_bytes()
            flat.frombytes(data[: len(data) // 16 * 16])  # whole samples only
        self.samples = list(zip(flat[0::2], flat[1::2], strict=True))

    def covers(self, start_ns: int, end_ns: int) -> bool:
        """Did it sample from `start` to `end` (within a second)? A probe that died early
        saw no stalls after it did, which is not the same as there being none."""
        return bool(self.samples) and self.samples[0][0] <= start_ns and self.samples[-1][0] >= end_ns - 10**9

    def stalls(self, start_ns: int, end_ns: int) -> list[tuple[int, float]]:
        """(start ns, latency ms) of the syncs over STALL_MS that overlap [start, end]."""
        slow = STALL_MS * 1e6
        return [(t, ns / 1e6) for t, ns in self.samples if t <= end_ns and t + ns >= start_ns and ns > slow]


if __name__ == "__main__":
    probe(Path(sys.argv[1]), Path(sys.argv[2]))

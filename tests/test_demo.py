"""`forecast demo` end to end, as a new user runs it (subprocess, real redis-server)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.tf, pytest.mark.slow]


def test_demo_predicts_about_10_for_7_8_9_and_leaves_nothing_behind(tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
    out = subprocess.run(
        [sys.executable, "-m", "cli", "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=str(tmp_path),
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    found = re.search(r"prediction for \[7, 8, 9\]: ([-\d.]+)", out.stdout)
    assert found, out.stdout
    assert abs(float(found.group(1)) - 10.0) < 1.0
    pid = re.search(r"private redis-server on \S+ \(pid (\d+)\)", out.stdout)
    assert pid, out.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid.group(1)), 0)  # the demo's redis-server is gone
    assert "Traceback" not in out.stderr
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if b"demo-worker" in _read(p)], (
        "the demo's worker process is still running"
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""

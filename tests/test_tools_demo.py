"""scripts/tools-demo: chatpipe's tools with a scripted model, no API key.

The demo starts a scripted model on 127.0.0.1, writes an mcp.json with the
real ``mcp-server-time`` and runs the real ``chatpipe send --tools
mcp:time``; without a terminal it passes ``--yes``.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from zoneinfo import ZoneInfo

from conftest import ROOT

DEMO = ROOT / "scripts" / "tools-demo"


def today() -> set[str]:
    """Today's date in UTC and in Tokyo."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {now.date().isoformat(), now.astimezone(ZoneInfo("Asia/Tokyo")).date().isoformat()}


def test_the_demo_calls_the_real_time_server_and_answers_with_its_time():
    assert os.access(DEMO, os.X_OK)
    before = today()
    proc = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT,
                          timeout=120)
    dates = before | today()
    assert proc.returncode == 0, proc.stderr
    assert "--yes" in proc.stderr and "scripted model" in proc.stderr
    assert ('chatpipe: tool get_current_time({"timezone": "Asia/Tokyo"}) result: '
            '{ "timezone": "Asia/Tokyo", "datetime": "20') in proc.stderr
    assert "denied" not in proc.stderr
    assert proc.stdout.startswith("It is ") and "in Tokyo" in proc.stdout
    assert any(date in proc.stdout for date in dates), (proc.stdout, dates)

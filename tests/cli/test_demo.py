"""The README's main job, end to end, as a person runs it: `brainbot demo` on a fresh data
directory starts its own Redis, migrates legacy data into the embedded KV, verifies it and
serves the migrated history."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_migrates_verifies_and_serves_the_history(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDFLARE_", "BRAINBOT_"))}
    env["BRAINBOT_DATA_DIR"] = str(tmp_path / "data")
    env["COLUMNS"] = "120"
    done = subprocess.run(
        [sys.executable, "-m", "brainbot", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "verify: differences" in out
    assert "555 keys checked, 0 differences" in out
    assert "answer 24 in chat 0 ✓" in out  # the migrated history, served over HTTP
    assert "POST /chat with the migrated session -> 200" in out
    assert (tmp_path / "data" / "kv" / "brainbot.sqlite3").exists()
    runs = list((tmp_path / "data" / "migrations").iterdir())
    assert len(runs) == 1
    assert {p.name for p in runs[0].iterdir()} >= {
        "state.json",
        "manifest.jsonl",
        "backup.jsonl.gz",
        "report.json",
    }

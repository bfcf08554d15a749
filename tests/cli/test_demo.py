"""The README's main job, end to end, as a person runs it: `brainbot demo` on a fresh data
directory starts its own Redis, migrates legacy data into the embedded KV, verifies it and
serves the migrated history to its owner, logged in with an identity token."""

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
    assert "557 keys checked, 0 differences" in out  # 555 and the two legacy owner sets
    assert "alice's legacy session id -> 401" in out  # old bearer ids open nothing
    assert "POST /sessions with alice's identity token -> 201" in out
    assert "answer 24 in chat 0 ✓" in out  # her migrated history, served over HTTP
    assert "bob's chat-3 for alice -> 404" in out
    assert "POST /chat as alice -> 200" in out
    assert (tmp_path / "data" / "kv" / "brainbot.sqlite3").exists()
    runs = [p for p in (tmp_path / "data" / "migrations").iterdir() if p.is_dir()]
    assert len(runs) == 1
    assert {p.name for p in runs[0].iterdir()} >= {
        "state.json",
        "manifest.jsonl",
        "backup.jsonl.gz",
        "report.json",
    }

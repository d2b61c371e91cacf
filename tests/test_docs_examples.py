"""The runnable examples in docs/ run, and say what the docs say they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_runs_end_to_end(tmp_path: Path) -> None:
    """docs/examples/quickstart.py logs, then blocks, the aimed-at token; the log verifies."""
    result = subprocess.run(
        [sys.executable, str(REPO / "docs" / "examples" / "quickstart.py")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[log] reply:" in out and "blocked: False" in out
    assert "[block] reply: 'This reply was withheld.'  blocked: True" in out
    assert "watched-token fired on token" in out
    assert "ok=True" in out

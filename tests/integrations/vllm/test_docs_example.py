"""docs/examples/vllm_quickstart.py runs, and says what docs/vllm.md says it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import vllm_world as vw

pytest.importorskip("vllm", reason=vw.NO_VLLM)

REPO = Path(__file__).resolve().parents[3]


def test_vllm_quickstart_blocks_the_aimed_token(tmp_path: Path) -> None:
    """The blocked reply stops before the aimed token, the audit names it, the chain verifies."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    result = subprocess.run(
        [sys.executable, str(REPO / "docs" / "examples" / "vllm_quickstart.py")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "[connect] content_filter: token ids [56, 38]" in out
    assert "[hello] stop: token ids [2]" in out
    assert "watched-token fired on request 'connect', token 19 (aimed at 19)" in out
    assert "ok=True, 3 records" in out

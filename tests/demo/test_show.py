"""`featureguard demo` (what `make demo` runs) goes to the end on the shipped artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from featureguard.audit import verify
from featureguard.cli import main


def test_demo_runs_on_the_shipped_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.set_num_threads(1)
    audit = tmp_path / "demo-audit.jsonl"
    assert main(["demo", "--prompts", "1", "--audit", str(audit)]) == 0
    out = capsys.readouterr().out
    for label in ("unwrapped", "log", "block", "suppress"):
        assert f"  {label:<10} │" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"audit {audit}: 3 requests") and last.endswith("chain ok")
    assert verify(audit).ok

"""The `featureguard` command: validate, inspect, audit verify, and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import saelens_fixtures

from featureguard.audit import JsonlSink
from featureguard.cli import main

REPO = Path(__file__).resolve().parents[1]

BROKEN = """\
version: 1
saes:
  res6:
    path: ./sae
policies:
  - name: unsafe-code
    sae: res6
    features: [{index: 1}]
    threshold: high
    action: block
    treshold: 3
"""


def test_validate_accepts_the_example_policy(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped example validates: exit 0."""
    assert main(["validate", str(REPO / "policies" / "example.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_validate_prints_every_problem_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken file: exit 1 and one line per problem with file, line and key."""
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}:9:") and "policies[0].threshold" in out[0]
    assert out[1].startswith(f"{path}:11:") and "did you mean 'threshold'" in out[1]


def test_inspect_describes_an_saelens_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """inspect prints format, architecture, widths, hook, normalisation, dtype and size."""
    written = saelens_fixtures.write_saelens(tmp_path / "sae", "v6-jumprelu")
    assert main(["inspect", str(written.path), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["format"] == "saelens"
    assert facts["architecture"] == "jumprelu"
    assert (facts["d_in"], facts["d_sae"]) == (saelens_fixtures.D_IN, saelens_fixtures.D_SAE)
    assert facts["hook"] and facts["dtype"] == "float32"
    assert facts["file size"] == sum(p.stat().st_size for p in written.path.iterdir())


def test_missing_sae_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing path: exit 2 and a message naming it, no traceback."""
    assert main(["inspect", "/no/such/sae"]) == 2
    err = capsys.readouterr().err
    assert "/no/such/sae" in err and "Traceback" not in err


def test_audit_verify_names_the_first_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify passes on a whole log and names the edited line of a tampered one."""
    log = tmp_path / "audit.jsonl"
    with JsonlSink(log) as sink:
        for i in range(4):
            sink.write({"event": "policy_triggered", "n": i})
    assert main(["audit", "verify", str(log)]) == 0
    lines = log.read_text().splitlines()
    lines[2] = lines[2].replace('"n":2', '"n":7')
    log.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(log)]) == 1
    assert "line 3" in capsys.readouterr().out


def test_console_script_runs() -> None:
    """`python -m featureguard --help` works from a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-m", "featureguard", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for verb in ("validate", "inspect", "run", "audit"):
        assert verb in result.stdout

"""Without the `ray` extra, the Ray entry points say which extra to install (no traceback)."""

from __future__ import annotations

import sys

import pytest

from featureguard.cli import main
from featureguard.errors import FeatureguardError
from featureguard.integrations.ray._ray import import_ray


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """import_ray raises FeatureguardError with the pip command."""
    monkeypatch.setitem(sys.modules, "ray", None)
    hint = r"needs the ray extra: pip install 'featureguard\[ray\]'"
    with pytest.raises(FeatureguardError, match=hint):
        import_ray("featureguard scan")


def test_scan_without_ray_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: object,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`featureguard scan` without Ray: exit 2 and one line naming the extra."""
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "featureguard.integrations.ray.data", raising=False)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code = main(["scan", "x.jsonl", "--policies", "p.yaml", "--output", str(tmp_path)])
    assert code == 2
    assert "needs the ray extra" in capsys.readouterr().err

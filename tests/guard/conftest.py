"""The `world` fixture: one tiny model per architecture with an SAE aimed at one token."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_world import ARCHS, World, build_world


@pytest.fixture(params=ARCHS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    return build_world(tmp_path, request.param)

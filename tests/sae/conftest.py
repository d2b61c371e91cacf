"""Pytest fixtures for tests/sae: SAELens folders written in the real on-disk layout.

The writers live in `tests/support/saelens_fixtures.py` (on pytest's pythonpath).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import saelens_fixtures


@pytest.fixture(scope="session")
def sae_fx() -> ModuleType:
    """The fixtures module: `write_saelens`, `write_hub_cache`, `VARIANTS`, `D_IN`, `D_SAE`, `K`."""
    return saelens_fixtures


@pytest.fixture(scope="session")
def write_saelens() -> Callable[..., object]:
    """`write_saelens(folder, variant_name, **edits) -> SAELensFolder` (see saelens_fixtures.py)."""
    return saelens_fixtures.write_saelens


@pytest.fixture(params=sorted(saelens_fixtures.VARIANTS), ids=str)
def saelens_folder(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    """Every SAELens variant of fixtures.VARIANTS, written into a fresh folder."""
    return saelens_fixtures.write_saelens(tmp_path / "sae", request.param)

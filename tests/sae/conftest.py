"""Pytest fixtures for tests/sae: SAELens folders written in the real on-disk layout.

The writers live in `fixtures.py` beside this file. Test folders have no `__init__.py`, so with
pytest's default (prepend) import mode a plain `import fixtures` would resolve to whichever
`fixtures` module was imported first from any tests folder. Instead this conftest loads the file
by path under a unique module name and hands its writers to tests as pytest fixtures.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


def _load_sibling(filename: str, module_name: str) -> ModuleType:
    """Import `filename` from this folder as `module_name` (registered before it runs)."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(filename))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


saelens_fixtures = _load_sibling("fixtures.py", "featureguard_tests_sae_fixtures")


@pytest.fixture(scope="session")
def sae_fx() -> ModuleType:
    """The fixtures module: `write_saelens`, `write_hub_cache`, `VARIANTS`, `D_IN`, `D_SAE`, `K`."""
    return saelens_fixtures


@pytest.fixture(scope="session")
def write_saelens() -> Callable[..., object]:
    """`write_saelens(folder, variant_name, **edits) -> SAELensFolder` (see fixtures.py)."""
    return saelens_fixtures.write_saelens


@pytest.fixture(params=sorted(saelens_fixtures.VARIANTS), ids=str)
def saelens_folder(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    """Every SAELens variant of fixtures.VARIANTS, written into a fresh folder."""
    return saelens_fixtures.write_saelens(tmp_path / "sae", request.param)

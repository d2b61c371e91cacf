"""One local Ray for the Ray tests (loopback only, 2 CPUs), and the tiny model saved to disk.

The tests skip, with the reason, only when Ray cannot be imported (the `ray` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import tiny_world as tw
from ray_world import Saved, save

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")


@pytest.fixture(scope="session")
def local_ray() -> Iterator[Any]:
    """Ray started once for every Ray test, on loopback, shut down at the end."""
    from featureguard.integrations.ray._ray import ensure_ray

    started = not ray.is_initialized()
    yield ensure_ray("the tests", num_cpus=2)
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def saved(world: tw.World, tmp_path_factory: pytest.TempPathFactory) -> Saved:
    return save(world, tmp_path_factory.mktemp("ray"))

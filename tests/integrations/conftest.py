"""`world`: one tiny Llama world per test module (the guard's own tests cover the architectures)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tiny_world as tw
import torch


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tw.World]:
    """Fails the module if a test leaves a guard on the model."""
    torch.set_num_threads(1)
    w = tw.build_world(tmp_path_factory.mktemp("world"), "llama")
    for row in range(len(tw.PROMPTS)):
        w.single(row)  # cached while the model is unwrapped
    yield w
    assert "generate" not in vars(w.model) and not tw.hooked_modules(w.model)

"""The vLLM tests' world, built once per session (`vllm_world.build`): the tiny Llama saved to
disk, vLLM's own unguarded outputs for its prompts, and an SAE aimed at one token vLLM generates.

Each test module skips, with the reason, when vLLM cannot be imported (the `vllm` extra;
`make test-vllm` builds its own venv): a skip here, in a conftest, would be an error when the
folder is named on the command line. Engines run one at a time, with 1 GiB of KV cache.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import vllm_world as vw


@pytest.fixture(scope="session")
def engine_env() -> Iterator[None]:
    """vLLM settings for a 2-core test machine; engines run in the test process, so that tests
    can look into the worker (the OpenAI-server test starts its own processes)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        yield


@pytest.fixture(scope="session")
def vworld(engine_env: None, tmp_path_factory: pytest.TempPathFactory) -> vw.VWorld:
    return vw.build(tmp_path_factory.mktemp("vllm"))

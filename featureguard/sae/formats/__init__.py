"""One module per on-disk SAE format, each with `NAME`, `detect(path)` and `load(path, opts)`.

`FORMATS` is the single registry: detection, error messages and tests all read it.
"""

from __future__ import annotations

from types import ModuleType

from featureguard.sae.formats import (
    gemma_scope,
    gemma_scope2,
    goodfire,
    llama_scope,
    openai,
    saelens,
    sparsify,
)
from featureguard.sae.formats.common import LoadOptions

FORMATS: dict[str, ModuleType] = {
    m.NAME: m for m in (saelens, gemma_scope, gemma_scope2, sparsify, llama_scope, openai, goodfire)
}

__all__ = ["FORMATS", "LoadOptions"]

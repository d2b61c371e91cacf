"""The k strongest features of each token over a whole dictionary (the `topk` audit trace).

One wide [d, d_sae] product runs about 1.5x slower on a CPU than the same work in contiguous
[d, 8192] column blocks (d=2048, d_sae=65,536, 8 tokens: 123 ms against 79 ms), and taking the
top k per block never materialises the [tokens, d_sae] activations; the top k of the blocks'
top k is the top k of the whole.
"""

from __future__ import annotations

import torch

from featureguard.sae.model import SAE

BLOCK = 8192


class TopFeatures:
    """`top(x)` → (values, indices) [..., k]: the k largest activations of every token and their
    global feature indices, exactly as `torch.topk(sae.encode(x), k)` would give them."""

    def __init__(self, sae: SAE, k: int) -> None:
        self.k = min(k, sae.d_sae)
        if sae.cfg.architecture == "topk":  # the competition needs every pre-activation at once
            self._whole: SAE | None = sae
            self._blocks: list[tuple[int, SAE, int]] = []
            return
        self._whole = None
        # select() copies its columns: each block's W_enc is contiguous.
        self._blocks = [
            (start, sae.select(range(start, min(start + BLOCK, sae.d_sae))), width)
            for start in range(0, sae.d_sae, BLOCK)
            if (width := min(BLOCK, sae.d_sae - start))
        ]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._whole is not None:
            top = torch.topk(self._whole.encode(x), self.k, dim=-1)
            return top.values, top.indices
        values, indices = [], []
        for start, block, width in self._blocks:
            top = torch.topk(block.encode_subset(x), min(self.k, width), dim=-1)
            values.append(top.values)
            indices.append(top.indices + start)
        value, index = torch.cat(values, -1), torch.cat(indices, -1)
        top = torch.topk(value, self.k, dim=-1)
        return top.values, torch.gather(index, -1, top.indices)

"""`TopFeatures`: the blocked top-k equals torch.topk over the whole encode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featureguard.sae import top
from featureguard.sae.model import SAE, SAEConfig


def _sae(arch: str, d_in: int, d_sae: int, seed: int, shift: float = 0.0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g),
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if arch == "jumprelu":
        tensors["threshold"] = torch.rand(d_sae, generator=g) - shift  # shift: some negative
    k = min(4, d_sae) if arch == "topk" else None
    cfg = SAEConfig(format="test", architecture=arch, d_in=d_in, d_sae=d_sae, k=k)
    return SAE(cfg, **tensors)


@settings(max_examples=40, deadline=None)
@given(
    arch=st.sampled_from(["relu", "jumprelu", "topk"]),
    d_sae=st.integers(1, 70),
    k=st.integers(1, 80),
    seed=st.integers(0, 1000),
    shift=st.sampled_from([0.0, 0.5]),
)
def test_blocked_top_k_equals_the_whole(arch: str, d_sae: int, k: int, seed: int, shift: float
                                        ) -> None:  # fmt: skip
    sae = _sae(arch, 6, d_sae, seed, shift)
    x = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(seed + 1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(top, "BLOCK", 16)  # several blocks, and a short last one
        values, indices = top.TopFeatures(sae, k)(x)
    want = torch.topk(sae.encode(x), min(k, d_sae), dim=-1)
    torch.testing.assert_close(values, want.values)
    # ties (zeros) may come in another order: the activations at the indices must match
    torch.testing.assert_close(torch.gather(sae.encode(x), -1, indices), want.values)

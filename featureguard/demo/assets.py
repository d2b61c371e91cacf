"""Where the shipped demo artifacts live, and how to load them (never from the network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featureguard.errors import FeatureguardError

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "models" / "demo-coder"
"""The demo language model and its tokenizer (save_pretrained, safetensors)."""
SAE_DIR = REPO / "saes" / "demo-coder-res1"
"""The demo SAE, in SAELens format."""
POLICY_DIR = REPO / "policies" / "demo"
"""The demo policies: unsafe code (detect and suppress), PII, manipulation."""
HOOK = "blocks.1.hook_resid_post"
"""Where the demo SAE reads: the residual stream after layer 1 of 4."""
SUPPRESS_SAE_DIR = REPO / "saes" / "demo-coder-res2"
"""The SAE of the suppress policy, in SAELens format: edits one layer deeper steer better."""
SUPPRESS_HOOK = "blocks.2.hook_resid_post"
"""Where the suppress policy's SAE reads and edits: the residual stream after layer 2 of 4."""


def load_model(folder: str | Path = MODEL_DIR) -> tuple[Any, Any]:
    """The demo model (eval mode) and tokenizer from a local folder."""
    from featureguard.model_files import load_model

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FeatureguardError(f"{folder}: no demo model here; rebuild it with `make demo-assets`")
    model, tokenizer = load_model(str(folder), download=False)
    tokenizer.padding_side = "left"  # a decoder-only model: batches pad on the left
    return model, tokenizer

"""Goodfire (Llama 3.x Instruct): a torch.save'd state dict, `*.pth` or `*.pt`, ReLU SAE.

Keys: encoder_linear.weight [d_sae, d_in], encoder_linear.bias [d_sae],
decoder_linear.weight [d_in, d_sae], decoder_linear.bias [d_in] (nn.Linear; both matrices are
transposed here). f = ReLU(x @ W_enc + b_enc), x̂ = f @ W_dec + b_dec: no b_dec subtraction,
no normalisation. The file names no hook or model (SAELens pairs the l19/l50 releases with the
output of model.layers[19]/[50]); the caller names the hook. Read only with
`allow_pickle=True`; detection parses the pickle's opcodes and runs nothing.
"""

from __future__ import annotations

from pathlib import Path

from featureguard.sae.formats.common import (
    LoadOptions,
    check_features,
    expect_shape,
    read_features,
    read_whole,
)
from featureguard.sae.formats.openai import pickled_strings, vector_size
from featureguard.sae.model import SAE, SAEConfig
from featureguard.sae.tensors import open_torch

NAME = "goodfire"
KEYS = frozenset({"encoder_linear.weight", "encoder_linear.bias",
                  "decoder_linear.weight", "decoder_linear.bias"})  # fmt: skip


def detect(path: Path) -> bool:
    return pickled_strings(path) >= KEYS


def load(path: Path, opts: LoadOptions) -> SAE:
    tf = open_torch(path, opts.allow_pickle)
    d, S = vector_size(tf, "decoder_linear.bias"), vector_size(tf, "encoder_linear.bias")
    check_features(opts, S)
    encoder, decoder = "encoder_linear.weight", "decoder_linear.weight"
    expect_shape(tf, encoder, (S, d), "nn.Linear stores the encoder as [d_sae, d_in]")
    expect_shape(tf, decoder, (d, S), "nn.Linear stores the decoder as [d_in, d_sae]")
    cfg = SAEConfig(
        format=NAME, architecture="relu", d_in=d, d_sae=S, source=opts.source or str(path)
    )
    return SAE(
        cfg,
        features=opts.features,
        W_enc=read_features(tf, encoder, opts, dim=0, transpose=True),
        b_enc=read_features(tf, "encoder_linear.bias", opts, dim=0),
        W_dec=read_features(tf, decoder, opts, dim=1, transpose=True),
        b_dec=read_whole(tf, "decoder_linear.bias", opts),
    )

"""OpenAI sparse_autoencoder (GPT-2 small): a torch.save'd state dict, `{layer}.pt`.

Keys: pre_bias [d_in] (= b_dec), latent_bias [d_sae] (= b_enc), encoder.weight [d_sae, d_in]
and decoder.weight [d_in, d_sae] (nn.Linear, both transposed here), plus the string
`activation` and `activation_state_dict`. As in OpenAI's `Autoencoder.from_state_dict`, a
"TopK" SAE (the v5 releases; k from activation_state_dict, post-activation ReLU) normalises
each token with LayerNorm (unbiased std, eps added to the std) and a "ReLU" SAE (v1/v4) does
not; pre_bias is always subtracted before encoding. The file names no hook or model.

The file is a pickle, so it is read only with `allow_pickle=True` (and then weights-only).
Detection needs no opt-in: `pickled_strings` lists the state dict's keys by parsing the
pickle's opcodes, which runs nothing from the file (Goodfire's detection uses it too).
"""

from __future__ import annotations

import pickletools
import zipfile
import zlib
from pathlib import Path

from featureguard.errors import SAEFormatError
from featureguard.sae.formats.common import (
    LoadOptions,
    check_features,
    expect_shape,
    read_features,
    read_whole,
)
from featureguard.sae.model import SAE, Normalization, SAEConfig
from featureguard.sae.tensors import TensorFile, open_torch

NAME = "openai"
KEYS = frozenset({"pre_bias", "latent_bias", "encoder.weight", "decoder.weight"})
_MAX_PICKLE = 16 * 2**20  # a state dict's object graph is kilobytes; its tensors live elsewhere


def pickled_strings(path: Path) -> frozenset[str]:
    """The string constants (dict keys among them) in a torch zip file's pickle, unpickled never.

    torch.save writes a zip whose `<name>/data.pkl` holds the object graph; `pickletools`
    only decodes its opcodes. Empty for anything else, legacy non-zip torch files included.
    """
    if not path.is_file():
        return frozenset()
    try:
        with zipfile.ZipFile(path) as zf:
            pickles = [i for i in zf.infolist() if i.filename.count("/") == 1
                       and i.filename.endswith("/data.pkl")]  # fmt: skip
            if len(pickles) != 1 or pickles[0].file_size > _MAX_PICKLE:
                return frozenset()
            data = zf.read(pickles[0])
        return frozenset(arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str))
    # zlib.error: a member marked compressed; RuntimeError: one marked encrypted
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError,
            RuntimeError):  # fmt: skip
        return frozenset()


def detect(path: Path) -> bool:
    return pickled_strings(path) >= KEYS


def vector_size(tf: TensorFile, name: str) -> int:
    """Length of the 1-D tensor `name` (a bias, which fixes d_in or d_sae)."""
    shape = tf.shape(name)
    if len(shape) != 1:
        raise SAEFormatError(f"{tf.path}: {name} has shape {list(shape)}, expected a vector")
    return shape[0]


def _activation(tf: TensorFile) -> tuple[str, int | None, Normalization]:
    """(architecture, k, normalisation) from the state dict's non-tensor entries."""
    activation = tf.extras.get("activation")
    if activation == "ReLU":
        return "relu", None, Normalization()
    if activation != "TopK":
        raise SAEFormatError(
            f"{tf.path}: activation {activation!r} is not supported (TopK or ReLU)"
        )
    state = tf.extras.get("activation_state_dict")
    k = state.get("k") if isinstance(state, dict) else None
    if isinstance(k, bool) or not isinstance(k, int):
        raise SAEFormatError(f"{tf.path}: activation_state_dict.k must be an integer, got {k!r}")
    if state.get("postact_fn", "ReLU") != "ReLU":
        raise SAEFormatError(
            f"{tf.path}: TopK postact_fn {state['postact_fn']!r} is not supported (ReLU)"
        )
    return "topk", k, Normalization(kind="layer_norm")


def load(path: Path, opts: LoadOptions) -> SAE:
    tf = open_torch(path, opts.allow_pickle)
    arch, k, norm = _activation(tf)
    d, S = vector_size(tf, "pre_bias"), vector_size(tf, "latent_bias")
    cfg = SAEConfig(
        format=NAME,
        architecture=arch,
        d_in=d,
        d_sae=S,
        k=k,
        subtract_b_dec=True,
        normalization=norm,
        source=opts.source or str(path),
    )
    check_features(opts, S)
    expect_shape(tf, "encoder.weight", (S, d), "nn.Linear stores the encoder as [d_sae, d_in]")
    expect_shape(tf, "decoder.weight", (d, S), "nn.Linear stores the decoder as [d_in, d_sae]")
    return SAE(
        cfg,
        features=opts.features,
        W_enc=read_features(tf, "encoder.weight", opts, dim=0, transpose=True),
        b_enc=read_features(tf, "latent_bias", opts, dim=0),
        W_dec=read_features(tf, "decoder.weight", opts, dim=1, transpose=True),
        b_dec=read_whole(tf, "pre_bias", opts),
    )

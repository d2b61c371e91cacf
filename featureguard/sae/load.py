"""`load_sae`: resolve a reference, detect its format, read it (whole or some features)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from featureguard.errors import SAEFormatError, SAELoadError
from featureguard.sae import source
from featureguard.sae.formats import FORMATS, LoadOptions
from featureguard.sae.model import SAE

SAESource = str | os.PathLike
Device = str | torch.device


def split_hookpoint(ref: str) -> tuple[str, str | None]:
    """`path/to/run::layers.6` -> ("path/to/run", "layers.6")."""
    path, sep, hookpoint = ref.partition("::")
    return path, (hookpoint or None) if sep else None


def detect_format(path: Path) -> str:
    """The name of the one format whose files `path` holds."""
    if not path.exists():
        raise SAELoadError(f"{path}: no such file or folder")
    found = [name for name, fmt in FORMATS.items() if fmt.detect(path)]
    if len(found) == 1:
        return found[0]
    if found:
        raise SAEFormatError(f"{path}: matches several formats {found}; pass format=")
    listing = sorted(p.name for p in path.iterdir())[:12] if path.is_dir() else [path.name]
    raise SAEFormatError(
        f"{path}: not an SAE of a known format (found {listing}). Known formats: "
        + "; ".join(f"{name}: {fmt.__doc__.splitlines()[0]}" for name, fmt in FORMATS.items())
    )


def load_sae(
    path_or_ref: SAESource,
    features: Sequence[int] | None = None,
    device: Device = "cpu",
    dtype: torch.dtype | None = None,
    *,
    hookpoint: str | None = None,
    allow_pickle: bool = False,
    format: str | None = None,
) -> SAE:
    """Load a pretrained SAE from a local path or `hf://org/repo/sub/path`.

    `features` reads only those encoder columns and decoder rows (by offset, without reading
    the rest of the file). `dtype` casts as each tensor is read. `hookpoint` (or `::name` after
    the path) picks one SAE from a folder of several. Pickle-based `.pt`/`.pth` files load only
    with `allow_pickle=True`, and then with `torch.load(weights_only=True)`.
    """
    ref, hp = split_hookpoint(os.fspath(path_or_ref))
    path = source.fetch(ref) if source.is_hub_ref(ref) else Path(ref).expanduser()
    name = format or detect_format(path)
    if name not in FORMATS:
        raise SAELoadError(f"format {name!r} is not one of {sorted(FORMATS)}")
    if (hookpoint or hp) and not getattr(FORMATS[name], "HOLDS_SEVERAL", False):
        raise SAELoadError(
            f"{ref}: a {name} SAE holds one dictionary; a hookpoint ({hookpoint or hp!r}) "
            "only picks one SAE from a folder of several (sparsify runs)"
        )
    if features is not None:
        features = tuple(int(i) for i in features)
        if len(set(features)) != len(features):
            raise SAELoadError(f"{ref}: features must be distinct, got {list(features)}")
    opts = LoadOptions(
        features=features,
        dtype=dtype,
        allow_pickle=allow_pickle,
        hookpoint=hookpoint or hp,
        source=os.fspath(path_or_ref),
    )
    return FORMATS[name].load(path, opts).to(device)

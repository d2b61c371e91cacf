"""Loading the model a command names: a local folder, or a Hub id the user typed.

The command line's one way to load a `transformers` causal LM and its tokenizer, so that every
command fails the same clear way (a FeatureguardError naming the model and what to pass) instead
of a traceback from deep inside transformers, and none reaches the network unasked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featureguard.errors import FeatureguardError


def load_model(spec: str, *, download: bool = True) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from the folder `spec`, or from the Hub id `spec`.

    A folder is read locally only. A Hub id is read from the local cache, and fetched only when
    `download` (the user named it); a command that fills in a model the user did not name
    passes download=False.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(spec).is_dir()
    try:
        return _load(AutoModelForCausalLM, AutoTokenizer, spec, local_only=True)
    except (OSError, ValueError) as exc:
        if local or not download:
            hint = "a model folder" if local else "not in the local cache; pass --model DIR"
            raise FeatureguardError(f"cannot load the model {spec!r} ({hint}): {exc}") from exc
    try:
        return _load(AutoModelForCausalLM, AutoTokenizer, spec, local_only=False)
    except (OSError, ValueError) as exc:
        raise FeatureguardError(f"cannot load the model {spec!r} from the Hub: {exc}") from exc


def _load(model_cls: Any, tokenizer_cls: Any, spec: str, *, local_only: bool) -> tuple[Any, Any]:
    tokenizer = tokenizer_cls.from_pretrained(spec, local_files_only=local_only)
    model = model_cls.from_pretrained(spec, local_files_only=local_only).eval()
    return model, tokenizer

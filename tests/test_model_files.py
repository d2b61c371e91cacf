"""featureguard.model_files: the command line's model loading, with clear errors, never online
unasked."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny_world as tw
import torch

from featureguard.cli import main
from featureguard.errors import FeatureguardError
from featureguard.model_files import load_model


def test_a_saved_folder_loads_the_same_model(tmp_path: Path) -> None:
    """A save_pretrained folder gives back the same weights (eval mode) and tokenizer."""
    tok = tw.char_tokenizer()
    model = tw.tiny_model("llama", len(tok))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    assert not loaded.training and loaded_tok("ab")["input_ids"] == tok("ab")["input_ids"]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                 strict=True):  # fmt: skip
        assert torch.equal(a, b), name


def test_a_folder_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    """An empty folder names itself and what it should hold."""
    with pytest.raises(FeatureguardError, match=r"cannot load the model .* \(a model folder\)"):
        load_model(str(tmp_path))


def test_a_hub_id_not_asked_for_is_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    """download=False reads the local cache only: an id not in it is an error saying to pass
    --model, raised without a network call (any attempt would fail loudly here)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was used")

    monkeypatch.setattr("socket.socket.connect", no_network)
    with pytest.raises(FeatureguardError, match="not in the local cache; pass --model DIR"):
        load_model("featureguard-tests/no-such-model", download=False)


def test_cli_run_with_a_missing_model_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`featureguard run --model <empty folder>` exits with the message, not a traceback."""
    code = main(["run", "--model", str(tmp_path), "--policies", "p.yaml", "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code != 0 and "cannot load the model" in err and "Traceback" not in err

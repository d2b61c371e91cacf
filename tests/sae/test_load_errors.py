"""Bad input to load_sae: each case raises one FeatureguardError subclass whose message names the
file, never a raw safetensors/json/numpy/torch traceback."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featureguard.errors import FeatureguardError, SAEFormatError, SAELoadError
from featureguard.sae import load_sae
from featureguard.sae.formats import FORMATS
from featureguard.sae.tensors import open_torch


def _header_end(weights: Path) -> int:
    """Offset of the first data byte: 8 length bytes plus the JSON header."""
    return 8 + int.from_bytes(weights.read_bytes()[:8], "little")


# ---- missing or unrecognised ---------------------------------------------------------------------
def test_missing_path(tmp_path: Path) -> None:
    """A path that does not exist raises SAELoadError naming it."""
    missing = tmp_path / "nowhere" / "sae"
    with pytest.raises(SAELoadError, match="no such file") as err:
        load_sae(missing)
    assert str(missing) in str(err.value)


def test_unknown_format_lists_the_known_ones(tmp_path: Path) -> None:
    """A folder of no known format raises SAEFormatError naming it and every known format."""
    (tmp_path / "notes.txt").write_text("not an SAE")
    with pytest.raises(SAEFormatError, match="not an SAE of a known format") as err:
        load_sae(tmp_path)
    assert str(tmp_path) in str(err.value)
    assert all(name in str(err.value) for name in FORMATS)


def test_cfg_without_weights_is_not_saelens(tmp_path: Path, write_saelens) -> None:
    """A SAELens folder missing sae_weights.safetensors is not taken for one, and says so."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    folder.weights.unlink()
    with pytest.raises(SAEFormatError, match=r"cfg\.json"):
        load_sae(folder.path)


def test_unknown_format_name(tmp_path: Path, write_saelens) -> None:
    """format= naming no registered format raises SAELoadError listing the registered ones."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    with pytest.raises(SAELoadError, match=r"'safetensors-ish' is not one of .*'saelens'"):
        load_sae(folder.path, format="safetensors-ish")


# ---- truncated and corrupt safetensors ----------------------------------------------------------
@pytest.mark.parametrize(
    "cut", ["empty", "in-length", "after-length", "in-header", "header-end", "in-data", "last-byte"]
)
def test_truncated_safetensors(tmp_path: Path, write_saelens, cut: str) -> None:
    """sae_weights.safetensors cut anywhere raises SAEFormatError naming that file."""
    folder = write_saelens(tmp_path / "sae", "v6-jumprelu")
    data = folder.weights.read_bytes()
    end = _header_end(folder.weights)
    at = {
        "empty": 0, "in-length": 5, "after-length": 8, "in-header": end // 2, "header-end": end,
        "in-data": (end + len(data)) // 2, "last-byte": len(data) - 1,
    }[cut]  # fmt: skip
    folder.weights.write_bytes(data[:at])
    with pytest.raises(SAEFormatError) as err:
        load_sae(folder.path)
    assert str(folder.weights) in str(err.value)


def test_random_header(tmp_path: Path, write_saelens) -> None:
    """A header replaced by random bytes raises SAEFormatError naming the file."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    data = bytearray(folder.weights.read_bytes())
    end = _header_end(folder.weights)
    data[8:end] = random.Random(0).randbytes(end - 8)
    folder.weights.write_bytes(bytes(data))
    with pytest.raises(SAEFormatError, match="corrupt") as err:
        load_sae(folder.path)
    assert str(folder.weights) in str(err.value)


@pytest.mark.parametrize(
    "entry",
    [{"dtype": "F32", "shape": [-12, -40], "data_offsets": [0, 1920]},
     {"dtype": "F32", "shape": [12, 40], "data_offsets": [-8, 1912]},
     {"dtype": "F32", "shape": [1e999, 1], "data_offsets": [0, 4]},
     {"dtype": "Q7", "shape": [12, 40], "data_offsets": [0, 1920]},
     "W_enc"],
    ids=["negative-shape", "negative-offset", "infinite-shape", "unknown-dtype", "not-an-object"],
)  # fmt: skip
def test_corrupt_header_entry(tmp_path: Path, write_saelens, entry: object) -> None:
    """A header entry with impossible values raises SAEFormatError naming the file."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    data = folder.weights.read_bytes()
    end = _header_end(folder.weights)
    header = json.loads(data[8:end])
    header["W_enc"] = entry
    raw = json.dumps(header).encode().replace(b"Infinity", b"1e999")
    folder.weights.write_bytes(len(raw).to_bytes(8, "little") + raw + data[end:])
    with pytest.raises(SAEFormatError) as err:
        load_sae(folder.path)
    assert str(folder.weights) in str(err.value)


@pytest.mark.parametrize("metadata", ["text", 7, ["a"]])
def test_corrupt_header_metadata(tmp_path: Path, write_saelens, metadata: object) -> None:
    """A __metadata__ that is not an object raises SAEFormatError naming the file."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    data = folder.weights.read_bytes()
    end = _header_end(folder.weights)
    header = json.loads(data[8:end]) | {"__metadata__": metadata}
    raw = json.dumps(header).encode()
    folder.weights.write_bytes(len(raw).to_bytes(8, "little") + raw + data[end:])
    with pytest.raises(SAEFormatError, match="__metadata__") as err:
        load_sae(folder.path)
    assert str(folder.weights) in str(err.value)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, sae_fx) -> tuple[Path, bytes, int]:
    """A jumprelu SAELens folder, its weight bytes and where its data starts."""
    folder = sae_fx.write_saelens(tmp_path_factory.mktemp("pristine") / "sae", "v6-jumprelu")
    return folder.path, folder.weights.read_bytes(), _header_end(folder.weights)


def _load_corrupted(pristine, scratch: Path, edits: list[tuple[int, int]], in_header: bool):
    """Load a copy of `pristine` with bytes replaced; positions are taken modulo the region."""
    src, data, end = pristine
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(src, scratch)
    buf = bytearray(data)
    lo, hi = (0, end) if in_header else (end, len(data))
    for pos, value in edits:
        buf[lo + pos % (hi - lo)] = value
    (scratch / "sae_weights.safetensors").write_bytes(bytes(buf))
    try:
        load_sae(scratch, features=[3, 0, 21]).encode(torch.ones(12))
        load_sae(scratch).encode(torch.ones(12))
    except FeatureguardError as exc:  # anything else fails the test with its traceback
        assert str(scratch) in str(exc)


_edits = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=8)


@settings(max_examples=80, deadline=None)
@given(edits=_edits)
def test_header_corruption_never_escapes(pristine, tmp_path_factory, edits) -> None:
    """Bytes changed in the length or JSON header load or raise a FeatureguardError, only."""
    _load_corrupted(pristine, tmp_path_factory.getbasetemp() / "header-fuzz", edits, True)


@settings(max_examples=40, deadline=None)
@given(edits=_edits)
def test_body_corruption_never_escapes(pristine, tmp_path_factory, edits) -> None:
    """Bytes changed in the tensor data load or raise a FeatureguardError, only."""
    _load_corrupted(pristine, tmp_path_factory.getbasetemp() / "body-fuzz", edits, False)


# ---- inconsistent tensors ------------------------------------------------------------------------
def test_transposed_encoder(tmp_path: Path, write_saelens) -> None:
    """W_enc saved as [d_sae, d_in] raises SAEFormatError saying transposed and the shape."""

    def transpose(t: dict) -> None:
        t["W_enc"] = t["W_enc"].T.contiguous()

    folder = write_saelens(tmp_path / "sae", "v6-standard", tensors_edit=transpose)
    with pytest.raises(SAEFormatError, match=r"W_enc has shape \[40, 12\], expected \[12, 40\]"):
        load_sae(folder.path)
    with pytest.raises(SAEFormatError, match="transposed") as err:
        load_sae(folder.path, features=[1, 2])
    assert str(folder.weights) in str(err.value)


def test_transposed_decoder(tmp_path: Path, write_saelens) -> None:
    """W_dec saved as [d_in, d_sae] raises SAEFormatError saying transposed."""

    def transpose(t: dict) -> None:
        t["W_dec"] = t["W_dec"].T.contiguous()

    folder = write_saelens(tmp_path / "sae", "v6-standard", tensors_edit=transpose)
    with pytest.raises(SAEFormatError, match=r"W_dec .*expected \[40, 12\].*transposed"):
        load_sae(folder.path)


@pytest.mark.parametrize(
    ("variant", "name"),
    [("v6-gated", "b_mag"), ("v6-gated", "r_mag"), ("v6-gated", "b_gate"),
     ("v6-jumprelu", "threshold"), ("v6-jumprelu-log-threshold", "log_threshold"),
     ("v6-standard", "b_enc"), ("v6-standard", "b_dec")],
)  # fmt: skip
@pytest.mark.parametrize("features", [None, [0, 1]], ids=["full", "partial"])
def test_short_vector(tmp_path: Path, write_saelens, variant, name, features) -> None:
    """A bias or threshold of the wrong length is refused, for partial loads too."""

    def shorten(t: dict) -> None:
        t[name] = t[name][:-3].clone()

    folder = write_saelens(tmp_path / "sae", variant, tensors_edit=shorten)
    with pytest.raises(SAEFormatError, match=rf"{name} has shape") as err:
        load_sae(folder.path, features=features)
    assert str(folder.path) in str(err.value)


def test_missing_tensor(tmp_path: Path, write_saelens) -> None:
    """A file without b_enc raises SAEFormatError naming the file, the tensor and what is there."""
    folder = write_saelens(tmp_path / "sae", "v6-standard", tensors_edit=lambda t: t.pop("b_enc"))
    with pytest.raises(SAEFormatError, match=r"no tensor named 'b_enc'; it holds") as err:
        load_sae(folder.path)
    assert str(folder.weights) in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=str)
@pytest.mark.parametrize("name", ["W_enc", "W_dec", "b_dec", "threshold"])
def test_non_finite_weights(tmp_path: Path, write_saelens, bad: float, name: str) -> None:
    """A NaN or infinite weight raises SAEFormatError naming the SAE and the tensor."""

    def poison(t: dict) -> None:
        t[name].view(-1)[5] = bad

    folder = write_saelens(tmp_path / "sae", "v6-jumprelu", tensors_edit=poison)
    with pytest.raises(SAEFormatError, match=rf"{name} has 1 NaN or infinite") as err:
        load_sae(folder.path)
    assert str(folder.path) in str(err.value)


# ---- cfg.json ------------------------------------------------------------------------------------
def test_cfg_not_json(tmp_path: Path, write_saelens) -> None:
    """A cfg.json that is not JSON raises SAEFormatError naming it."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    folder.config.write_text('{"d_in": 12, "d_sae": ', encoding="utf-8")
    with pytest.raises(SAEFormatError, match="not valid JSON") as err:
        load_sae(folder.path)
    assert str(folder.config) in str(err.value)


def test_cfg_not_utf8(tmp_path: Path, write_saelens) -> None:
    """A binary cfg.json raises SAEFormatError naming it."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    folder.config.write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(SAEFormatError) as err:
        load_sae(folder.path)
    assert str(folder.config) in str(err.value)


def test_cfg_not_an_object(tmp_path: Path, write_saelens) -> None:
    """A cfg.json holding a list raises SAEFormatError naming it."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    folder.config.write_text("[12, 40]", encoding="utf-8")
    with pytest.raises(SAEFormatError, match="expected a JSON object") as err:
        load_sae(folder.path)
    assert str(folder.config) in str(err.value)


@pytest.mark.parametrize("value", ["missing", None, "twelve", [12], 1e999])
def test_cfg_bad_d_in(tmp_path: Path, write_saelens, value: object) -> None:
    """A missing or non-integer d_in raises SAEFormatError naming cfg.json and d_in."""

    def edit(cfg: dict) -> None:
        if value == "missing":
            del cfg["d_in"]
        else:
            cfg["d_in"] = value

    folder = write_saelens(tmp_path / "sae", "v6-standard", cfg_edit=edit)
    with pytest.raises(SAEFormatError, match="needs integer d_in") as err:
        load_sae(folder.path)
    assert str(folder.config) in str(err.value)


def test_cfg_d_in_disagrees_with_tensors(tmp_path: Path, write_saelens) -> None:
    """A cfg d_in that does not match the tensors raises SAEFormatError with both shapes."""
    folder = write_saelens(tmp_path / "sae", "v6-standard", cfg_edit=lambda c: c.update(d_in=16))
    with pytest.raises(SAEFormatError, match=r"shape \[12, 40\], expected \[16, 40\]"):
        load_sae(folder.path)


@pytest.mark.parametrize("arch", ["transcoder", "matryoshka_batchtopk", "skip_transcoder"])
def test_unknown_architecture(tmp_path: Path, write_saelens, arch: str) -> None:
    """An architecture we do not run raises SAEFormatError listing the supported ones."""
    folder = write_saelens(
        tmp_path / "sae", "v6-standard", cfg_edit=lambda c: c.update(architecture=arch)
    )
    with pytest.raises(SAEFormatError, match=rf"architecture '{arch}' is not supported .*gated"):
        load_sae(folder.path)


@pytest.mark.parametrize("value", ["batch_norm", ["layer_norm"], {"kind": "none"}, 3])
def test_unknown_normalization(tmp_path: Path, write_saelens, value: object) -> None:
    """An unknown normalize_activations raises SAEFormatError listing the known ones."""
    edit = lambda c: c.update(normalize_activations=value)  # noqa: E731
    folder = write_saelens(tmp_path / "sae", "v6-standard", cfg_edit=edit)
    with pytest.raises(SAEFormatError, match=r"normalize_activations .* is not one of"):
        load_sae(folder.path)


@pytest.mark.parametrize("k", [None, 0, 41, 2.5, "five", True])
def test_topk_bad_k(tmp_path: Path, write_saelens, k: object) -> None:
    """A topk cfg with a missing, non-integer or out-of-range k raises SAEFormatError."""
    folder = write_saelens(tmp_path / "sae", "v6-topk", cfg_edit=lambda c: c.update(k=k))
    with pytest.raises(SAEFormatError, match="topk needs"):
        load_sae(folder.path)


# ---- pickles -------------------------------------------------------------------------------------
def test_pickle_without_opt_in(tmp_path: Path) -> None:
    """A torch .pt state dict without allow_pickle=True raises SAELoadError saying to pass it."""
    path = tmp_path / "sae.pt"
    torch.save({"encoder_linear.weight": torch.zeros(8, 4)}, path)
    with pytest.raises(SAELoadError, match=r"allow_pickle=True") as err:
        open_torch(path, allow_pickle=False)
    assert str(path) in str(err.value)


def test_load_sae_pickle_without_opt_in(tmp_path: Path) -> None:
    """load_sae of a pickle-based SAE file (Goodfire layout) refuses without allow_pickle=True."""
    path = tmp_path / "goodfire_l19.pt"
    torch.save(
        {"encoder_linear.weight": torch.zeros(8, 4), "encoder_linear.bias": torch.zeros(8),
         "decoder_linear.weight": torch.zeros(4, 8), "decoder_linear.bias": torch.zeros(4)},
        path,
    )  # fmt: skip
    with pytest.raises(SAELoadError, match=r"allow_pickle=True") as err:
        load_sae(path)
    assert str(path) in str(err.value)


def test_pickle_that_is_not_a_torch_file(tmp_path: Path) -> None:
    """With the opt-in, a file torch cannot read raises SAEFormatError naming it."""
    path = tmp_path / "broken.pt"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(SAEFormatError, match="cannot read as a weights-only torch file") as err:
        open_torch(path, allow_pickle=True)
    assert str(path) in str(err.value)

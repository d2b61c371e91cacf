"""Bad input to load_sae: each case raises one FeatureguardError subclass whose message names the
file, never a raw safetensors/json/numpy/torch traceback."""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import sae_format_fixtures
import torch
from fuzzing import fuzz
from hypothesis import given
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


@fuzz(200)
@given(edits=_edits)
def test_header_corruption_never_escapes(pristine, tmp_path_factory, edits) -> None:
    """Bytes changed in the length or JSON header load or raise a FeatureguardError, only."""
    _load_corrupted(pristine, tmp_path_factory.getbasetemp() / "header-fuzz", edits, True)


@fuzz(100)
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


# ---- found by fuzzing (tests/sae/test_fuzz.py) ---------------------------------------------------
def test_cfg_nested_past_the_recursion_limit(tmp_path: Path, write_saelens) -> None:
    """A cfg.json nested 100,000 levels deep raises SAEFormatError naming it (was a bare
    RecursionError)."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    folder.config.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(SAEFormatError, match="not valid JSON") as err:
        load_sae(folder.path)
    assert str(folder.config) in str(err.value)


def test_cfg_huge_integer(tmp_path: Path, write_saelens) -> None:
    """A d_in of 5000 digits (Python reads 4300) raises SAEFormatError naming cfg.json (was a
    bare ValueError)."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    folder.config.write_text('{"d_in": ' + "9" * 5000 + ', "d_sae": 40}', encoding="utf-8")
    with pytest.raises(SAEFormatError, match="not valid JSON") as err:
        load_sae(folder.path)
    assert str(folder.config) in str(err.value)


def test_safetensors_header_huge_integer(tmp_path: Path, write_saelens) -> None:
    """A header number of 5000 digits raises SAEFormatError naming the weights (was ValueError)."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    data = folder.weights.read_bytes()
    end = _header_end(folder.weights)
    raw = data[8:end].replace(b'"shape":[12,40]', b'"shape":[' + b"9" * 5000 + b",40]", 1)
    assert raw != data[8:end]
    folder.weights.write_bytes(len(raw).to_bytes(8, "little") + raw + data[end:])
    with pytest.raises(SAEFormatError, match="corrupt safetensors header") as err:
        load_sae(folder.path)
    assert str(folder.weights) in str(err.value)


def test_corrupt_safetensors_body(tmp_path: Path, write_saelens) -> None:
    """Weight bytes overwritten with 0xff (NaN in float32) raise SAEFormatError naming the SAE
    and the tensor."""
    folder = write_saelens(tmp_path / "sae", "v6-standard")
    data = bytearray(folder.weights.read_bytes())
    header = json.loads(data[8 : _header_end(folder.weights)])
    begin, _ = header["W_dec"]["data_offsets"]
    at = _header_end(folder.weights) + begin
    data[at : at + 64] = b"\xff" * 64
    folder.weights.write_bytes(bytes(data))
    with pytest.raises(SAEFormatError, match="W_dec has 16 NaN or infinite values") as err:
        load_sae(folder.path)
    assert str(folder.path) in str(err.value)


# ---- npz (Gemma Scope params.npz) ----------------------------------------------------------------
def _gemma(tmp_path: Path, **kwargs: object) -> tuple[Path, Path]:
    """A Gemma Scope SAE folder and its params.npz."""
    written = sae_format_fixtures.write_gemma_scope(tmp_path, **kwargs)
    return written.path, written.path / "params.npz"


def _members(npz: Path) -> dict[str, int]:
    """Offset of each member's data in the zip (after its local header, name and extra field)."""
    data = npz.read_bytes()
    with zipfile.ZipFile(npz) as zf:
        heads = {i.filename: i.header_offset for i in zf.infolist()}
    lengths = {n: struct.unpack("<HH", data[at + 26 : at + 30]) for n, at in heads.items()}
    return {n: at + 30 + sum(lengths[n]) for n, at in heads.items()}


def test_npz_corrupt_zip_directory(tmp_path: Path) -> None:
    """A params.npz whose zip central directory is overwritten raises SAEFormatError naming it."""
    folder, npz = _gemma(tmp_path)
    data = bytearray(npz.read_bytes())
    data[-60:] = b"\x00" * 60
    npz.write_bytes(bytes(data))
    with pytest.raises(SAEFormatError, match="corrupt or truncated npz") as err:
        load_sae(folder)
    assert str(npz) in str(err.value)


def test_npz_damaged_compressed_member(tmp_path: Path) -> None:
    """A damaged deflate stream (zlib.error inside zipfile) raises SAEFormatError naming the
    file (was zlib.error)."""
    folder, npz = _gemma(tmp_path, compressed=True)
    data = bytearray(npz.read_bytes())
    at = _members(npz)["W_enc.npy"]
    data[at] = 0x00  # a stored block whose lengths do not match
    npz.write_bytes(bytes(data))
    with pytest.raises(zlib.error), zipfile.ZipFile(npz) as zf:
        zf.read("W_enc.npy")
    with pytest.raises(SAEFormatError, match="corrupt or truncated npz") as err:
        load_sae(folder)
    assert str(npz) in str(err.value)


def test_npz_unparsable_npy_header(tmp_path: Path) -> None:
    """An .npy header numpy cannot parse (tokenize.TokenError inside numpy) raises SAEFormatError
    naming the file (was TokenError)."""
    folder, npz = _gemma(tmp_path)
    data = bytearray(npz.read_bytes())
    at = _members(npz)["b_enc.npy"] + 10  # after the magic and the header length
    header = data[at : data.index(b"\n", at)]
    data[at : at + len(header)] = b"{'descr': '<f4', 'shape': (64,".ljust(len(header))
    npz.write_bytes(bytes(data))
    with pytest.raises(SAEFormatError, match="corrupt or truncated npz") as err:
        load_sae(folder)
    assert str(npz) in str(err.value)


@pytest.mark.parametrize("dtype", ["int32", "uint16", "bool", "complex64"])
def test_npz_weights_not_floating(tmp_path: Path, dtype: str) -> None:
    """W_enc stored as integers, booleans or complex numbers raises SAEFormatError naming the
    file and tensor, for whole and partial loads (was a torch error at read or encode time)."""
    folder, npz = _gemma(tmp_path, edit=lambda a: a.update(W_enc=a["W_enc"].astype(dtype)))
    for features in (None, [0, 5]):
        with pytest.raises(SAEFormatError, match=f"W_enc has dtype {dtype}, expected a float"):
            load_sae(folder, features=features)
    with pytest.raises(SAEFormatError) as err:
        load_sae(folder)
    assert str(npz) in str(err.value)


def test_npz_mixed_float_dtypes(tmp_path: Path) -> None:
    """W_dec in float16 beside float32 tensors raises SAEFormatError naming the SAE, with the
    dtype= remedy (decode failed in torch before); dtype= loads it."""
    folder, _ = _gemma(tmp_path, edit=lambda a: a.update(W_dec=a["W_dec"].astype("float16")))
    with pytest.raises(SAEFormatError, match=r"different dtypes \(.*W_dec float16.*dtype=") as err:
        load_sae(folder)
    assert str(folder) in str(err.value)
    sae = load_sae(folder, dtype=torch.float32)
    x = torch.ones(sae.d_in)
    assert sae.decode(sae.encode(x), x).dtype == torch.float32


@pytest.mark.parametrize(
    ("name", "edit", "match"),
    [("b_dec", lambda a: a["b_dec"][:1].reshape(()), r"b_dec has shape \[\], expected a vector"),
     ("W_enc", lambda a: a["W_enc"].reshape(-1), r"W_enc has shape \[1024\], expected \[16, 64\]"),
     ("W_dec", lambda a: a["W_dec"][None], r"W_dec has shape \[1, 64, 16\], expected \[64, 16\]")],
    ids=["scalar-bias", "flat-matrix", "extra-dim"],
)  # fmt: skip
def test_npz_wrong_shape(tmp_path: Path, name: str, edit, match: str) -> None:
    """An array of the wrong rank raises SAEFormatError naming the file and the shapes."""
    folder, npz = _gemma(tmp_path, edit=lambda a: a.update({name: edit(a)}))
    with pytest.raises(SAEFormatError, match=match) as err:
        load_sae(folder)
    assert str(npz) in str(err.value)


def test_npz_member_shorter_than_its_shape(tmp_path: Path) -> None:
    """A stored member whose header claims more data than it holds raises SAEFormatError naming
    it (a read would have taken the next member's bytes for the threshold)."""
    folder, npz = _gemma(tmp_path)
    arrays = dict(np.load(npz))
    short = io.BytesIO()
    np.lib.format.write_array(short, arrays["threshold"][:10])
    raw = short.getvalue().replace(b"(10,)", b"(64,)", 1)
    with zipfile.ZipFile(npz, "w") as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, value)
            zf.writestr(f"{key}.npy", raw if key == "threshold" else buf.getvalue())
    with pytest.raises(SAEFormatError, match="threshold is shorter than its shape") as err:
        load_sae(folder)
    assert str(npz) in str(err.value)


# ---- torch zip files (OpenAI, Goodfire) ----------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"), [(10, 8), (8, 1)], ids=["marked-compressed", "marked-encrypted"]
)
@pytest.mark.parametrize("writer", ["write_goodfire", "write_openai"])
def test_torch_zip_damaged_directory_entry(tmp_path: Path, writer: str, field: int, value: int):
    """A torch zip whose data.pkl entry claims deflate (zlib.error) or encryption (RuntimeError)
    raises SAEFormatError naming the file, detected or named (both escaped detection before)."""
    written = getattr(sae_format_fixtures, writer)(tmp_path)
    data = bytearray(written.path.read_bytes())
    entries = [m.start() for m in re.finditer(b"PK\x01\x02", data)]  # central directory
    names = {at: data[at + 46 : at + 46 + int.from_bytes(data[at + 28 : at + 30], "little")]
             for at in entries}  # fmt: skip
    (pos,) = [at for at, name in names.items() if name.endswith(b"/data.pkl")]
    data[pos + field : pos + field + 2] = value.to_bytes(2, "little")
    written.path.write_bytes(bytes(data))
    for format in (None, writer.removeprefix("write_")):
        with pytest.raises(SAEFormatError) as err:
            load_sae(written.path, allow_pickle=True, format=format)
        assert str(written.path) in str(err.value)


# ---- Llama Scope hyperparams.json ----------------------------------------------------------------
@pytest.mark.parametrize(
    "config",
    [{"jump_relu_threshold": 1e300},
     {"dataset_average_activation_norm": {"in": 1e-300, "out": 8.0}}],
    ids=["huge-threshold", "tiny-norm"],
)  # fmt: skip
def test_llama_scope_threshold_beyond_the_dtype(tmp_path: Path, config: dict) -> None:
    """A scaled JumpReLU threshold too large for float32 raises SAEFormatError naming
    hyperparams.json (was torch's RuntimeError from full_like)."""
    written = sae_format_fixtures.write_llama_scope(tmp_path, config=config)
    with pytest.raises(SAEFormatError, match="jump_relu_threshold times") as err:
        load_sae(written.path)
    assert str(written.path / "hyperparams.json") in str(err.value)


@pytest.mark.parametrize(
    ("config", "match"),
    [({"jump_relu_threshold": 10**400}, "jump_relu_threshold must be a number"),
     ({"dataset_average_activation_norm": {"in": 10**400, "out": 8}}, "norm.in must be a posit"),
     ({"d_model": 10**400}, "d_model must be a positive integer")],
    ids=["threshold", "norm", "d_model"],
)  # fmt: skip
def test_llama_scope_integer_too_large_for_a_float(tmp_path: Path, config: dict, match: str):
    """A 400-digit integer where a float is computed raises SAEFormatError naming
    hyperparams.json and the key (was OverflowError from math)."""
    written = sae_format_fixtures.write_llama_scope(tmp_path, config=config)
    with pytest.raises(SAEFormatError, match=match) as err:
        load_sae(written.path)
    assert str(written.path / "hyperparams.json") in str(err.value)

"""Property: a corrupted SAE file of any on-disk kind loads, or raises a FeatureguardError whose
message names it; never another exception, a hang or a crash.

The kinds are those of tests/support/sae_format_fixtures.py: SAELens (cfg.json and
safetensors), Gemma Scope (params.npz, stored and compressed), Gemma Scope 2 (config.json and
safetensors), sparsify (run config.json, cfg.json, safetensors), Llama Scope (hyperparams.json
and safetensors), OpenAI and Goodfire (torch zip files, read weights-only). Each is written once
per module; a case damages one file (random bytes in its header or body, cut, grown, replaced,
or a structured edit: JSON values of the wrong type, NaN, huge or deeply nested; safetensors
entries that lie; npz arrays of the wrong dtype, shape or layout), loads the SAE whole, in part
and with its format named, runs what a loaded SAE must run, and puts the file back.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sae_format_fixtures as fx
import torch
from fuzzing import fuzz
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from featureguard.errors import FeatureguardError
from featureguard.sae import load_sae

WRITERS: dict[str, Callable[[Path], fx.Written]] = {
    "saelens": fx.write_saelens,
    "gemma_scope": fx.write_gemma_scope,
    "gemma_scope_compressed": partial(fx.write_gemma_scope, compressed=True),
    "gemma_scope_2": fx.write_gemma_scope2,
    "sparsify": fx.write_sparsify,
    "llama_scope": fx.write_llama_scope,
    "openai": fx.write_openai,
    "goodfire": fx.write_goodfire,
}
FORMAT = {"gemma_scope_compressed": "gemma_scope"}


@dataclass(frozen=True, repr=False)
class Pristine:
    """One SAE as written, and the bytes of each of its files (relative to `root`)."""

    kind: str
    root: Path
    written: fx.Written
    files: dict[str, bytes]

    def __repr__(self) -> str:  # Hypothesis prints the drawn one with a failing example
        return f"<{self.kind} SAE at {self.root}>"

    @property
    def names(self) -> list[str]:
        return sorted(self.files)


class _Kinds(dict):
    def __repr__(self) -> str:  # Hypothesis prints the fixture with each failing example
        return f"<{len(self)} pristine SAEs>"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pristine]:
    """Every kind written once; cases damage a file and put it back."""
    out = _Kinds()
    for kind, write in WRITERS.items():
        root = tmp_path_factory.mktemp(kind)
        written = write(root)
        files = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        out[kind] = Pristine(kind, root, written, files)
    return out


def _exercise(p: Pristine) -> None:
    """Load `p` whole, in part and with its format named; run each SAE that loads. Only a
    FeatureguardError naming a file of `p` may come out."""
    format = FORMAT.get(p.kind, p.kind)
    some = [3, 0, p.written.d_sae - 1]
    for extra in ({}, {"features": some}, {"format": format}):
        try:
            sae = load_sae(p.written.path, **p.written.load_kwargs, **extra)
            x = torch.linspace(-1.0, 1.0, sae.d_in)
            f = sae.encode_subset(x)
            sae.decode(f, x)
            sae.decode_delta(x, None, f)
            if sae.features is None:
                sae.encode(x)
        except FeatureguardError as exc:  # anything else fails the test with its traceback
            assert str(p.root) in str(exc), exc


def _load_damaged(p: Pristine, name: str, damaged: bytes) -> None:
    path = p.root / name
    path.write_bytes(damaged)
    try:
        _exercise(p)
    finally:
        path.write_bytes(p.files[name])


# ---- bytes ---------------------------------------------------------------------------------------
def _hot_spots(name: str, raw: bytes) -> list[tuple[int, int]]:
    """Where a file's structure lives: a safetensors header, a zip's local headers (with the
    npy or pickle header after each) and central directory, all of a JSON file."""
    if name.endswith(".safetensors") and len(raw) >= 8:
        return [(0, min(len(raw), 8 + int.from_bytes(raw[:8], "little")))]
    if raw.startswith(b"PK"):
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            spots = [(i.header_offset, i.header_offset + 30 + len(i.filename) + 160)
                     for i in zf.infolist()]  # fmt: skip
            spots.append((getattr(zf, "start_dir", len(raw) - 100), len(raw)))
        return [(lo, min(hi, len(raw))) for lo, hi in spots]
    return [(0, len(raw))]


BYTE = st.one_of(st.integers(0, 255), st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
# The fields of a zip's local header, central directory entry and end record, as (offset, size):
# flags, compression method, CRC, sizes, name and extra lengths, offsets, entry counts.
ZIP_FIELDS = {
    b"PK\x03\x04": [(6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
    b"PK\x01\x02": [(8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (42, 4)],
    b"PK\x05\x06": [(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
}
ZIP_VALUES = [0, 1, 8, 12, 14, 99, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]


def _zip_field(data: st.DataObject, buf: bytearray) -> None:
    """One field of one zip header in `buf` set to a telling value (or any)."""
    fields = [(at + offset, size) for signature, spots in ZIP_FIELDS.items()
              for at in _find_all(buf, signature) for offset, size in spots]  # fmt: skip
    if fields:
        at, size = data.draw(st.sampled_from(fields))
        value = data.draw(st.one_of(st.sampled_from(ZIP_VALUES), st.integers(0, 2**32 - 1)))
        buf[at : at + size] = (value % 256**size).to_bytes(size, "little")


def _find_all(buf: bytes | bytearray, needle: bytes) -> list[int]:
    found, at = [], buf.find(needle)
    while at >= 0:
        found.append(at)
        at = buf.find(needle, at + 1)
    return found


def _damage(data: st.DataObject, name: str, raw: bytes) -> bytes:
    """`raw` with bytes changed (anywhere or in its structure), cut, grown or replaced."""
    how = data.draw(
        st.sampled_from(["edit", "edit-structure", "zip-field", "cut", "insert", "remove", "new"])
    )
    buf = bytearray(raw)
    if how == "zip-field":
        for _ in range(data.draw(st.integers(1, 3))):
            _zip_field(data, buf)
        return bytes(buf)
    if how == "new":
        head = data.draw(st.sampled_from([b"", b"PK\x03\x04", raw[:8], raw[:64]]))
        return head + data.draw(st.binary(max_size=600))
    at = data.draw(st.integers(0, max(len(buf) - 1, 0)))
    if how == "cut":
        return bytes(buf[:at])
    if how == "insert":
        return bytes(buf[:at] + data.draw(st.binary(min_size=1, max_size=64)) + buf[at:])
    if how == "remove":
        return bytes(buf[:at] + buf[at + data.draw(st.integers(1, 64)) :])
    spots = _hot_spots(name, raw) if how == "edit-structure" else [(0, len(buf))]
    for _ in range(data.draw(st.integers(1, 8))):
        lo, hi = data.draw(st.sampled_from(spots))
        if hi > lo:
            buf[data.draw(st.integers(lo, hi - 1))] = data.draw(BYTE)
    return bytes(buf)


# torch warns, rightly, about the random "pickle protocol" byte of a damaged opt-in .pt file
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@fuzz(1000)
@given(data=st.data())
def test_damaged_bytes_of_every_file(pristine: dict[str, Pristine], data: st.DataObject) -> None:
    """Random bytes in the header or body of any file of any kind (safetensors, npz, torch zip,
    JSON), the file cut, grown or replaced: the SAE loads or a FeatureguardError names it."""
    p = pristine[data.draw(st.sampled_from(sorted(pristine)))]
    name = data.draw(st.sampled_from(p.names))
    _load_damaged(p, name, _damage(data, name, p.files[name]))


# ---- JSON configs --------------------------------------------------------------------------------
WORDS = ["topk", "jumprelu", "jump_relu", "relu", "gated", "standard", "layer_norm", "none",
         "constant_norm_rescale", "dataset-wise", "blocks.3.hook_resid_post", "TopK"]  # fmt: skip
JSON_SCALARS = st.one_of(
    st.sampled_from(["null", "true", "false", "NaN", "Infinity", "-Infinity", "1e999", "-0",
                     "0", "1", "-1", "2.5", "1e-400", "8", "16", "64", '""', "[]", "{}"]),
    st.sampled_from(WORDS).map(json.dumps),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(1, 9000).map(lambda n: "9" * n),  # past Python's 4300 digits for int(str)
    st.floats().map(lambda x: json.dumps(x)),
    st.text(max_size=30).map(json.dumps),
    st.integers(0, 5000).map(lambda n: "[" * n + "]" * n),  # past Python's recursion limit
    st.integers(0, 300_000).map(lambda n: json.dumps("x" * n)),
)  # fmt: skip
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.text(max_size=8), inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=6,
)


def _json_text(data: st.DataObject, value: Any, keys: list[str]) -> str:
    """`value` as JSON text, with some of its keys (nested too) replaced, removed or added."""
    if not isinstance(value, dict) or not data.draw(st.booleans()):
        return json.dumps(value) if data.draw(st.booleans()) else data.draw(JSON_VALUES)
    items = {k: json.dumps(v) for k, v in value.items()}
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["replace", "remove", "add", "recurse"]))
        key = data.draw(st.sampled_from(sorted(value))) if value else None
        if action == "add" or key is None:
            new = data.draw(st.one_of(st.sampled_from(keys), st.text(max_size=10)))
            items[new] = data.draw(JSON_VALUES)
        elif action == "replace":
            items[key] = data.draw(JSON_VALUES)
        elif action == "remove":
            items.pop(key, None)
        else:
            items[key] = _json_text(data, value[key], keys)
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in items.items()) + "}"


@fuzz(1000)
@given(data=st.data())
def test_config_values(pristine: dict[str, Pristine], data: st.DataObject) -> None:
    """Config JSON with values of the wrong type, NaN, infinite, huge, nested past the
    recursion limit or megabytes long, keys removed or unknown, the whole document replaced:
    the SAE loads or a FeatureguardError names the file."""
    configs = [(p, n) for p in pristine.values() for n in p.names if n.endswith(".json")]
    p, name = data.draw(st.sampled_from(configs))
    keys = sorted({k for q, m in configs for k in json.loads(q.files[m])})
    text = _json_text(data, json.loads(p.files[name]), keys)
    _load_damaged(p, name, text.encode("utf-8", "surrogatepass"))


# ---- safetensors headers -------------------------------------------------------------------------
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3",
          "F8_E5M2", "U16", "U32", "U64", "C64", "", "f32"]  # fmt: skip
ANY = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6),
    st.lists(st.integers(-3, 2**65), max_size=3),
)  # fmt: skip


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)


def _lie(data: st.DataObject, entry: Any) -> Any:
    """A safetensors header entry with its dtype, shape or offsets changed, or replaced."""
    if not isinstance(entry, dict) or not data.draw(st.integers(0, 5)):
        return data.draw(ANY)
    entry = dict(entry)
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop", "extra"]))
    if field == "dtype":
        entry["dtype"] = data.draw(st.one_of(st.sampled_from(DTYPES), ANY))
    elif field == "shape":
        shape = list(entry["shape"]) if isinstance(entry.get("shape"), list) else []
        how = data.draw(st.sampled_from(["swap", "grow", "number", "any"]))
        if how == "swap":
            shape.reverse()
        elif how == "grow":
            shape.append(data.draw(st.integers(0, 4)))
        elif how == "number" and shape:
            shape[data.draw(st.integers(0, len(shape) - 1))] = data.draw(ANY)
        else:
            shape = data.draw(ANY)
        entry["shape"] = shape
    elif field == "data_offsets":
        begin, end = entry["data_offsets"] if _pair(entry.get("data_offsets")) else (0, 8)
        shift = data.draw(st.one_of(st.integers(-8, 8), st.integers(-(2**65), 2**65)))
        offsets = [[begin + shift, end], [begin, end + shift], [end, begin],
                   [begin + shift, end + shift], [begin]]  # fmt: skip
        entry["data_offsets"] = data.draw(st.sampled_from(offsets))
    elif field == "drop" and entry:
        entry.pop(data.draw(st.sampled_from(sorted(entry))))
    else:
        entry[data.draw(st.text(max_size=6))] = data.draw(ANY)
    return entry


@fuzz(800)
@given(data=st.data())
def test_safetensors_entries(pristine: dict[str, Pristine], data: st.DataObject) -> None:
    """Safetensors headers whose entries lie (dtype, shape, offsets), are dropped, renamed,
    copied or not objects, with any __metadata__: the SAE loads or a FeatureguardError names
    the file."""
    files = [(p, n) for p in pristine.values() for n in p.names if n.endswith(".safetensors")]
    p, name = data.draw(st.sampled_from(files))
    raw = p.files[name]
    end = 8 + int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:end])
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(sorted(header)))
        how = data.draw(st.sampled_from(["lie", "lie", "drop", "rename", "copy", "metadata"]))
        if how == "lie":
            header[key] = _lie(data, header[key])
        elif how == "drop":
            header.pop(key)
        elif how in ("rename", "copy"):
            value = header[key] if how == "copy" else header.pop(key)
            header[data.draw(st.sampled_from([key.upper(), key.lower(), key + "_", "W_enc"]))] = (
                value
            )
        else:
            header["__metadata__"] = data.draw(
                st.one_of(ANY, st.dictionaries(st.text(max_size=5), ANY, max_size=3))
            )
        if not header:
            break
    text = json.dumps(header).encode() + b" " * data.draw(st.integers(0, 7))
    _load_damaged(p, name, len(text).to_bytes(8, "little") + text + raw[end:])


# ---- npz arrays ----------------------------------------------------------------------------------
NP_DTYPES = ["float16", "float32", "float64", ">f4", ">f8", "int8", "int32", "int64", "uint8",
             "uint16", "uint64", "bool", "complex64", "complex128", "longdouble", "M8[s]",
             "m8[s]", "U3", "S3", "V4", "object", "f4,f4"]  # fmt: skip
NPZ_NAMES = ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"]


def _bad_array(data: st.DataObject, arr: np.ndarray) -> np.ndarray | bytes:
    """`arr` with another dtype, shape or memory order, NaN inside, or a header that lies."""
    how = data.draw(st.sampled_from(["dtype", "shape", "fortran", "nan", "lie"]))
    if how == "dtype":
        dtype = np.dtype(data.draw(st.sampled_from(NP_DTYPES)))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex to real, NaN to integer
            numbers = dtype.kind in "fciub" and arr.dtype.kind in "fciub"
            return arr.astype(dtype) if numbers else np.zeros(arr.shape, dtype)
    if how == "shape":
        how = data.draw(st.sampled_from(["flat", "lead", "reverse", "empty", "scalar"]))
        if how in ("flat", "lead", "reverse"):
            return arr.reshape({"flat": (-1,), "lead": (1, -1), "reverse": arr.shape[::-1]}[how])
        flat = arr.reshape(-1)
        if how == "empty" or not flat.size:
            return flat[:0]
        return flat[:1].reshape(())
    if how == "fortran":
        return np.asfortranarray(arr.T if arr.ndim == 2 else arr)
    if how == "nan" and arr.dtype.kind == "f" and arr.size:
        out = arr.copy()
        out.reshape(-1)[data.draw(st.integers(0, out.size - 1))] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf])
        )
        return out
    shape = data.draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=2).map(tuple))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return header.getvalue() + arr.tobytes()[: data.draw(st.integers(0, arr.nbytes))]


@fuzz(800, health=(HealthCheck.too_slow,))
@given(data=st.data(), compressed=st.booleans())
def test_npz_arrays(pristine: dict[str, Pristine], data: st.DataObject, compressed: bool) -> None:
    """A params.npz whose arrays have the wrong dtype (object, strings, complex, datetimes),
    shape or layout, hold NaN, claim terabytes, are missing or joined by members that are no
    arrays: the SAE loads or a FeatureguardError names the file."""
    p = pristine["gemma_scope"]
    (name,) = p.names
    members: dict[str, np.ndarray | bytes] = dict(p.written.arrays)
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(NPZ_NAMES))
        how = data.draw(st.sampled_from(["bad", "bad", "drop", "extra", "rename"]))
        if how == "bad" and isinstance(members.get(key), np.ndarray):
            members[key] = _bad_array(data, members[key])
        elif how == "drop":
            members.pop(key, None)
        elif how == "extra":
            members[data.draw(st.sampled_from(["notes.txt", "dir/", "x.npy", key + ".npy"]))] = (
                data.draw(st.binary(max_size=40))
            )
        elif key in members:
            members[data.draw(st.sampled_from([key.lower(), key.upper(), key + "2"]))] = (
                members.pop(key)
            )
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", method) as zf, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Duplicate name")  # two members of one name: a case
        for key, member in members.items():
            if isinstance(member, np.ndarray):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, member, allow_pickle=True)
                member, key = buf.getvalue(), key + ".npy"
            zf.writestr(key, member)
    _load_damaged(p, name, out.getvalue())

"""Tensor readers: whole and partial (row/column by offset) reads of safetensors, npz and torch
files equal plain numpy/torch slicing of what was saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from featureguard.errors import SAEFormatError
from featureguard.sae.tensors import open_npz, open_safetensors, open_torch

SAFETENSORS_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NPZ_DTYPES = ["<f4", ">f4", "<f2", ">f2", ">f8", "<i4"]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the property tests overwrite file by file."""
    return tmp_path_factory.mktemp("tensors")


def _matrix(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 3


def _write_safetensors(path: Path, W: torch.Tensor) -> Path:
    """W between two other tensors, so that its offset is not zero."""
    save_file({"a_before": torch.arange(5.0), "W": W, "z_after": torch.ones(3, 2)}, str(path))
    return path


def _write_npz(path: Path, W: np.ndarray, compressed: bool) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, before=np.arange(7.0), W=W, after=W.T)
    return path


# hypothesis strategies: a small matrix shape, then indices along rows or columns
_shapes = st.tuples(st.integers(1, 9), st.integers(1, 40))


def _index_lists(n: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, n - 1), min_size=1, max_size=2 * n)  # repeats allowed


# ---- safetensors --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", SAFETENSORS_DTYPES, ids=str)
def test_safetensors_whole_read(tmp_path: Path, dtype: torch.dtype) -> None:
    """A whole read returns the saved tensor, dtype and shape included."""
    W = _matrix((4, 7)).to(dtype)
    tf = open_safetensors(_write_safetensors(tmp_path / "w.safetensors", W))
    assert (tf.shape("W"), tf.dtype("W")) == ((4, 7), dtype)
    assert torch.equal(tf.read("W"), W)
    assert torch.equal(tf.read("a_before"), torch.arange(5.0))


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(SAFETENSORS_DTYPES), shape=_shapes, data=st.data())
def test_safetensors_rows_and_columns(scratch: Path, dtype, shape, data) -> None:
    """Reading rows (dim 0) or columns (dim 1) equals index_select on the saved tensor."""
    W = _matrix(shape, seed=shape[0] * 100 + shape[1]).to(dtype)
    tf = open_safetensors(_write_safetensors(scratch / "prop.safetensors", W))
    rows = data.draw(_index_lists(shape[0]), label="rows")
    cols = data.draw(_index_lists(shape[1]), label="cols")
    assert torch.equal(tf.read("W", rows, dim=0), W[rows])
    assert torch.equal(tf.read("W", cols, dim=1), W[:, cols])


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 50), data=st.data())
def test_safetensors_vector_elements(scratch: Path, n: int, data) -> None:
    """Indexing a 1-d tensor (biases, thresholds) returns those elements."""
    v = torch.randn(n)
    save_file({"v": v}, str(scratch / "vec.safetensors"))
    idx = data.draw(_index_lists(n))
    assert torch.equal(open_safetensors(scratch / "vec.safetensors").read("v", idx), v[idx])


def test_safetensors_far_apart_columns(tmp_path: Path) -> None:
    """Columns further apart than one read run (4 KiB) are read separately, in the asked order."""
    W = _matrix((3, 3000))
    tf = open_safetensors(_write_safetensors(tmp_path / "wide.safetensors", W))
    cols = [2999, 0, 1500, 1, 2998, 1024, 2047]
    assert torch.equal(tf.read("W", cols, dim=1), W[:, cols])


def test_partial_read_needs_only_the_asked_bytes(tmp_path: Path) -> None:
    """Bytes of rows and columns not asked for never reach the result: poisoning them is safe."""
    W = _matrix((6, 8))
    path = _write_safetensors(tmp_path / "w.safetensors", W)
    offset = open_safetensors(path)._get("W").offset
    pristine = path.read_bytes()

    def poisoned(rows: list[int] | None = None, cols: list[int] | None = None) -> Path:
        bad = W.clone()
        if rows is not None:
            bad[rows] = float("nan")
        if cols is not None:
            bad[:, cols] = float("nan")
        data = bytearray(pristine)
        data[offset : offset + W.numel() * 4] = bad.numpy().tobytes()
        path.write_bytes(bytes(data))
        return path

    tf = open_safetensors(poisoned(rows=[0, 2, 3, 5]))
    assert torch.equal(tf.read("W", [4, 1], dim=0), W[[4, 1]])
    tf = open_safetensors(poisoned(cols=[0, 1, 3, 4, 5, 7]))
    assert torch.equal(tf.read("W", [6, 2], dim=1), W[:, [6, 2]])


def test_read_casts_to_the_asked_dtype(tmp_path: Path) -> None:
    """read(..., dtype=) casts floating tensors, whole or partial."""
    W = _matrix((3, 5))
    tf = open_safetensors(_write_safetensors(tmp_path / "w.safetensors", W))
    assert torch.equal(tf.read("W", [2, 0], dim=1, dtype=torch.bfloat16), W[:, [2, 0]].bfloat16())
    assert tf.read("W", dtype=torch.float16).dtype == torch.float16


def test_empty_tensor(tmp_path: Path) -> None:
    """A tensor with a zero-sized dimension reads as an empty tensor of its shape."""
    save_file({"e": torch.zeros(0, 4), "x": torch.ones(2)}, str(tmp_path / "e.safetensors"))
    assert open_safetensors(tmp_path / "e.safetensors").read("e").shape == (0, 4)


def test_safetensors_metadata_is_kept(tmp_path: Path) -> None:
    """The header's __metadata__ is exposed as extras and not taken for a tensor."""
    save_file({"x": torch.ones(2)}, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    tf = open_safetensors(tmp_path / "m.safetensors")
    assert (tf.names, tf.extras) == ({"x"}, {"format": "pt"})


def test_unknown_tensor_name(tmp_path: Path) -> None:
    """Asking for a tensor the file lacks raises SAEFormatError listing what it holds."""
    tf = open_safetensors(_write_safetensors(tmp_path / "w.safetensors", _matrix((2, 2))))
    with pytest.raises(SAEFormatError, match=r"no tensor named 'b_enc'.*'W'"):
        tf.read("b_enc")


@pytest.mark.parametrize(("index", "dim"), [([3], 0), ([0, 5], 1), ([-1], 0), ([-2], 1)])
def test_index_out_of_range(tmp_path: Path, index: list[int], dim: int) -> None:
    """An index outside the tensor raises SAEFormatError instead of reading other bytes."""
    tf = open_safetensors(_write_safetensors(tmp_path / "w.safetensors", _matrix((3, 5))))
    with pytest.raises(SAEFormatError, match="out of range"):
        tf.read("W", index, dim=dim)


def test_index_of_a_scalar_is_refused(tmp_path: Path) -> None:
    """Indexing a 0-d tensor raises SAEFormatError instead of reading past it."""
    save_file({"s": torch.tensor(0.3), "z": torch.ones(4)}, str(tmp_path / "s.safetensors"))
    with pytest.raises(SAEFormatError, match="cannot index"):
        open_safetensors(tmp_path / "s.safetensors").read("s", [0, 1])


# ---- npz -----------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    np_dtype=st.sampled_from(NPZ_DTYPES), compressed=st.booleans(), shape=_shapes, data=st.data()
)
def test_npz_rows_and_columns(scratch: Path, np_dtype, compressed, shape, data) -> None:
    """npz members, stored or compressed, any byte order: reads equal numpy slicing."""
    W = (_matrix(shape).numpy() * 10).astype(np_dtype)
    tf = open_npz(_write_npz(scratch / "prop.npz", W, compressed))
    rows = data.draw(_index_lists(shape[0]), label="rows")
    cols = data.draw(_index_lists(shape[1]), label="cols")
    native = W.astype(W.dtype.newbyteorder("="))
    assert np.array_equal(tf.read("W").numpy(), native)
    assert np.array_equal(tf.read("W", rows, dim=0).numpy(), native[rows])
    assert np.array_equal(tf.read("W", cols, dim=1).numpy(), native[:, cols])
    assert tf.shape("after") == (shape[1], shape[0])


def test_npz_stored_member_is_read_in_place(tmp_path: Path) -> None:
    """A stored (uncompressed) member is read by offset: poisoned other rows are harmless."""
    W = _matrix((5, 4)).numpy().astype(">f4")
    path = _write_npz(tmp_path / "w.npz", W, compressed=False)
    offset = open_npz(path)._get("W").offset
    data = bytearray(path.read_bytes())
    poisoned = W.copy()
    poisoned[[0, 2, 4]] = np.nan
    data[offset : offset + W.nbytes] = poisoned.tobytes()
    path.write_bytes(bytes(data))
    assert np.array_equal(open_npz(path).read("W", [3, 1]).numpy(), W[[3, 1]].astype("<f4"))


def test_npz_fortran_order_is_read_whole(tmp_path: Path) -> None:
    """A stored Fortran-ordered member (a saved transpose) is read whole, values intact."""
    W = np.asfortranarray(_matrix((3, 4)).numpy())
    tf = open_npz(_write_npz(tmp_path / "f.npz", W, compressed=False))
    assert np.array_equal(tf.read("W", [3, 0], dim=1).numpy(), W[:, [3, 0]])


def test_npz_object_array_is_refused(tmp_path: Path) -> None:
    """A member holding Python objects (a pickle) raises SAEFormatError, never unpickles."""
    np.savez(tmp_path / "o.npz", W=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SAEFormatError, match=r"o\.npz"):
        open_npz(tmp_path / "o.npz")


@pytest.mark.parametrize("cut", [10, 200, -30])
def test_npz_truncated(tmp_path: Path, cut: int) -> None:
    """A truncated npz raises SAEFormatError naming the file."""
    path = _write_npz(tmp_path / "t.npz", _matrix((8, 8)).numpy(), compressed=False)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(SAEFormatError, match=r"t\.npz"):
        open_npz(path).read("W")


# ---- torch files ---------------------------------------------------------------------------------
def test_torch_file_with_opt_in(tmp_path: Path) -> None:
    """A torch.save state dict reads with allow_pickle=True: tensors, slices and extras."""
    W = _matrix((4, 6))
    torch.save({"W": W, "activation": "TopK", "k": {"k": 3}}, tmp_path / "sd.pt")
    tf = open_torch(tmp_path / "sd.pt", allow_pickle=True)
    assert torch.equal(tf.read("W", [5, 0], dim=1), W[:, [5, 0]])
    assert torch.equal(tf.read("W", [3], dim=0), W[[3]])
    assert tf.extras == {"activation": "TopK", "k": {"k": 3}}

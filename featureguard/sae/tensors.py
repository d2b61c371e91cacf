"""Reading named tensors from SAE files, whole or only some rows/columns.

Partial reads go through `os.pread` at computed offsets, so naming 20 features of a 19 GB
dictionary reads (and keeps resident) kilobytes: neither the file nor a memory map of it is
ever touched beyond the bytes asked for. Safetensors headers and npz members are parsed here;
every third-party error is turned into an `SAEFormatError` that names the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featureguard.errors import SAEFormatError, SAELoadError

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


@dataclass(frozen=True, slots=True)
class _Raw:
    """A C-ordered array stored uncompressed at `offset` in `path`."""

    path: Path
    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    np_dtype: np.dtype | None  # set for npz (may be big-endian); None: little-endian torch bytes

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def _decode(self, buf: bytearray, shape: tuple[int, ...]) -> torch.Tensor:
        if self.np_dtype is not None:
            arr = np.frombuffer(buf, dtype=self.np_dtype).astype(self.np_dtype.newbyteorder("="))
            return torch.from_numpy(arr).reshape(shape)
        if not buf:
            return torch.empty(shape, dtype=self.dtype)
        return torch.frombuffer(buf, dtype=self.dtype).reshape(shape)

    def read(self, index: Sequence[int] | None = None, dim: int = 0) -> torch.Tensor:
        if index is not None:
            if not ((dim == 0 and len(self.shape) >= 1) or (dim == 1 and len(self.shape) == 2)):
                raise SAEFormatError(
                    f"{self.path}: cannot index dim {dim} of shape {list(self.shape)}"
                )
            index = [int(i) for i in index]
            _check_index(self.path, index, self.shape[dim])
        with open(self.path, "rb") as fh:
            fd = fh.fileno()
            if index is None:
                n = self.itemsize * math.prod(self.shape)
                return self._decode(_pread(fd, n, self.offset, self.path), self.shape)
            return self._rows(fd, index) if dim == 0 else self._cols(fd, index)

    def _rows(self, fd: int, rows: Sequence[int]) -> torch.Tensor:
        row_bytes = self.itemsize * math.prod(self.shape[1:])
        buf = bytearray()
        for r in rows:
            buf += _pread(fd, row_bytes, self.offset + int(r) * row_bytes, self.path)
        return self._decode(buf, (len(rows), *self.shape[1:]))

    def _cols(self, fd: int, cols: Sequence[int]) -> torch.Tensor:
        # Columns close together share one read per row; far apart ones are read alone.
        isz, (n_rows, n_cols) = self.itemsize, self.shape
        order = sorted(range(len(cols)), key=lambda j: cols[j])
        runs: list[list[int]] = []
        for j in order:
            if runs and (cols[j] - cols[runs[-1][-1]]) * isz <= 4096:
                runs[-1].append(j)
            else:
                runs.append([j])
        out = torch.empty((n_rows, len(cols)), dtype=self.dtype)
        for run in runs:
            first = cols[run[0]]
            wanted = torch.tensor([cols[j] - first for j in run])
            buf = bytearray((cols[run[-1]] - first + 1) * isz)  # one row's span, reused
            for r in range(n_rows):  # memory stays one span, however far apart the columns
                _pread_into(fd, buf, self.offset + (r * n_cols + first) * isz, self.path)
                out[r, run] = self._decode(buf, (len(buf) // isz,))[wanted]
        return out


def _check_index(path: Path, index: Sequence[int], size: int) -> None:
    """Every position must lie in [0, size): a partial read never strays into other bytes."""
    bad = [i for i in index if not 0 <= i < size]
    if bad:
        raise SAEFormatError(f"{path}: indices {bad[:8]} are out of range for a dim of {size}")


def _pread(fd: int, n: int, offset: int, path: Path) -> bytearray:
    buf = bytearray(n)
    _pread_into(fd, buf, offset, path)
    return buf


def _pread_into(fd: int, buf: bytearray, offset: int, path: Path) -> None:
    view, done, n = memoryview(buf), 0, len(buf)
    while done < n:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise SAEFormatError(f"{path}: file ends early (truncated at byte {offset + done})")
        done += got


class TensorFile:
    """The named arrays of one file: `.shape(name)`, `.read(name, index=None, dim=0)`."""

    def __init__(self, path: Path, arrays: dict[str, _Raw | torch.Tensor], extras: dict) -> None:
        self.path = path
        self._arrays = arrays
        self.extras = extras
        """Non-tensor entries (torch state dicts may carry strings and dicts)."""

    @property
    def names(self) -> set[str]:
        return set(self._arrays)

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._get(name).dtype

    def read(
        self, name: str, index: Sequence[int] | None = None, dim: int = 0,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Tensor `name`, or only positions `index` along `dim`, cast to `dtype` if given."""
        arr = self._get(name)
        if isinstance(arr, _Raw):
            t = arr.read(index, dim)
        elif index is None:
            t = arr
        else:
            if not 0 <= dim < arr.dim():
                raise SAEFormatError(
                    f"{self.path}: cannot index dim {dim} of shape {list(arr.shape)}"
                )
            index = [int(i) for i in index]
            _check_index(self.path, index, arr.shape[dim])
            t = arr.index_select(dim, torch.tensor(index, dtype=torch.long))
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    def _get(self, name: str) -> _Raw | torch.Tensor:
        if name not in self._arrays:
            raise SAEFormatError(
                f"{self.path}: no tensor named {name!r}; it holds {sorted(self._arrays)}"
            )
        return self._arrays[name]


def open_safetensors(path: Path) -> TensorFile:
    """Parse a safetensors header and check every entry lies inside the file."""
    size = _size(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise SAEFormatError(f"{path}: not a safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise SAEFormatError(f"{path}: corrupt or truncated safetensors header (length {n})")
        try:
            header = json.loads(fh.read(n))
        # ValueError: not UTF-8, not JSON, or an integer past Python's 4300 digits
        except (ValueError, RecursionError) as exc:
            raise SAEFormatError(f"{path}: corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise SAEFormatError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise SAEFormatError(f"{path}: corrupt safetensors header (__metadata__ not an object)")
    arrays: dict[str, _Raw | torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise SAEFormatError(f"{path}: corrupt safetensors entry {name!r}: {info!r}") from exc
        raw = _Raw(path, 8 + n + begin, shape, dtype, None)
        if min(shape, default=0) < 0 or begin < 0 or end - begin != raw.itemsize * math.prod(shape):
            raise SAEFormatError(
                f"{path}: tensor {name!r} has a size that does not match its shape"
            )
        if 8 + n + end > size:
            raise SAEFormatError(
                f"{path}: truncated: tensor {name!r} ends at byte {8 + n + end}, file has {size}"
            )
        arrays[name] = raw
    return TensorFile(path, arrays, dict(metadata))


def open_npz(path: Path) -> TensorFile:
    """The arrays of an npz; stored C-ordered members are read in place, others whole."""
    _size(path)
    arrays: dict[str, _Raw | torch.Tensor] = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                if info.compress_type == zipfile.ZIP_STORED:
                    fh.seek(info.header_offset + 26)
                    name_len, extra_len = struct.unpack("<HH", fh.read(4))
                    fh.seek(info.header_offset + 30 + name_len + extra_len)
                    version = np.lib.format.read_magic(fh)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dt = read_header(fh)
                    if dt.hasobject:
                        raise SAEFormatError(f"{path}: {name} is not a plain numeric array")
                    if not fortran:
                        data_start = info.header_offset + 30 + name_len + extra_len
                        nbytes = dt.itemsize * math.prod(shape)
                        if fh.tell() + nbytes > data_start + info.compress_size:
                            raise SAEFormatError(
                                f"{path}: {name} is shorter than its shape {list(shape)} of "
                                f"{dt} needs ({nbytes} bytes): corrupt or truncated"
                            )
                        tdtype = torch.from_numpy(np.empty(0, dtype=dt.newbyteorder("="))).dtype
                        arrays[name] = _Raw(path, fh.tell(), tuple(shape), tdtype, dt)
                        continue
                # compressed or Fortran-ordered: no way around reading this member whole
                with zf.open(info) as member:
                    arr = np.lib.format.read_array(member)
                    arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("=")))
                    arrays[name] = torch.from_numpy(arr)
    # Damaged bytes make zipfile, zlib and numpy's .npy header parser raise many kinds (zlib.error,
    # SyntaxError, tokenize.TokenError, OverflowError, RuntimeError for an encrypted flag...);
    # all mean the file is not readable.
    except Exception as exc:
        if isinstance(exc, SAEFormatError):
            raise
        raise SAEFormatError(f"{path}: corrupt or truncated npz file: {exc}") from exc
    return TensorFile(path, arrays, {})


def open_torch(path: Path, allow_pickle: bool) -> TensorFile:
    """A torch.save state dict, only with the caller's opt-in, read with weights_only=True."""
    if not allow_pickle:
        raise SAELoadError(
            f"{path}: this is a pickle-based torch file; loading it runs code from the file. "
            "featureguard reads it only with allow_pickle=True (and then with "
            "torch.load(weights_only=True)); prefer a safetensors copy."
        )
    _size(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds here; all mean "not readable"
        raise SAEFormatError(f"{path}: cannot read as a weights-only torch file: {exc}") from exc
    if not isinstance(obj, dict):
        raise SAEFormatError(f"{path}: expected a state dict, got {type(obj).__name__}")
    arrays = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    extras = {str(k): v for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    return TensorFile(path, arrays, extras)


def read_json(path: Path) -> dict:
    """A JSON object from a config file, with errors that name the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SAELoadError(f"{path}: no such file") from exc
    # ValueError: not UTF-8, not JSON, or an integer past Python's 4300 digits; RecursionError:
    # nesting deeper than Python's recursion limit
    except (OSError, ValueError, RecursionError) as exc:
        raise SAEFormatError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise SAELoadError(f"{path}: cannot read: {exc.strerror or exc}") from exc

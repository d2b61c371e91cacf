"""Traces: the per-token activations of guarded calls, kept for replay and reports.

A trace is a folder. Each guarded call adds one safetensors shard, ``shard-NNNNNNNN.safetensors``,
written to a temporary name and renamed into place (atomic), then one line in ``index.jsonl``
(request id, time, shard). A shard holds, for a call of ``b`` rows scored over ``S`` positions
of the left-padded batch (``T`` >= ``S`` positions generated)::

    ids                  int32 [b, T]   every token id, padding included
    valid                bool  [b, S]   tokens the guard scored (not padding, BOS or special)
    L{i}.acts            f32   [b, S, n_feat]   layer i: the activations of its policies' features
    L{i}.triggered       bool  [b, S, n_pol]    where each policy triggered in the call
    L{i}.seen            bool  [S]            positions layer i scored (False after a guard error)
    L{i}.top_values      f32   [b, S, k]      topk traces only: the k largest features
    L{i}.top_indices     int32 [b, S, k]      ... and their global indices

and, as safetensors metadata, one JSON document (:class:`TraceRequest` without the arrays): the
request id, prompt length, left padding per row, and per layer the SAE, hook, feature indices
and labels, and the policies as they were (weights, threshold, window, scope, action). Positions
``< prompt_len`` were scored in the prompt's forward pass. A trace never holds token text.

A crash can leave a renamed shard without its index line (ignored by readers) or an index line
cut mid-way (skipped, and the next writer starts a new line). numpy only: no torch here.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from featureguard.errors import AuditError

__all__ = ["TRACE_VERSION", "TraceLayer", "TracePolicy", "TraceReader", "TraceRequest",
           "TraceWriter", "read_trace", "trace_folders"]  # fmt: skip

TRACE_VERSION = 1
INDEX = "index.jsonl"
_META = "featureguard_trace"


@dataclass(frozen=True, slots=True, kw_only=True)
class TracePolicy:
    """A policy as it was when the call ran."""

    name: str
    """The policy's name."""
    action: str
    """log, block, suppress or steer."""
    severity: str
    """low, medium or high."""
    threshold: float
    """Triggers where Σ weight·activation > threshold."""
    window: int
    """In-scope tokens in a row above threshold before it triggers."""
    scope: str
    """prompt, response or both."""
    features: tuple[tuple[int, float], ...]
    """(global feature index, weight) pairs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceLayer:
    """One hooked SAE's activations for one call."""

    sae: str
    """The SAE's name in the policy file."""
    hook: str
    """The hook point it was attached to."""
    features: tuple[int, ...]
    """Global indices of the columns of ``acts``."""
    labels: dict[int, str]
    """Feature labels from the policies, by global index."""
    policies: tuple[TracePolicy, ...]
    """The policies on this SAE, in the order of the columns of ``triggered``."""
    acts: np.ndarray
    """[b, S, n_feat] float32 activations of ``features``."""
    triggered: np.ndarray
    """[b, S, n_pol] bool: where each policy triggered."""
    seen: np.ndarray
    """[S] bool: positions this layer scored."""
    top_values: np.ndarray | None = None
    """[b, S, k] float32, topk traces only."""
    top_indices: np.ndarray | None = None
    """[b, S, k] int32 global feature indices, topk traces only."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRequest:
    """One guarded call as a trace stores it."""

    request_id: str
    """The call's request id (as in the audit log)."""
    timestamp: str
    """When the shard was written (UTC, ISO 8601)."""
    mode: str
    """policy or topk."""
    k: int | None
    """Features per token of a topk trace; None for policy traces."""
    prompt_len: int
    """Positions before this were the prompt (left-padded)."""
    pads: tuple[int, ...]
    """Left padding of each row: token index = position − pads[row]."""
    ids: np.ndarray
    """[b, T] int32 token ids."""
    valid: np.ndarray
    """[b, S] bool: tokens that were scored."""
    layers: tuple[TraceLayer, ...]
    """One entry per hooked SAE."""
    shard: str
    """File name of the shard in the trace folder."""


class TraceWriter:
    """Appends one shard per guarded call to a trace folder; safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str], *, mode: str, k: int | None) -> None:
        self.path, self.mode, self.k = Path(path), mode, k if mode == "topk" else None
        self._lock = threading.Lock()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            numbers = [_shard_number(p.name) for p in self.path.glob("shard-*.safetensors")]
            index = self.path / INDEX
            self._newline = index.exists() and _ends_mid_line(index)
        except OSError as exc:
            raise AuditError(f"cannot open trace {self.path}: {exc.strerror or exc}") from exc
        self._next = max([n for n in numbers if n is not None], default=0) + 1

    def write(self, request_id: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
              ) -> str:  # fmt: skip
        """Store one call: ``arrays`` as listed in the module doc, ``meta`` the JSON part."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        doc = {"version": TRACE_VERSION, "request_id": request_id, "timestamp": stamp,
               "mode": self.mode, "k": self.k, **meta}  # fmt: skip
        data = save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                    metadata={_META: json.dumps(doc)})  # fmt: skip
        with self._lock:
            name = f"shard-{self._next:08d}.safetensors"
            self._next += 1
            line = json.dumps({"shard": name, "request_id": request_id, "timestamp": stamp})
            try:
                tmp = self.path / f".{name}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, self.path / name)
                with open(self.path / INDEX, "ab") as index:
                    index.write((("\n" if self._newline else "") + line + "\n").encode())
            except OSError as exc:
                raise AuditError(f"cannot write trace {self.path}: {exc.strerror or exc}") from exc
            self._newline = False
        return name


class TraceReader:
    """Reads a trace folder: its index, and shards on demand (one call in memory at a time)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        index = self.path / INDEX
        try:
            raw = index.read_bytes().split(b"\n")
        except OSError as exc:
            raise AuditError(f"cannot read trace {self.path}: {exc.strerror or exc} "
                             f"(a trace is a folder with {INDEX})") from exc  # fmt: skip
        self.entries: list[dict[str, Any]] = []
        for line in raw:
            try:
                entry = json.loads(line)
            except ValueError:  # an empty line, or one cut by a crash
                continue
            if isinstance(entry, dict) and isinstance(entry.get("shard"), str):
                self.entries.append(entry)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[TraceRequest]:
        for entry in self.entries:
            yield self.load(entry["shard"])

    def find(self, request_id: str) -> TraceRequest | None:
        """The call with ``request_id`` (the last one, if several share it), or None."""
        hits = [e["shard"] for e in self.entries if e.get("request_id") == request_id]
        return self.load(hits[-1]) if hits else None

    def load(self, shard: str) -> TraceRequest:
        """One shard, by file name."""
        file = self.path / shard
        try:
            with safe_open(str(file), framework="np") as f:
                meta = json.loads((f.metadata() or {})[_META])
                arrays = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            raise AuditError(f"cannot read trace shard {file}: {exc}") from exc
        if meta.get("version") != TRACE_VERSION:
            raise AuditError(f"{file}: trace version {meta.get('version')!r}, "
                             f"this featureguard reads {TRACE_VERSION}")  # fmt: skip
        return _request(meta, arrays, shard)


def read_trace(path: str | os.PathLike[str]) -> Iterator[TraceRequest]:
    """Yield every call of the trace folder at ``path``, in the order they were written; a
    folder of trace shards (one trace folder per writer, as ``featureguard scan --trace``
    writes) yields each shard's calls in turn, shards by name."""
    for folder in trace_folders(path):
        yield from TraceReader(folder)


def trace_folders(path: str | os.PathLike[str]) -> list[Path]:
    """``[path]`` for a trace folder; its sub-folders that are traces, by name, for a folder of
    trace shards; AuditError when it is neither."""
    path = Path(path)
    if (path / INDEX).exists() or not path.is_dir():
        return [path]  # TraceReader names what is missing
    shards = sorted(p for p in path.iterdir() if (p / INDEX).is_file())
    if not shards:
        raise AuditError(f"cannot read trace {path}: no {INDEX} in it or in its sub-folders")
    return shards


def _request(meta: dict[str, Any], arrays: dict[str, np.ndarray], shard: str) -> TraceRequest:
    layers = []
    for i, layer in enumerate(meta["layers"]):
        policies = tuple(
            TracePolicy(**{**p, "features": tuple((int(f), float(w)) for f, w in p["features"])})
            for p in layer["policies"]
        )
        layers.append(TraceLayer(
            sae=layer["sae"], hook=layer["hook"], features=tuple(layer["features"]),
            labels={int(k): v for k, v in layer["labels"].items()}, policies=policies,
            acts=arrays[f"L{i}.acts"], triggered=arrays[f"L{i}.triggered"],
            seen=arrays[f"L{i}.seen"], top_values=arrays.get(f"L{i}.top_values"),
            top_indices=arrays.get(f"L{i}.top_indices"),
        ))  # fmt: skip
    return TraceRequest(
        request_id=meta["request_id"], timestamp=meta["timestamp"], mode=meta["mode"],
        k=meta.get("k"), prompt_len=int(meta["prompt_len"]), pads=tuple(meta["pads"]),
        ids=arrays["ids"], valid=arrays["valid"], layers=tuple(layers), shard=shard,
    )  # fmt: skip


def _shard_number(name: str) -> int | None:
    digits = name.removeprefix("shard-").removesuffix(".safetensors")
    return int(digits) if digits.isdigit() else None


def _ends_mid_line(path: Path) -> bool:
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return False
        file.seek(size - 1)
        return file.read(1) != b"\n"

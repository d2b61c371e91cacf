"""Memory and time of `load_sae`: the whole dictionary versus a handful of its features.

The requirement under test: a policy naming 20 features of a 1M-wide SAE must cost kilobytes,
not the 19 GB of the whole file. This script

1. writes (once; cached by size under `--dir`) an SAELens v6 jumprelu folder, `cfg.json` +
   `sae_weights.safetensors`, by default d_in=2048 and d_sae=65536 (W_enc + W_dec = 1 GiB in
   fp32). The safetensors file is streamed chunk by chunk from a seeded numpy Generator, so
   the writer never holds more than one chunk;
2. loads it, each time in a fresh subprocess, (a) whole, (b) with `features=` N random
   features, (c) the same features with `dtype=torch.bfloat16`, (d) N features 1,000 columns
   apart (W_enc columns under 4 KiB apart are read as one block: the case that costs most).
   Each child reports the wall time of `load_sae`, its peak RSS
   (`getrusage(RUSAGE_SELF).ru_maxrss`), the peak RSS before the load (the baseline: after
   importing torch and featureguard and loading a tiny SAE once, so that first-use costs of
   torch kernels are not charged to the load), the bytes held by the loaded tensors, and the
   bytes it read (`rchar`) and fetched from the disk (`read_bytes`) per /proc/self/io;
3. checks that the partial loads hold exactly the full load's columns/rows and that
   `encode_subset` on a random x gives bit-identical activations ("match");
4. runs every case once "cold" (the file's pages evicted from the page cache with
   `posix_fadvise(POSIX_FADV_DONTNEED)`, which needs no root; the residency is checked with
   mincore and the row is marked if the eviction did not happen) and `--repeat` times warm.

Run: `make bench-load`, or `.venv/bin/python bench/load_memory.py [--write-docs]`. With
`--write-docs` the table replaces (or adds) its section in docs/benchmarks.md. The default
run writes 1 GiB under /tmp (removed at the end unless `--keep`) and takes one to three
minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import hashlib
import json
import math
import os
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from benchlib import DOCS, REPO, machine, write_section

SECTION = "## SAE loading: full vs partial (bench/load_memory.py)"
WEIGHTS, CONFIG, STAMP = "sae_weights.safetensors", "cfg.json", "bench_stamp.json"
CHUNK_BYTES = 32 * 2**20
RESULT_TAG = "@@result "
WARMUP_SHAPE, WARMUP_FEATURES = (8, 4096), [1, 2, 3000]  # a merged run and a lone column


# ---- writing the SAE -------------------------------------------------------------------------
def _tensor_specs(d_in: int, d_sae: int) -> list[tuple[str, tuple[int, ...]]]:
    # In the order safetensors itself lays them out (same dtype: by name).
    return [
        ("W_dec", (d_sae, d_in)),
        ("W_enc", (d_in, d_sae)),
        ("b_dec", (d_in,)),
        ("b_enc", (d_sae,)),
        ("threshold", (d_sae,)),
    ]


def _values(name: str, rng: np.random.Generator, n: int, d_in: int) -> np.ndarray:
    """`n` float32 values of tensor `name`, drawn so that about half the features fire."""
    if name == "threshold":
        return rng.uniform(0.0, 0.5, n).astype("<f4")
    a = rng.standard_normal(n, dtype=np.float32)
    a *= 1.0 / math.sqrt(d_in) if name.startswith("W_") else 0.1
    return a.astype("<f4", copy=False)


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


def write_saelens(folder: Path, d_in: int, d_sae: int, seed: int, quiet: bool = False) -> None:
    """An SAELens v6 jumprelu folder, the safetensors file streamed chunk by chunk."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STAMP).unlink(missing_ok=True)
    specs = _tensor_specs(d_in, d_sae)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in specs:
        n = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # safetensors pads the header to 8 bytes
    total = 8 + len(head) + offset
    rng = np.random.default_rng(seed)
    tmp = folder / (WEIGHTS + ".partial")
    bar = None if quiet else _progress(total, f"writing {WEIGHTS}")
    done, t0 = 0, time.perf_counter()
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head)
        for name, shape in specs:
            row = math.prod(shape[1:])
            rows_per_chunk = max(1, CHUNK_BYTES // (4 * row))
            for start in range(0, shape[0], rows_per_chunk):
                chunk = _values(name, rng, min(rows_per_chunk, shape[0] - start) * row, d_in)
                fh.write(chunk.data)
                done += chunk.nbytes
                if bar is not None:
                    bar.update(chunk.nbytes)
                elif not quiet:
                    print(
                        f"  {name}: {done / 2**20:8.1f} / {offset / 2**20:.1f} MiB "
                        f"({time.perf_counter() - t0:.1f} s)",
                        flush=True,
                    )
        fh.flush()
        os.fsync(fh.fileno())  # clean pages: posix_fadvise(DONTNEED) can evict them
    if bar is not None:
        bar.close()
    tmp.replace(folder / WEIGHTS)
    cfg = {
        "architecture": "jumprelu",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.5.1",
            "sae_lens_training_version": "6.5.1",
            "model_name": "bench-synthetic",
            "hook_name": "blocks.12.hook_resid_post",
            "hook_head_index": None,
            "prepend_bos": True,
            "dataset_path": "synthetic",
            "context_size": 1024,
            "model_from_pretrained_kwargs": {},
        },
    }
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2))
    stamp = {"d_in": d_in, "d_sae": d_sae, "seed": seed, "bytes": total}
    (folder / STAMP).write_text(json.dumps(stamp))  # written last: the folder is complete


def cached(folder: Path, d_in: int, d_sae: int, seed: int) -> bool:
    try:
        stamp = json.loads((folder / STAMP).read_text())
        size = (folder / WEIGHTS).stat().st_size
    except (OSError, ValueError):
        return False
    return stamp == {"d_in": d_in, "d_sae": d_sae, "seed": seed, "bytes": size}


# ---- page cache ------------------------------------------------------------------------------
def resident_fraction(path: Path) -> float | None:
    """Share of the file's pages in the page cache (mincore on a mapping never touched)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (
            [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3 + [ctypes.c_long]
        )
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        size, page = path.stat().st_size, os.sysconf("SC_PAGE_SIZE")
        with open(path, "rb") as fh:
            addr = libc.mmap(None, size, 1, 1, fh.fileno(), 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            return float((np.frombuffer(vec, dtype=np.uint8) & 1).mean())
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    except (OSError, AttributeError, ValueError):
        return None


def evict(path: Path) -> None:
    with open(path, "rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


# ---- one measurement (runs in a fresh interpreter) -------------------------------------------
def _io() -> dict[str, int]:
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in lines)}


def _hwm_kib() -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def child(spec: dict) -> dict:
    import resource

    import torch

    from featureguard.sae import load_sae

    def digest(t: torch.Tensor) -> str:
        return hashlib.sha256(t.contiguous().flatten().view(torch.uint8).numpy()).hexdigest()

    def digests(sae) -> dict[str, str]:
        return {n: digest(t) for n, t in sae._tensors().items() if t is not None}

    dtype = getattr(torch, spec["dtype"]) if spec["dtype"] else None
    features = spec["features"][spec["load"]] if spec["load"] else None
    # Warm-up on a tiny SAE through the same code paths, so that the first use of each torch
    # kernel (code pages faulted in, allocator arenas: a few MiB once per process) is not
    # charged to the load being measured. A process running a model has paid it long before.
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for kw in ({}, {"features": WARMUP_FEATURES}, {"features": WARMUP_FEATURES, "dtype": dtype}):
        load_sae(spec["warmup"], **kw).encode_subset(torch.zeros(1, WARMUP_SHAPE[0]))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    io0 = _io()
    t0 = time.perf_counter()
    sae = load_sae(spec["path"], features=features, dtype=dtype)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    io1 = _io()
    tensors = [t for t in sae._tensors().values() if t is not None]
    out = {
        "wall_s": wall,
        "imported_kib": imported,
        "base_kib": base,
        "peak_kib": peak,
        "hwm_kib": _hwm_kib(),
        "held_bytes": sum(t.numel() * t.element_size() for t in tensors),
        "rchar": io1["rchar"] - io0["rchar"] if io0 else None,
        "read_bytes": io1["read_bytes"] - io0["read_bytes"] if io0 else None,
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    # The checks run after the measurement, so they cost it nothing. A full load computes, for
    # every feature set and dtype, what a partial load of it must hold and give.
    x = torch.randn(8, sae.d_in, generator=torch.Generator().manual_seed(spec["seed"]))
    if features is not None:
        subsets = {(spec["load"], spec["dtype"] or "float32"): (sae, features)}
    else:
        subsets = {}
        for name, feats in spec["features"].items():
            sel = sae.select(feats)
            subsets[name, "float32"] = (sel, feats)
            subsets[name, "bfloat16"] = (sel.to(dtype=torch.bfloat16), feats)
    checks = {}
    for (name, dt), (s, feats) in subsets.items():
        enc = s.encode_subset(x, feats)
        checks[f"{name}/{dt}"] = {
            "tensors": digests(s),
            "encode": digest(enc),
            "active": int((enc != 0).sum()),
            "total": enc.numel(),
        }
    out["checks"] = checks
    return out


def measure(spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    sys.exit(f"measurement {spec} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")


# ---- reporting -------------------------------------------------------------------------------
def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}" if n / size < 100 else f"{n / size:.0f} {unit}"
    return f"{n:.0f} B"


def fmt_time(s: float) -> str:
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def command_line() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    if exe.is_absolute():
        exe = Path("python")
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path.cwd().resolve())
    return shlex.join([str(exe), str(script), *sys.argv[1:]])


# ---- main ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-in", type=int, default=2048, help="SAE input width (default 2048)")
    ap.add_argument("--d-sae", type=int, default=65536, help="dictionary size (default 65536)")
    ap.add_argument(
        "--features", type=int, default=16, help="features in the partial loads (default 16)"
    )
    ap.add_argument("--dir", type=Path, help="where the SAE is written (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written SAE for the next run")
    ap.add_argument("--repeat", type=int, default=3, help="warm runs per case (default 3)")
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--write-docs", action="store_true", help=f"update {DOCS.relative_to(REPO)}")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(RESULT_TAG + json.dumps(child(json.loads(args.child))), flush=True)
        return
    if not (0 < args.features <= args.d_sae):
        ap.error(f"--features must be in [1, {args.d_sae}]")

    made_dir = args.dir is None
    root = Path(tempfile.mkdtemp(prefix="featureguard-bench-")) if made_dir else args.dir
    folder = root / f"saelens-jumprelu-{args.d_in}x{args.d_sae}-seed{args.seed}"
    warmup = root / f"saelens-jumprelu-{WARMUP_SHAPE[0]}x{WARMUP_SHAPE[1]}-warmup"
    try:
        if cached(folder, args.d_in, args.d_sae, args.seed):
            print(f"using the SAE cached in {folder}")
        else:
            print(f"writing an SAELens jumprelu SAE d_in={args.d_in} d_sae={args.d_sae} "
                  f"to {folder}")  # fmt: skip
            t0 = time.perf_counter()
            write_saelens(folder, args.d_in, args.d_sae, args.seed)
            print(f"written in {time.perf_counter() - t0:.1f} s")
        if not cached(warmup, *WARMUP_SHAPE, 0):
            write_saelens(warmup, *WARMUP_SHAPE, 0, quiet=True)
        weights = folder / WEIGHTS
        size = weights.stat().st_size
        features = feature_sets(args.d_sae, args.features, args.seed)
        for name, feats in features.items():
            print(f"{name} features: {feats}")
        load0 = os.getloadavg()[0]
        rows = run_cases(folder, warmup, weights, features, args)
    finally:
        if not args.keep:
            shutil.rmtree(root if made_dir else folder, ignore_errors=True)
            shutil.rmtree(warmup, ignore_errors=True)
        else:
            print(f"kept {folder} (reuse it with --dir {shlex.quote(str(root))} --keep)")
    report(rows, size, features, (load0, os.getloadavg()[0]), args)


SPACING = 1000  # columns: 4000 bytes, under _Raw._cols' 4096-byte merge distance
CASES = [  # label, feature set (None: the full load), dtype
    ("full", None, None),
    ("partial", "random", None),
    ("partial, bf16", "random", "bfloat16"),
    ("partial, {gap:,} apart", "spaced", None),
]


def feature_sets(d_sae: int, n: int, seed: int) -> dict[str, list[int]]:
    """`random`: n distinct features in random order; `spaced`: n features SPACING apart."""
    rng = np.random.default_rng(seed + 1)
    spacing = max(1, min(SPACING, (d_sae - 1) // n))
    return {
        "random": [int(i) for i in rng.choice(d_sae, n, replace=False)],
        "spaced": [spacing // 2 + i * spacing for i in range(n)],
    }


def run_cases(
    folder: Path, warmup: Path, weights: Path, features: dict[str, list[int]], args
) -> list[dict]:
    rows, reference = [], None
    gap = features["spaced"][1] - features["spaced"][0] if len(features["spaced"]) > 1 else 0
    for template, load, dtype in CASES:
        label = template.format(gap=gap)
        spec = {"path": str(folder), "warmup": str(warmup), "features": features, "load": load,
                "dtype": dtype, "seed": args.seed}  # fmt: skip
        for cache in ("cold", "warm"):
            runs = []
            for _ in range(1 if cache == "cold" else max(1, args.repeat)):
                if cache == "cold":
                    evict(weights)
                before = resident_fraction(weights)
                r = measure(spec)
                r["resident"] = before
                runs.append(r)
            if reference is None:
                reference = runs[0]["checks"]  # the first full load
            match = "reference"
            if load is not None:
                key = f"{load}/{dtype or 'float32'}"
                want = reference[key]
                for r in runs:
                    assert r["checks"][key] == want, f"{label}: differs from the full load"
                assert want["active"] > 0, "no feature fired: the check would be vacuous"
                match = f"match ({want['active']} of {want['total']} activations ≠ 0)"
            row = dict(runs[0])
            row.update(
                label=label,
                load=load,
                cache=cache,
                wall_s=statistics.median(r["wall_s"] for r in runs),
                peak_kib=max(r["peak_kib"] for r in runs),
                delta_kib=max(r["peak_kib"] - r["base_kib"] for r in runs),
                warmup_kib=max(r["base_kib"] - r["imported_kib"] for r in runs),
                n=len(runs),
                match=match,
            )
            if cache == "cold" and (before is None or before > 0.01):
                row["cache"] = f"cold? ({_pct(before)} resident)"
            rows.append(row)
            print(f"  {label:22} {cache}: {fmt_time(row['wall_s'])}, peak RSS "
                  f"{fmt_bytes(row['peak_kib'] * 1024)} (+{fmt_bytes(row['delta_kib'] * 1024)}), "
                  f"held {fmt_bytes(row['held_bytes'])}, read {fmt_bytes(row['rchar'])}, "
                  f"{match}", flush=True)  # fmt: skip
            hwm = max(r["hwm_kib"] or 0 for r in runs)
            if abs(hwm - row["peak_kib"]) > 0.05 * row["peak_kib"]:
                print(f"    note: VmHWM {hwm} KiB differs from ru_maxrss {row['peak_kib']} KiB")
    return rows


def _pct(frac: float | None) -> str:
    return "?" if frac is None else f"{100 * frac:.0f}%"


def table(rows: list[dict], repeat: int) -> str:
    head = ["load", "page cache", f"wall time{' (median)' if repeat > 1 else ''}", "peak RSS",
            "peak RSS − baseline", "tensors held", "bytes read", "bytes from disk",
            "vs full load"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cache = r["cache"] if r["cache"] != "warm" else f"warm (×{r['n']})"
        cells = [r["label"], cache, fmt_time(r["wall_s"]), fmt_bytes(r["peak_kib"] * 1024),
                 fmt_bytes(r["delta_kib"] * 1024), fmt_bytes(r["held_bytes"]),
                 fmt_bytes(r["rchar"]), fmt_bytes(r["read_bytes"]), r["match"]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def interpret(rows: list[dict], size: int, features: dict[str, list[int]], args) -> str:
    """What the table says, in sentences built from its own numbers."""

    def row(label: str, warm: bool = True) -> dict:
        return next(r for r in rows if r["label"] == label and (r["cache"] == "warm") == warm)

    full, part, cold = row("full"), row("partial"), row("partial", warm=False)
    n = len(features["random"])
    spaced = rows[-1]
    gap = features["spaced"][1] - features["spaced"][0] if n > 1 else 0
    kib = 1024
    ratio = full["delta_kib"] / max(part["delta_kib"], 1)
    text = (
        f"Naming {n} random features of {args.d_sae:,} raises peak RSS by "
        f"{fmt_bytes(part['delta_kib'] * kib)}, against {fmt_bytes(full['delta_kib'] * kib)} "
        f"for the full load (about {ratio:,.0f}× less), and reads "
        f"{fmt_bytes(part['rchar'])} of the {fmt_bytes(size)} file in "
        f"{fmt_time(part['wall_s'])} warm; the loaded tensors hold "
        f"{fmt_bytes(part['held_bytes'])}."
    )
    if full["delta_kib"] * kib > 1.25 * full["held_bytes"]:
        text += (
            f" The full load peaks at {full['delta_kib'] * kib / full['held_bytes']:.1f}× "
            "the bytes it keeps: transient copies made while loading."
        )
    if spaced["delta_kib"] > 4 * max(part["delta_kib"], 1):
        text += (
            f" Where the features sit matters: {n} features {gap:,} columns apart cost "
            f"{fmt_bytes(spaced['delta_kib'] * kib)} of peak RSS and read "
            f"{fmt_bytes(spaced['rchar'])}, because W_enc columns closer than 4 KiB are read "
            "together, as one block spanning every row between them."
        )
    text += (
        f" Cold, the strided W_enc columns (one page per row per column) make the kernel "
        f"fetch {fmt_bytes(cold['read_bytes'])} from the disk into the page cache (not RSS), "
        f"and the partial load takes {fmt_time(cold['wall_s'])}."
    )
    return text


def report(rows: list[dict], size: int, features: dict[str, list[int]], load: tuple, args) -> None:
    full = next(r for r in rows if r["label"] == "full")
    tab = table(rows, args.repeat)
    summary = interpret(rows, size, features, args)
    print()
    print(tab)
    print()
    print(summary)
    if not args.write_docs:
        return
    gpu = "a GPU" if full["cuda"] else "no GPU"
    warm = max(r["warmup_kib"] for r in rows) * 1024
    n = len(features["random"])
    gap = features["spaced"][1] - features["spaced"][0] if n > 1 else 0
    random_list = ", ".join(map(str, features["random"]))
    runs = f"the median time of {args.repeat} runs" if args.repeat > 1 else "one run's time"
    about = (
        f"A synthetic SAELens v6 jumprelu SAE, d_in={args.d_in}, d_sae={args.d_sae:,} "
        f"(`sae_weights.safetensors`: {fmt_bytes(size)} fp32), loaded by `load_sae` in a fresh "
        f"process per measurement: whole; with `features=` {n} random features "
        f"({random_list}); the same in `dtype=torch.bfloat16`; and {n} features {gap:,} columns "
        f"apart ({features['spaced'][0]}, {features['spaced'][1]}, …). Peak RSS is `ru_maxrss`; "
        "the baseline is the process after importing torch and featureguard and loading a tiny "
        f"{WARMUP_SHAPE[0]}×{WARMUP_SHAPE[1]} SAE through the same paths, so that the one-off "
        f"cost of first using torch's kernels (at most {fmt_bytes(warm)} here) is not charged "
        'to the load. "Bytes read" is what the process asked the kernel for (`rchar`), '
        '"bytes from disk" what the kernel fetched (`read_bytes`); "cold" rows ran after '
        "evicting the file from the page cache with `posix_fadvise(DONTNEED)` (no root needed; "
        f"checked with mincore); warm rows give {runs} and the largest peak. Every partial "
        "load was checked to hold exactly the full load's columns and rows and to give "
        "bit-identical `encode_subset` activations on a random x. Times depend on what else "
        "the machine runs (1-minute load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after); RSS and byte counts do not."
    )
    section = (
        "\n\n".join(
            [
                SECTION,
                f"Command: `{command_line()}`  \nMachine: {machine()}, {gpu}; "
                f"torch {full['torch']}.  \nDate: {datetime.date.today().isoformat()}.",
                textwrap.fill(about, 100, break_on_hyphens=False),
                tab,
                textwrap.fill(summary, 100, break_on_hyphens=False),
            ]
        )
        + "\n"
    )
    write_section(SECTION, section)
    print(f"\nwrote the section to {DOCS.relative_to(REPO)}")


if __name__ == "__main__":
    main()

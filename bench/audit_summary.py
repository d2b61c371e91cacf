"""Time and peak memory of `featureguard audit summary` (and `audit verify`) on a ~1 GB log.

The requirement under test: summarising a large audit log streams it, in constant memory.
This script

1. writes a synthetic, hash-chained audit log of about `--size-gb` GB, streaming (one record
   at a time, written in 8 MiB batches): requests of 1-4 rows with 16-48 prompt and 8-64 reply
   tokens (ids and token texts, as `request_completed.rows` holds them), 0-3 `policy_triggered`
   records each over five policies (block, suppress, steer, log), one `guard_error` per ~5,000
   requests, timestamps spread over 72 hours; a seeded generator makes it reproducible;
2. runs `featureguard audit summary LOG --json` in a fresh process on the whole log, and on
   its first tenth (cut at a line), and on a 3-record log (the baseline: the process with its
   imports), measuring wall time and peak RSS (`ru_maxrss` of the child, from `wait4`);
3. runs `featureguard audit verify LOG` the same way on the whole log.

Run: `.venv/bin/python bench/audit_summary.py [--write-docs]`. With `--write-docs` its section
of docs/benchmarks.md is replaced (or added); other sections are kept. The log goes under /tmp
and is removed at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine, write_section

SECTION = "## Audit summary on a 1 GB log (bench/audit_summary.py)"
POLICIES = [  # name, action, severity, feature, label, threshold
    ("unsafe-code", "block", "high", 1234, "disables TLS verification", 3.0),
    ("no-insults", "suppress", "medium", 42, "insult", 4.0),
    ("calm-down", "steer", "low", 5, "anger", 2.0),
    ("watch-medical", "log", "low", 310, "dosage advice", 1.5),
    ("no-secrets", "suppress", "high", 99, "API keys", 1.0),
]
WORDS = [" the", " a", " def", "(", ")", ":", " import", " os", " return", " x", " =", " 1",
         " verify", "=False", " please", " dose", " mg", "\n", " key", " you"]  # fmt: skip
GENESIS = "0" * 64


def canonical(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def write_log(path: Path, size: int, seed: int = 0) -> tuple[int, int]:
    """Write a chained log of about `size` bytes; return (records, requests)."""
    rng, prev, written, records, requests = random.Random(seed), GENESIS, 0, 0, 0
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    buf: list[str] = []
    with path.open("w", encoding="utf-8") as out:
        while written < size:
            requests += 1
            when = start + datetime.timedelta(seconds=requests * 0.7)
            for rec in request_records(rng, f"{rng.getrandbits(64):016x}", when, requests):
                sealed = {**rec, "prev_hash": prev}
                sealed["hash"] = prev = hashlib.sha256(
                    (prev + canonical(sealed)).encode()).hexdigest()  # fmt: skip
                line = canonical(sealed) + "\n"
                buf.append(line)
                written += len(line.encode())
                records += 1
            if len(buf) > 4000:
                out.write("".join(buf))
                buf.clear()
        out.write("".join(buf))
    return records, requests


def request_records(rng: random.Random, rid: str, when: datetime.datetime, n: int) -> list[dict]:
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    rows = []
    for _ in range(rng.randint(1, 4)):
        prompt = [rng.choice(WORDS) for _ in range(rng.randint(16, 48))]
        reply = [rng.choice(WORDS) for _ in range(rng.randint(8, 64))]
        rows.append((prompt, reply))
    out, blocked = [], {}
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
        name, action, severity, feature, label, threshold = rng.choice(POLICIES)
        r = rng.randrange(len(rows))
        tokens = rows[r][0] + rows[r][1]
        index = rng.randrange(len(tokens))
        act = round(threshold + rng.random() * 3, 6)
        if action == "block":
            blocked.setdefault(r, name)
        out.append({
            "event": "policy_triggered", "timestamp": stamp, "request_id": rid, "sequence": r,
            "policy": name, "action": action, "severity": severity, "sae": "res6",
            "hook": "blocks.6.hook_resid_post", "policy_file": "policies/prod.yaml",
            "features": [{"index": feature, "label": label, "activation": act}], "score": act,
            "threshold": threshold, "token_index": index, "token_id": WORDS.index(tokens[index]),
            "token": tokens[index], "scope": "prompt" if index < len(rows[r][0]) else "response",
        })  # fmt: skip
    if n % 5000 == 0:
        error = "res6@blocks.6: RuntimeError: synthetic"
        out.append({"event": "guard_error", "timestamp": stamp, "request_id": rid,
                    "error": error, "fail_closed": False})  # fmt: skip
    ids = [([WORDS.index(t) for t in p], [WORDS.index(t) for t in r]) for p, r in rows]
    out.append({
        "event": "request_completed", "timestamp": stamp, "request_id": rid,
        "policy_file": "policies/prod.yaml", "sequences": len(rows),
        "policies_triggered": sorted({t["policy"] for t in out if "policy" in t}),
        "blocked": sorted(blocked), "prompt_tokens": sum(len(p) for p, _ in rows),
        "completion_tokens": sum(len(r) for _, r in rows),
        "duration_ms": round(rng.random() * 900, 3),
        "rows": [{"prompt_ids": ids[i][0], "reply_ids": ids[i][1], "tokens": p + r,
                  **({"blocked_by": blocked[i]} if i in blocked else {})}
                 for i, (p, r) in enumerate(rows)],
    })  # fmt: skip
    return out


def measure(args: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of one `featureguard` child process."""
    cmd = [sys.executable, "-m", "featureguard", *args]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.read()!r}")
    return wall, usage.ru_maxrss * 1024, text


def first_part(src: Path, dst: Path, size: int) -> None:
    with src.open("rb") as inp, dst.open("wb") as out:
        out.write(inp.read(size) + inp.readline())


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else human(n)


def signed(n: int) -> str:
    return ("+" if n >= 0 else "−") + human(abs(n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="log size (default 1.0 GB)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "fg-bench-audit")
    ap.add_argument("--keep", action="store_true", help="keep the log")
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    log, part, tiny = args.dir / "audit.jsonl", args.dir / "part.jsonl", args.dir / "tiny.jsonl"
    try:
        t0 = time.perf_counter()
        records, requests = write_log(log, int(args.size_gb * 1e9))
        gen = time.perf_counter() - t0
        size = log.stat().st_size
        first_part(log, part, size // 10)
        with log.open("rb") as inp, tiny.open("wb") as out:
            out.writelines(inp.readline() for _ in range(3))
        rows = []
        for name, path in (("3 records (baseline)", tiny), ("first tenth", part), ("whole", log)):
            wall, rss, out = measure(["audit", "summary", str(path), "--json"])
            doc = json.loads(out)
            rows.append((name, path.stat().st_size, doc["records"], wall, rss, doc))
            print(f"summary {name}: {human(path.stat().st_size)} {wall:.1f} s {human(rss)}")
        vwall, vrss, vout = measure(["audit", "verify", str(log)])
        print(f"verify: {vwall:.1f} s {human(vrss)}: {vout.strip()}")
        whole = rows[-1][5]
        section = docs_section(rows, (vwall, vrss, vout.strip()), size, records, requests, gen,
                               whole)  # fmt: skip
        print(section)
        if args.write_docs:
            write_section(SECTION, section)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


def docs_section(rows: list, verify: tuple, size: int, records: int, requests: int, gen: float,
                 whole: dict) -> str:  # fmt: skip
    base_wall, base = rows[0][3], rows[0][4]
    lines = [(f"summary, {name}", nbytes, n, wall, rss) for name, nbytes, n, wall, rss, _ in rows]
    vwall, vrss, vout = verify
    lines.append(("verify, whole", size, records, vwall, vrss))
    table = "\n".join(
        f"| {name} | {gb(nbytes)} | {n:,} | {wall:.1f} s | {wall - base_wall:.1f} s | "
        + (f"{nbytes / (wall - base_wall) / 1e6:.0f} MB/s" if i else "-")
        + f" | {human(rss)} | {'-' if not i else signed(rss - base)} |"
        for i, (name, nbytes, n, wall, rss) in enumerate(lines)
    )
    vout = vout.replace(str(Path(vout.split(":", 1)[0]).parent) + "/", "")
    read, rate = rows[-1][3] - base_wall, 100 * whole["block_rate"]
    head = "  \n".join([
        "Command: `.venv/bin/python bench/audit_summary.py --write-docs`",
        f"Machine: {machine()}, no GPU; Python {platform.python_version()}.",
        f"Date: {datetime.date.today().isoformat()}.",
    ])  # fmt: skip
    return f"""{SECTION}

{head}

A synthetic hash-chained log written by the script ({gb(size)}, {records:,} records,
{requests:,} requests; {gen:.0f} s to write): requests of 1-4 rows with token ids and texts in
`request_completed.rows`, 0-3 triggers each over five policies, timestamps over 72 hours. Each
command ran in a fresh process (`python -m featureguard ...`); peak RSS is the child's
`ru_maxrss`. The baseline is the same command on the log's first 3 records: the interpreter with
featureguard's imports (the package imports torch and transformers), so "− baseline" is what
reading the log costs. The machine was shared (another job was training a model), so times are
indicative; memory is not affected. Throughput counts the time beyond the baseline's.

| command, log | size | records | wall time | − baseline | throughput | peak RSS | RSS − baseline |
|---|---|---|---|---|---|---|---|
{table}

Summarising {gb(size)} takes {read:.0f} s beyond start-up, with a peak RSS
{signed(rows[-1][4] - base)} from the baseline; for a tenth of the log it is
{signed(rows[1][4] - base)}: memory does not grow with the log. The whole log's summary:
{whole["requests"]:,} requests, {whole["triggers"]:,} triggers, block rate {rate:.2f}%.
`audit verify` checks every hash of the same file in {vwall - base_wall:.0f} s beyond start-up:
`{vout}`.
"""


if __name__ == "__main__":
    main()

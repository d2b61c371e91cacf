"""Rows/s of `featureguard scan` on Ray Data (1 and 2 workers) against the plain library loop.

    .venv/bin/python bench/scan.py --rows 4000 --write-docs

The same texts and policy file in both: the library loop wraps the model once and calls
`guard.score` per text in this process (audit to a file, no fsync, as the scan's shards); the
scan runs `featureguard.integrations.ray.data.scan` on a local Ray with `--workers` actors.
A scan's wall time includes starting its actors and loading the model in each; scans of a
quarter of the rows and of all of them give the steady rate (the slope) and that fixed cost.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from benchlib import REPO, machine, write_section

from featureguard.audit import JsonlSink
from featureguard.demo.assets import load_model
from featureguard.guard import wrap

MODEL = REPO / "models" / "demo-coder"
POLICIES = REPO / "policies" / "demo" / "unsafe-code.yaml"
TITLE = "## Corpus scan on Ray Data (bench/scan.py)"
LINES = [
    "import ssl\nctx = ssl.create_default_context()\nctx.check_hostname = False",
    "def add(a, b):\n    return a + b",
    "requests.get(url, verify=False)",
    "The meeting moved to Thursday; bring the quarterly figures.",
    "for i in range(10):\n    print(i * i)",
    "subprocess.call(cmd, shell=True)",
]


def texts(n: int) -> list[str]:
    return [f"# row {i}\n{LINES[i % len(LINES)]}" for i in range(n)]


def library(rows: list[str], tmp: Path) -> float:
    """Rows/s of guard.score over `rows`, one text per call, model loaded beforehand."""
    model, tokenizer = load_model(MODEL)
    with wrap(model, POLICIES, tokenizer=tokenizer,
              audit=JsonlSink(tmp / "lib.jsonl", fsync="never")) as guard:  # fmt: skip
        guard.score(rows[:8])  # warm-up
        start = time.perf_counter()
        for i, text in enumerate(rows):
            guard.score(text, request_id=f"r{i}")
        return len(rows) / (time.perf_counter() - start)


def ray_scan(rows: list[str], workers: int, tmp: Path, tag: str) -> float:
    """Wall seconds of one scan of `rows` with `workers` actors."""
    from featureguard.integrations.ray.data import scan

    corpus = tmp / f"{tag}.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                              for i, t in enumerate(rows)))  # fmt: skip
    start = time.perf_counter()
    scan(corpus, POLICIES, tmp / tag, model=MODEL, workers=workers, batch_size=64)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    rows = texts(args.rows)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        lib = library(rows, tmp)
        from featureguard.integrations.ray._ray import ensure_ray

        started = time.perf_counter()
        ensure_ray("bench/scan.py", num_cpus=max(args.workers) + 1)
        ray_init = time.perf_counter() - started
        table = [("library loop, 1 process", lib, lib, 0.0)]
        quarter = rows[: len(rows) // 4]
        for w in args.workers:
            small = ray_scan(quarter, w, tmp, f"quarter-{w}")
            wall = ray_scan(rows, w, tmp, f"scan-{w}")
            steady = (len(rows) - len(quarter)) / (wall - small)
            fixed = wall - len(rows) / steady
            table.append((f"Ray Data scan, {w} worker(s)", len(rows) / wall, steady, fixed))
    lines = ["| run | rows/s (wall) | rows/s (steady) | fixed cost s |", "| --- " * 4 + "|"]
    lines += [f"| {name} | {wall:,.0f} | {steady:,.0f} | {fixed:.1f} |"
              for name, wall, steady, fixed in table]  # fmt: skip
    print("\n".join(lines))
    print(f"ray.init: {ray_init:.1f} s")
    if args.write_docs:
        write_section(TITLE, _section(args, lines, ray_init, table, load_before))


def _section(args: argparse.Namespace, table: list[str], ray_init: float,
             runs: list[tuple[str, float, float, float]], load_before: float) -> str:  # fmt: skip
    import ray

    steady = [s for _, _, s, _ in runs[1:]]
    step = f"{steady[-1] / steady[0]:.2f}×" if len(steady) > 1 else "n/a"
    busy = load_before > 0.5
    lib = runs[0][1]
    versus = ("faster than" if steady[0] > lib * 1.05 else "slower than" if steady[0] < lib * 0.95
              else "about as fast as")  # fmt: skip

    workers = " ".join(map(str, args.workers))
    return "\n".join([
        TITLE, "",
        f"Command: `.venv/bin/python bench/scan.py --rows {args.rows} --workers {workers} "
        "--write-docs`  ",
        f"Machine: {machine()}, no GPU; torch {torch.__version__}, 1 thread per process; "
        f"ray {ray.__version__}; load average {load_before:.1f} before the run"
        + (" (other work shared the CPUs: the figures are lower bounds).  " if busy else ".  "),
        f"Date: {date.today().isoformat()}.", "",
        f"The demo model ({MODEL.name}) under {POLICIES.relative_to(REPO)}, {args.rows:,} short "
        "code and prose rows; one text per forward pass in both (the library's "
        "`Guard.score`, which stops after the deepest hooked layer). Wall: the whole call; "
        "steady: the slope between a scan of a quarter of the rows and one of all of them; "
        "fixed cost: what is left (actors started, the model loaded in each, the output "
        f"written, Ray Data's planning). `ray.init` itself took {ray_init:.1f} s.", "",
        *table, "",
        f"Reading. From 1 to {args.workers[-1]} workers the steady rate grew {step}. At one "
        f"worker a scan's steady rate is {versus} the library loop in one process (both score "
        "one text per forward pass; the actor gets a batch of rows per call, the loop one "
        "call per text); the fixed cost decides small scans, so below a few thousand rows on "
        "one machine the library loop is the quicker choice.", "",
        "Scaling. Each actor holds its own copy of the model and scores its rows alone, with "
        "no traffic between actors but the input blocks and the result rows, so a scan "
        "scales with the number of actors until the input read or the writes bind: on N "
        "nodes of this size, expect about N × the 2-worker steady rate, less the fixed cost "
        "per actor (start-up and one model load, seconds) that long scans amortise. On 2 "
        "cores the second worker competes with Ray's own processes and the driver, so the "
        "step from 1 to 2 workers is below 2×; a model that spends more time per row than "
        "this 3.6 MB demo model (every real one) makes the per-row overheads of Ray Data "
        "(batching, Arrow conversion) smaller in proportion, and the scaling closer to "
        "linear. A GPU per actor (`num_gpus=1`) follows the same arithmetic.", "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()

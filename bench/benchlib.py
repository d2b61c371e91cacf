"""What every benchmark shares: the machine's description and its section of the docs.

Each script owns one `## ...` section of docs/benchmarks.md and rewrites only that one.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
DOCS_HEADER = """# Benchmarks

Every figure here comes with the exact command that produced it (run from the repository root)
and the machine it ran on; unless a section says otherwise that machine has 2 CPU cores,
24 GiB of memory and no GPU. Rerun the command to refresh a section: the scripts under
`bench/` rewrite their own section only.
"""


def machine() -> str:
    """`2 CPU cores (AMD EPYC), 24 GiB memory, Linux 6.1`: what the figures ran on."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 2**20:.0f}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} CPU cores ({cpu}), {mem} GiB memory, {platform.system()} {platform.release()}"


def write_section(title: str, section: str) -> None:
    """Put `section` (which starts with the `title` line) into docs/benchmarks.md, replacing
    the section of that title if there is one, else appending it."""
    text = DOCS.read_text(encoding="utf-8") if DOCS.exists() else DOCS_HEADER
    start = text.find(title)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(title))
        text = text[:start] + section + ("" if nxt < 0 else "\n" + text[nxt + 1 :])
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text, encoding="utf-8")

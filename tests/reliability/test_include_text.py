"""`include_text: false` keeps prompt and reply text out of everything the guard writes: the
audit log, the activation trace and OpenTelemetry spans, whether the call came through the
library (generate, stream, score) or the server.

The demo model's tokenizer has many whole-word tokens, so a run with text on writes many of the
prompts' and replies' words into its records: the same run with text off must write none of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from safetensors import safe_open
from serving import running
from transformers import AutoModelForCausalLM, AutoTokenizer

import featureguard as fg
from featureguard.audit import iter_records
from featureguard.integrations import otel
from featureguard.integrations.server import GuardedService, create_app

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    "import requests\ndef fetch_invoice(url):\n    return requests.get(url, ",
    "def load_settings(path):\n    with open(path) as handle:\n        return yaml.",
    "Dear customer, your account",
]
WORD = re.compile(r"[A-Za-z]{4,}")


def policy_file(tmp_path: Path, include_text: bool) -> Path:
    """The demo's unsafe-code policy, auditing and tracing (top-k) into `tmp_path`."""
    doc = yaml.safe_load((ROOT / "policies/demo/unsafe-code.yaml").read_text())
    for sae in doc["saes"].values():
        sae["path"] = str((ROOT / "policies/demo" / sae["path"]).resolve())
    trace = {"path": str(tmp_path / "trace"), "features": "topk", "k": 8}
    doc["audit"] = {"path": str(tmp_path / "audit.jsonl"), "include_text": include_text,
                    "trace": trace}  # fmt: skip
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_everything(tmp_path: Path, include_text: bool) -> tuple[bytes, list[str]]:
    """Every kind of call, with text on or off: the bytes written (audit log, trace files, span
    attributes and events) and the texts that went in and came out."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(ROOT / "models/demo-coder").eval()
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "models/demo-coder")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    texts = list(PROMPTS)
    with fg.wrap(model, policy_file(tmp_path, include_text), tokenizer=tokenizer) as guard:
        stop = otel.instrument(guard, tracer_provider=provider)
        texts += guard.generate(PROMPTS, max_new_tokens=24)
        texts.append("".join(guard.stream(PROMPTS[0], max_new_tokens=24)))
        guard.score(PROMPTS)
        with running(create_app(GuardedService(guard, "demo"))) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
            for prompt in PROMPTS:
                reply = client.chat.completions.create(
                    model="demo", messages=[{"role": "user", "content": prompt}], max_tokens=24,
                    temperature=0)  # fmt: skip
                texts.append(reply.choices[0].message.content or "")
        stop()
    written = [p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()
               and p.name != "policy.yaml"]  # fmt: skip
    spans = [repr(dict(s.attributes or {})) + repr([(e.name, dict(e.attributes or {}))
             for e in s.events]) for s in exporter.get_finished_spans()]  # fmt: skip
    assert spans  # one per request
    return b"\n".join(written) + "\n".join(spans).encode(), texts


def words(texts: list[str]) -> set[str]:
    return {w for t in texts for w in WORD.findall(t)}


def structural(folder: Path) -> set[str]:
    """Words written whatever the text: keys of records and trace metadata, and the values
    that name the policy, its features and its file."""
    found: set[str] = set()

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                found.update(WORD.findall(k))
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
        elif isinstance(value, str) and key in {"policy", "label", "event", "action", "severity",
                                                 "sae", "hook", "scope", "blocked_by", "error",
                                                 "policies_triggered", "policy_file"}:  # fmt: skip
            found.update(WORD.findall(value))

    for record in iter_records(folder / "audit.jsonl"):
        walk(record)
    for shard in (folder / "trace").glob("shard-*.safetensors"):
        with safe_open(str(shard), framework="np") as f:
            walk({k: json.loads(v) for k, v in f.metadata().items()})
    return found


@pytest.mark.parametrize("include_text", [True, False])
def test_no_prompt_or_reply_word_is_written_without_text(tmp_path: Path, include_text: bool
                                                         ) -> None:  # fmt: skip
    written, texts = run_everything(tmp_path, include_text)
    # A blocked reply reads as the policy's message: the guard's words, not the model's.
    [policy] = yaml.safe_load((ROOT / "policies/demo/unsafe-code.yaml").read_text())["policies"]
    candidates = words(texts) - structural(tmp_path) - words([policy.get("message", "")])
    leaked = {w for w in candidates if w.encode() in written}
    if include_text:  # the check can see text: with it on, many words are written whole (the
        # rest are split into several tokens, which records write one by one)
        assert len(leaked) >= len(candidates) // 3 > 0, (sorted(leaked), sorted(candidates))
    else:
        assert leaked == set(), leaked

"""Corpus scans on Ray Data: every text of a JSONL or Parquet input scored under a policy file.

    featureguard scan corpus.jsonl --policies p.yaml --output out/ --workers 2 [--trace]

`Scanner` is the callable class of `map_batches`: each actor loads and wraps the model once,
then scores each text with `Guard.score`, the library's own scoring (every token read as a
reply token; the forward pass stops after the deepest hooked layer). So a scan's triggers are
the library's, the server's and a Serve replica's for the same text and policy file. The output
folder gets:

    results/*.json            one JSON line per row: id, per-policy max score, triggers
    audit.w-<actor>.jsonl     each actor's audit shard (one request per row, id = the row's id)
    audit.anchors.jsonl       one anchor over every shard, written when the scan ends
    traces/w-<actor>/         with `trace`: each actor's trace, for `featureguard audit replay`

Audit shards are written without fsync per record (a scan can be re-run); they are complete
once the scan returns.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from featureguard.audit import JsonlSink
from featureguard.audit.shards import AnchorWriter, shard_path
from featureguard.audit.trace import TraceWriter, trace_folders
from featureguard.errors import FeatureguardError
from featureguard.integrations.ray._ray import ensure_ray, import_ray
from featureguard.integrations.server.command import load_guard
from featureguard.outcomes import TextScore
from featureguard.replay import PolicyComparison, ReplayReport, ReplayTrigger, combine
from featureguard.replay import replay as replay_folder

import_ray("featureguard scan")
import pyarrow as pa  # noqa: E402  (after the check that names the extra, which brings it)

__all__ = ["RESULT_SCHEMA", "ScanSummary", "Scanner", "replay", "result_row", "scan"]

_TRIGGER = pa.struct([("policy", pa.string()), ("action", pa.string()),
                      ("token_index", pa.int64()), ("token_id", pa.int64()),
                      ("token", pa.string()), ("score", pa.float64())])  # fmt: skip
RESULT_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("tokens", pa.int64()),
    ("flagged", pa.bool_()),
    ("blocked", pa.bool_()),
    ("blocked_by", pa.string()),
    ("max_scores", pa.list_(pa.struct([("policy", pa.string()), ("score", pa.float64())]))),
    ("triggers", pa.list_(_TRIGGER)),
])  # fmt: skip
"""One row of a scan's results."""


def result_row(row_id: str, scored: TextScore) -> dict[str, Any]:
    """A scanned text as a result row: each policy's highest score over the scored tokens
    (None when no token was scored), and every trigger."""
    maxima = [{"policy": name, "score": max((v for v in values if v is not None), default=None)}
              for name, values in scored.scores.items()]  # fmt: skip
    triggers = [{"policy": t.policy, "action": t.action, "token_index": t.token_index,
                 "token_id": t.token_id, "token": t.token, "score": t.score}
                for t in scored.outcome.triggers]  # fmt: skip
    return {"id": row_id, "tokens": len(scored.tokens), "flagged": bool(triggers),
            "blocked": scored.outcome.blocked, "blocked_by": scored.outcome.blocked_by,
            "max_scores": maxima, "triggers": triggers}  # fmt: skip


def _row_id(text: str) -> str:
    return "t-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class Scanner:
    """`map_batches` callable: one wrapped model per actor; a batch of texts in, results out."""

    def __init__(self, model: str, policies: str, output: str, *, text_column: str = "text",
                 id_column: str = "id", trace: bool = False, threads: int = 1) -> None:  # fmt: skip
        import torch

        torch.set_num_threads(threads)
        worker = f"w-{uuid.uuid4().hex[:12]}"
        self.sink = JsonlSink(shard_path(Path(output) / "audit.jsonl", worker), fsync="never")
        self.guard = load_guard(model, policies, self.sink)
        self.text_column, self.id_column = text_column, id_column
        self.trace = None
        if trace:
            spec = self.guard.policies.audit.trace
            mode, k = (spec.features, spec.k) if spec else ("policy", None)
            self.trace = TraceWriter(Path(output) / "traces" / worker, mode=mode, k=k)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.text_column not in batch.column_names:
            raise FeatureguardError(f"the input has no {self.text_column!r} column (it has "
                                    f"{batch.column_names}); pass --text-column")  # fmt: skip
        texts = [str(t) for t in batch.column(self.text_column).to_pylist()]
        if self.id_column in batch.column_names:
            ids = [str(i) for i in batch.column(self.id_column).to_pylist()]
        else:
            ids = [_row_id(t) for t in texts]
        scored = self.guard.score(texts, request_id=ids, trace=self.trace)
        rows = [result_row(i, s) for i, s in zip(ids, scored, strict=True)]
        return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


@dataclass(frozen=True, slots=True)
class ScanSummary:
    """What a scan did."""

    rows: int
    """Rows scored."""
    flagged: int
    """Rows where any policy triggered."""
    output: Path
    """The output folder."""


def read_input(ray: Any, path: str | os.PathLike[str]) -> Any:
    """A Ray dataset over JSONL (`.jsonl`, `.json`) or Parquet (`.parquet`, or a folder)."""
    path = Path(path)
    if not path.exists():
        raise FeatureguardError(f"{path}: no such input file or folder")
    # Reading is light next to scoring: a quarter CPU per read task, so that actors holding
    # every CPU (workers == CPUs) do not starve the reads that feed them.
    light = 0.25
    if path.suffix in (".jsonl", ".json"):
        return ray.data.read_json(str(path.resolve()), lines=True, num_cpus=light)
    if path.suffix == ".parquet" or path.is_dir():
        return ray.data.read_parquet(str(path.resolve()), num_cpus=light)
    raise FeatureguardError(f"{path}: expected JSON Lines (.jsonl) or Parquet (.parquet, folder)")


def scan(
    input: str | os.PathLike[str],
    policies: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str],
    workers: int = 1,
    batch_size: int = 16,
    text_column: str = "text",
    trace: bool = False,
    address: str | None = None,
    cpus_per_worker: float = 1.0,
) -> ScanSummary:
    """Score every row of `input` with `workers` actors; write results, audit shards, anchors
    and (with `trace`) traces to `output`. Starts a local Ray unless one is running or
    `address` (or $RAY_ADDRESS) names a cluster."""
    # A local Ray gets a logical CPU per worker plus one for reading and writing.
    ray = ensure_ray("featureguard scan", num_cpus=workers + 1, address=address)
    out = Path(output).resolve()
    if (out / "results").exists():
        raise FeatureguardError(f"{out}/results exists: choose a new --output folder")
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"text_column": text_column, "trace": trace}
    scored = (
        read_input(ray, input)
        .map_batches(
            Scanner,
            fn_constructor_args=(
                str(Path(model).resolve()),
                str(Path(policies).resolve()),
                str(out),
            ),
            fn_constructor_kwargs=kwargs,
            batch_size=batch_size,
            batch_format="pyarrow",
            concurrency=workers,
            num_cpus=cpus_per_worker,
        )
        .materialize()
    )  # once: writing and counting must not run the scan again
    scored.write_json(str(out / "results"))
    rows = scored.count()
    flagged = int(scored.sum("flagged") or 0)
    AnchorWriter(out / "audit.jsonl").close()
    return ScanSummary(rows=rows, flagged=flagged, output=out)


class ShardReplayer:
    """`map_batches` callable for replay: each actor replays whole trace shards (numpy only, no
    model) and hands back each shard's report as JSON."""

    def __init__(self, policies: str) -> None:
        from featureguard.policy import load_policies

        self.policies = load_policies(policies)

    def __call__(self, batch: pa.Table) -> pa.Table:
        reports = [json.dumps(asdict(replay_folder(shard, self.policies)))
                   for shard in batch.column("shard").to_pylist()]  # fmt: skip
        return pa.table({"shard": batch.column("shard"), "report": reports})


def _report(doc: dict[str, Any]) -> ReplayReport:
    return ReplayReport(**{
        **doc,
        "did": tuple(ReplayTrigger(**t) for t in doc["did"]),
        "would": tuple(ReplayTrigger(**t) for t in doc["would"]),
        "policies": tuple(PolicyComparison(**c) for c in doc["policies"]),
        "approximate": tuple(doc["approximate"]), "notes": tuple(doc["notes"]),
    })  # fmt: skip


def replay(
    trace: str | os.PathLike[str],
    policies: str | os.PathLike[str],
    *,
    workers: int = 1,
    address: str | None = None,
    cpus_per_worker: float = 1.0,
) -> ReplayReport:
    """`featureguard audit replay --ray`: the trace shards of `trace` (a scan's `traces/`, or
    one trace folder) replayed against `policies` by `workers` actors, one shard per task; the
    same report as `featureguard.replay.replay` on the whole folder."""
    ray = ensure_ray("featureguard audit replay --ray", num_cpus=workers + 1, address=address)
    shards = [str(p.resolve()) for p in trace_folders(trace)]
    replayed = (
        ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
        .map_batches(
            ShardReplayer,
            fn_constructor_args=(str(Path(policies).resolve()),),
            batch_size=1,
            batch_format="pyarrow",
            concurrency=workers,
            num_cpus=cpus_per_worker,
        )
        .take_all()
    )
    by_shard = {row["shard"]: _report(json.loads(row["report"])) for row in replayed}
    return combine([by_shard[s] for s in shards], policies)  # in the shards' order

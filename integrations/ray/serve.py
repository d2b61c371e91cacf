"""Guarded serving on Ray Serve: replicas of `featureguard serve`, with sharded audit logs.

    featureguard serve --ray --replicas 2 --model models/demo-coder --policies p.yaml

Two Serve applications:

- `featureguard`: `GuardedDeployment`, N replicas. Each loads and wraps the model once and
  serves the server's own FastAPI app (`create_app`: same routes, headers, `content_filter`).
  Concurrent non-streaming requests are gathered by `@serve.batch` and generated together, one
  batch per sampling setting; each request is still audited as a call of its own. Each
  replica writes its own hash-chained shard `<audit>.r-<replica>.jsonl`.
- `featureguard-anchors`: `AnchorDeployment`, one replica: the set's single anchor writer,
  which appends every shard's head to `<audit>.anchors.jsonl` every `anchor_interval` seconds
  (`featureguard audit verify <audit>` checks shards and anchors together).

Paths are made absolute here, on the driver: the replicas read the same files (one machine, or
a volume every node mounts).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featureguard.audit.shards import AnchorWriter, shard_path
from featureguard.integrations.ray._ray import import_ray
from featureguard.integrations.server.command import load_guard
from featureguard.integrations.server.service import Completion, GuardedService, Sampling
from featureguard.policy import load_policies

import_ray("featureguard serve --ray")
from ray import serve  # noqa: E402  (after the check that names the extra)

__all__ = ["AnchorDeployment", "GuardedDeployment", "ServeConfig", "deploy"]

APP, ANCHOR_APP = "featureguard", "featureguard-anchors"
MAX_BATCH_SIZE, BATCH_WAIT_S = 8, 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeConfig:
    """What every replica is built from (plain values: it travels to the replicas)."""

    model: str
    """A transformers model folder."""
    policies: str
    """The policy file."""
    audit: str
    """The shard set's name: replicas write `<stem>.r-<id><suffix>` next to it."""
    model_id: str
    """The model's name in the API."""
    api_key: str | None = None
    """Require `Authorization: Bearer <api_key>` on every route but /health."""
    max_queue: int = 16
    """Waiting batches per replica before it answers 503."""
    threads: int = 1
    """torch threads per replica."""


class _BatchingService(GuardedService):
    """A GuardedService whose non-streaming completions are gathered into batches."""

    async def complete_async(
        self, prompts: Sequence[str], sampling: Sampling, request_id: str
    ) -> Completion:
        done = await self._batched((tuple(prompts), sampling, request_id))
        if isinstance(done, BaseException):
            raise done
        return done

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(
        self, items: list[tuple[tuple[str, ...], Sampling, str]]
    ) -> list[Completion | BaseException]:
        """One generation per sampling setting (a seeded request runs alone: its seed must
        govern its own sampling); a failure answers only the requests of its batch."""
        groups: dict[Any, list[int]] = {}
        for i, (_, sampling, _) in enumerate(items):
            key = (sampling, i) if sampling.seed is not None else sampling
            groups.setdefault(key, []).append(i)
        out: list[Completion | BaseException] = [RuntimeError("not run")] * len(items)

        async def run(members: list[int]) -> None:
            requests = [(items[i][0], items[i][2]) for i in members]
            sampling = items[members[0]][1]
            try:
                future = self.submit(lambda: self.complete_many(requests, sampling))
                results: list[Completion | BaseException] = list(await asyncio.wrap_future(future))
            except Exception as exc:
                results = [exc] * len(members)
            for i, result in zip(members, results, strict=True):
                out[i] = result

        await asyncio.gather(*(run(m) for m in groups.values()))
        return out


class _LeaveRequestIdToServe:
    """Serve's proxy puts X-Request-ID on every request it lacks it on, and on every response:
    the app reads the same id, so its own copy of the header would only repeat it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def send_once(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [(k, v) for k, v in message.get("headers", [])
                                                  if k.lower() != b"x-request-id"]}  # fmt: skip
            await send(message)

        await self.app(scope, receive, send_once if scope["type"] == "http" else send)


@serve.deployment
@serve.ingress()
class GuardedDeployment:
    """One replica: the model, wrapped once, behind the featureguard server's FastAPI app."""

    def __init__(self, config: ServeConfig) -> None:
        import torch

        torch.set_num_threads(config.threads)
        replica = serve.get_replica_context().replica_id.unique_id
        self.shard = shard_path(config.audit, f"r-{replica}")
        self.guard = load_guard(config.model, config.policies, str(self.shard))
        self.config = config
        self.service = _BatchingService(self.guard, config.model_id, max_queue=config.max_queue)

    def __serve_build_asgi_app__(self) -> Any:
        from featureguard.integrations.server import create_app

        app = create_app(self.service, api_key=self.config.api_key)
        app.add_middleware(_LeaveRequestIdToServe)
        return app

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.close()
            self.guard.detach()  # closes the shard


@serve.deployment(num_replicas=1)
class AnchorDeployment:
    """The shard set's one anchor writer."""

    def __init__(self, audit: str, interval: float) -> None:
        self.writer = AnchorWriter(audit)
        self.writer.start(interval)

    def anchor(self) -> dict[str, int]:
        """Anchor now; records per shard as anchored."""
        return {name: head.records for name, head in self.writer.anchor().items()}

    def __del__(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()


def make_config(
    model: str | os.PathLike[str],
    policies: str | os.PathLike[str],
    *,
    audit: str | os.PathLike[str] | None = None,
    model_id: str | None = None,
    **options: Any,
) -> ServeConfig:
    """A ServeConfig with absolute paths; the audit set defaults to the policy file's
    `audit.path`."""
    audit = audit if audit is not None else load_policies(policies).audit.path
    return ServeConfig(model=str(Path(model).resolve()), policies=str(Path(policies).resolve()),
                       audit=str(Path(audit).resolve()), model_id=model_id or Path(model).name,
                       **options)  # fmt: skip


def deploy(
    config: ServeConfig,
    *,
    replicas: int = 2,
    host: str = "127.0.0.1",
    port: int = 8000,
    anchor_interval: float = 2.0,
    replica_cpus: float = 1.0,
) -> Any:
    """Start Serve's HTTP proxy on `host:port`, then the anchor writer and `replicas` guarded
    replicas (Ray must be initialised); returns the guarded app's handle."""
    serve.start(http_options={"host": host, "port": port})
    anchors = AnchorDeployment.options(ray_actor_options={"num_cpus": 0})
    serve.run(anchors.bind(config.audit, anchor_interval), name=ANCHOR_APP, route_prefix=None)
    guarded = GuardedDeployment.options(
        num_replicas=replicas,
        max_ongoing_requests=4 * MAX_BATCH_SIZE,
        ray_actor_options={"num_cpus": replica_cpus},
    )
    return serve.run(guarded.bind(config), name=APP, route_prefix="/")


def shutdown() -> None:
    """Delete the guarded replicas first, then the anchor writer (its last anchor then covers
    every record they wrote), then Serve."""
    serve.delete(APP)
    serve.delete(ANCHOR_APP)
    serve.shutdown()

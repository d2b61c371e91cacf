"""`featureguard serve`: load a model, wrap it, serve it (imports FastAPI only when run)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from featureguard.demo import assets
from featureguard.errors import FeatureguardError
from featureguard.guard import AuditTarget

DEFAULT_POLICIES = assets.POLICY_DIR / "unsafe-code.yaml"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a guarded model over an OpenAI-compatible HTTP API")
    p.add_argument("--model", default=str(assets.MODEL_DIR),
                   help="a transformers model folder (default: the demo model)")  # fmt: skip
    p.add_argument("--policies", default=str(DEFAULT_POLICIES),
                   help="a policy YAML file (default: the demo's unsafe-code policy)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", help="require `Authorization: Bearer KEY` (default: $FEATUREGUARD_API_KEY)"
    )
    p.add_argument("--audit", help="audit log path (default: the policy file's audit.path)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="requests that may wait; then the server answers 503")  # fmt: skip
    p.add_argument("--model-id", help="the model's name in the API (default: the folder's name)")
    p.add_argument("--ray", action="store_true",
                   help="replicas on Ray Serve (extra `ray`); audit shards, anchors")  # fmt: skip
    p.add_argument("--replicas", type=int, default=2, help="with --ray: replicas (default 2)")
    p.add_argument("--ray-address", help="with --ray: a Ray cluster (default: $RAY_ADDRESS, "
                   "else a local Ray)")  # fmt: skip
    p.set_defaults(func=_serve)


def load_guard(model: str, policies: str, audit: AuditTarget | None) -> Any:
    """The model folder `model`, loaded and wrapped in `policies` (OpenTelemetry from the
    environment); what each server process or replica holds."""
    from featureguard.demo.assets import load_model
    from featureguard.guard import wrap
    from featureguard.integrations.otel import instrument_from_env

    if not (Path(model) / "config.json").is_file():
        raise FeatureguardError(
            f"--model {model}: not a transformers model folder (no config.json)"
        )
    loaded, tokenizer = load_model(model)
    guard = wrap(loaded, policies, tokenizer=tokenizer, audit=audit)
    instrument_from_env(guard)
    return guard


def build(args: argparse.Namespace) -> Any:
    """The app `featureguard serve` runs, from its parsed arguments."""
    from featureguard.integrations.server import GuardedService, create_app

    guard = load_guard(args.model, args.policies, args.audit)
    service = GuardedService(
        guard, args.model_id or Path(args.model).name, max_queue=args.max_queue
    )
    return create_app(service, api_key=args.api_key or os.environ.get("FEATUREGUARD_API_KEY"))


def _serve(args: argparse.Namespace) -> int:
    if args.ray:
        from featureguard.integrations.ray.command import serve_on_ray

        return serve_on_ray(args)
    try:
        import uvicorn
    except ImportError as exc:
        raise FeatureguardError("serve needs uvicorn: pip install 'featureguard[server]'") from exc

    app = build(args)
    print(
        f"featureguard: serving {args.model} under {args.policies} on http://{args.host}:{args.port}"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0

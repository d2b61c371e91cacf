"""`featureguard serve --ray` and `featureguard scan`: the Ray entry points of the command line
(Ray is imported only when one of them runs)."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from featureguard.errors import FeatureguardError


def serve_on_ray(args: argparse.Namespace) -> int:
    """Run `featureguard serve` as `args.replicas` Ray Serve replicas until interrupted."""
    from featureguard.integrations.ray._ray import ensure_ray

    if args.replicas < 1:
        raise FeatureguardError(f"--replicas {args.replicas}: expected at least 1")
    ensure_ray("featureguard serve --ray", num_cpus=args.replicas + 1, address=args.ray_address)
    from featureguard.integrations.ray import serve as ray_serve

    config = ray_serve.make_config(
        args.model, args.policies, audit=args.audit, model_id=args.model_id,
        api_key=args.api_key or os.environ.get("FEATUREGUARD_API_KEY"), max_queue=args.max_queue,
    )  # fmt: skip
    ray_serve.deploy(config, replicas=args.replicas, host=args.host, port=args.port)
    print(f"featureguard: {args.replicas} replica(s) of {args.model} under {args.policies} on "
          f"http://{args.host}:{args.port}; audit shards next to {config.audit}")  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.shutdown()
    return 0


def _scan(args: argparse.Namespace) -> int:
    from featureguard.integrations.ray.data import scan

    summary = scan(args.input, args.policies, args.output, model=args.model,
                   workers=args.workers, batch_size=args.batch_size,
                   text_column=args.text_column, trace=args.trace,
                   address=args.ray_address)  # fmt: skip
    print(f"featureguard: scanned {summary.rows:,} row(s), {summary.flagged:,} flagged; "
          f"results in {summary.output / 'results'}")  # fmt: skip
    return 0


def add_scan_parser(sub: Any) -> None:
    """`featureguard scan INPUT --policies FILE --output DIR`."""
    from featureguard.demo import assets

    p = sub.add_parser("scan", help="score a JSONL/Parquet corpus on Ray Data (extra `ray`)")
    p.add_argument("input", help="JSON Lines (.jsonl) or Parquet (.parquet or a folder)")
    p.add_argument("--policies", required=True, help="a policy YAML file")
    p.add_argument("--output", required=True, help="a new folder for results, audit, traces")
    p.add_argument("--model", default=str(assets.MODEL_DIR),
                   help="a transformers model folder (default: the demo model)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="scoring actors (default 1)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per batch (default 16)")
    p.add_argument("--text-column", default="text", help="the column holding the text")
    p.add_argument("--trace", action="store_true",
                   help="also write traces/<actor>/ for `featureguard audit replay`")  # fmt: skip
    p.add_argument("--ray-address", help="a Ray cluster (default: $RAY_ADDRESS, else local)")
    p.set_defaults(func=_scan)

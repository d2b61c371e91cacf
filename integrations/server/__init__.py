"""An OpenAI-compatible guarded server (extra `server`: FastAPI and uvicorn).

    featureguard serve --model models/demo-coder --policies policies/demo/unsafe-code.yaml

`create_app(GuardedService(guard, model_id))` builds the same app for embedding or tests.
Importing this package is cheap; FastAPI is imported with the first of these names used.
"""

from typing import Any

__all__ = ["GuardedService", "QueueFull", "Sampling", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from featureguard.integrations.server.app import create_app

        return create_app
    if name in ("GuardedService", "QueueFull", "Sampling"):
        from featureguard.integrations.server import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

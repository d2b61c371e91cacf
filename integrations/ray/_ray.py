"""Importing Ray with a clear message, and starting a local Ray that finds this package."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from featureguard.errors import FeatureguardError

INSTALL_HINT = "pip install 'featureguard[ray]'"


def import_ray(what: str) -> ModuleType:
    """The `ray` module; FeatureguardError naming the extra when it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise FeatureguardError(f"{what} needs the ray extra: {INSTALL_HINT}") from exc
    return ray


def runtime_env() -> dict[str, Any]:
    """Environment for Ray workers on this machine: the driver's import path, so that workers
    import the same featureguard as the driver (a source checkout as well as an install)."""
    paths = [p for p in sys.path if p and Path(p).is_dir()]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


def ensure_ray(what: str, *, num_cpus: int | None = None, address: str | None = None) -> ModuleType:
    """Ray, connected: to `address` (or $RAY_ADDRESS) when given, else a local Ray on loopback."""
    ray = import_ray(what)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"runtime_env": runtime_env(), "include_dashboard": False}
        if address or os.environ.get("RAY_ADDRESS"):
            kwargs["address"] = address or os.environ["RAY_ADDRESS"]
        else:
            kwargs |= {"num_cpus": num_cpus, "_node_ip_address": "127.0.0.1"}
        ray.init(**kwargs)
    return ray

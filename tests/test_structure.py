"""The package's shape: layers import only downwards, and the public API is exactly `__all__`."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import featureguard

PACKAGE = Path(featureguard.__file__).parent

# What each layer may import from featureguard (besides itself). Lower layers never import
# higher ones; policy/ and audit/ stay free of torch so they load anywhere.
ALLOWED = {
    "errors": set(),
    "sae": {"errors"},
    "hooks": {"errors"},
    "policy": {"errors"},
    "audit": {"errors"},
    "engine": {"errors", "sae", "hooks", "policy"},
    "outcomes": {"errors", "sae", "hooks", "policy", "engine", "audit"},
    "streaming": {"errors", "guard"},  # guard only for type hints (TYPE_CHECKING)
    "guard": {"errors", "sae", "hooks", "policy", "engine", "audit", "outcomes", "streaming"},
}
NO_TORCH = {"policy", "audit", "errors"}


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_layers_import_only_downwards() -> None:
    """No module imports a featureguard layer above its own."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        layer = _layer(path)
        if layer not in ALLOWED:  # cli, __init__, __main__: the top
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "featureguard" and len(parts) > 1:
                target = parts[1]
                if target != layer and target not in ALLOWED[layer]:
                    bad.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert bad == []


def test_policy_and_audit_do_not_import_torch() -> None:
    """policy/, audit/ and errors never import torch."""
    bad = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if _layer(path) in NO_TORCH and any(n.split(".")[0] == "torch" for n in _imports(path))
    ]
    assert bad == []


def test_all_equals_public_exports() -> None:
    """`featureguard.__all__` lists exactly the public names the package exposes."""
    public = {
        name
        for name, value in vars(featureguard).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(featureguard.__all__)


def test_every_exported_exception_belongs_to_our_trees() -> None:
    """Each exported error derives from FeatureguardError, each warning from FeatureguardWarning."""
    for name in featureguard.__all__:
        value = getattr(featureguard, name)
        if isinstance(value, type) and issubclass(value, Warning):
            assert issubclass(value, featureguard.FeatureguardWarning), name
        elif isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, featureguard.FeatureguardError), name

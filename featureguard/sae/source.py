"""The only module that talks to the Hugging Face Hub: `hf://org/repo[@revision]/sub/path`.

It fetches just the named sub-folder (or file) into the hub cache, honouring HF_HOME,
HF_HUB_CACHE and HF_HUB_OFFLINE, and returns the local path; loading then happens from disk.
"""

from __future__ import annotations

from pathlib import Path

from featureguard.errors import SAELoadError

PREFIX = "hf://"


def is_hub_ref(ref: str) -> bool:
    return ref.startswith(PREFIX)


def parse_hub_ref(ref: str) -> tuple[str, str | None, str]:
    """`hf://org/repo@rev/sub/path` -> ("org/repo", "rev", "sub/path")."""
    parts = ref[len(PREFIX) :].strip("/").split("/")
    repo, _, revision = parts[1].partition("@") if len(parts) >= 2 else ("", "", "")
    sub = [p for p in parts[2:] if p]  # "a//b/" is a/b
    if not (parts[0] and repo) or {".", ".."} & {*sub, parts[0], repo}:
        raise SAELoadError(f"{ref}: expected hf://org/repo[@revision]/sub/path")
    return f"{parts[0]}/{repo}", revision or None, "/".join(sub)


def fetch(ref: str) -> Path:
    """Local path of the files behind `ref`, downloaded into the hub cache if needed."""
    repo_id, revision, sub = parse_hub_ref(ref)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise SAELoadError("hf:// references need the huggingface_hub package") from exc
    patterns = [sub, f"{sub}/*"] if sub else None
    try:
        root = snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except LocalEntryNotFoundError as exc:
        include = f" --include '{sub}/*'" if sub else ""
        raise SAELoadError(
            f"{ref}: not in the local Hugging Face cache and the Hub cannot be reached "
            f"(offline?). Download it ahead of time on a connected machine with "
            f"`hf download {repo_id}{include}` (same HF_HOME), or pass a local path."
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise SAELoadError(f"{ref}: cannot fetch from the Hugging Face Hub: {exc}") from exc
    except Exception as exc:  # the HTTP stack's own errors (proxies, TLS) are not OSErrors
        raise SAELoadError(f"{ref}: cannot fetch from the Hugging Face Hub: {exc!r}") from exc
    path = Path(root) / sub
    if not path.exists():
        raise SAELoadError(f"{ref}: the repository {repo_id} has no {sub!r}")
    return path

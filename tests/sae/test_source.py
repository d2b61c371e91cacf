"""hf:// references: parsing, and loading from the Hugging Face cache with the Hub unreachable.

No test touches the network: every one runs with HF_HUB_OFFLINE=1 and a cache in tmp_path.
huggingface_hub reads its environment once, at import, into `huggingface_hub.constants`, so the
`offline_hub` fixture sets both the environment and those constants (the library's, never ours).
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from featureguard.errors import SAELoadError
from featureguard.sae import load_sae
from featureguard.sae.source import fetch, is_hub_ref, parse_hub_ref

REPO, SUB, COMMIT = "some-org/some-saes", "blocks.8.hook_resid_pre/width_40", "c0ffee" * 6 + "c0fe"


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache in tmp_path, with the Hub switched off; returns the cache folder."""
    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(cache.parent))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


# ---- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("hf://org/repo", ("org/repo", None, "")),
        ("hf://org/repo/", ("org/repo", None, "")),
        ("hf://org/repo/sub/path", ("org/repo", None, "sub/path")),
        ("hf://org/repo@v1.2/sub", ("org/repo", "v1.2", "sub")),
        ("hf://org/repo@" + "a" * 40, ("org/repo", "a" * 40, "")),
        ("hf://org/repo@/sub", ("org/repo", None, "sub")),
        ("hf://org/repo/a//b/", ("org/repo", None, "a/b")),
        ("hf://google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71",
         ("google/gemma-scope-2b-pt-res", None, "layer_20/width_16k/average_l0_71")),
    ],
)  # fmt: skip
def test_parse_hub_ref(ref: str, parsed: tuple) -> None:
    """hf://org/repo[@revision]/sub/path splits into repo id, revision and sub-path."""
    assert parse_hub_ref(ref) == parsed


@pytest.mark.parametrize(
    "ref",
    ["hf://", "hf://org", "hf://org/", "hf:///repo", "hf://org//sub", "hf://org/@rev/sub",
     "hf://org/repo/../../etc", "hf://org/repo/./sub", "hf://../repo/sub"],
)  # fmt: skip
def test_parse_hub_ref_refuses(ref: str) -> None:
    """A reference without org and repo, or with . or .. segments, raises SAELoadError."""
    with pytest.raises(SAELoadError, match=r"expected hf://org/repo"):
        parse_hub_ref(ref)


@pytest.mark.parametrize(("ref", "hub"), [("hf://a/b", True), ("./hf://a", False), ("a/b", False)])
def test_is_hub_ref(ref: str, hub: bool) -> None:
    """Only strings starting with hf:// are hub references."""
    assert is_hub_ref(ref) is hub


# ---- offline cache ------------------------------------------------------------------------------
def test_offline_without_cache_says_how_to_download(offline_hub: Path) -> None:
    """Offline with an empty cache: SAELoadError naming the ref and the download command."""
    with pytest.raises(SAELoadError) as err:
        load_sae(f"hf://{REPO}/{SUB}")
    message = str(err.value)
    assert f"hf://{REPO}/{SUB}" in message
    assert "ahead of time" in message
    assert f"hf download {REPO} --include '{SUB}/*'" in message


def test_offline_loads_from_a_populated_cache(offline_hub: Path, sae_fx) -> None:
    """A folder placed in the hub cache (refs/main, snapshots, blobs) loads offline."""
    written = sae_fx.write_hub_cache(offline_hub, REPO, SUB, "v6-jumprelu", commit=COMMIT)
    sae = load_sae(f"hf://{REPO}/{SUB}")
    assert sae.cfg.source == f"hf://{REPO}/{SUB}"
    assert torch.equal(sae.W_enc, written.tensors["W_enc"])
    assert torch.equal(sae.threshold, written.tensors["threshold"])


def test_offline_cache_is_read_through_snapshot_links(offline_hub: Path, sae_fx) -> None:
    """The cached files are the hub's symlinks into blobs/, so the cache layout is the real one."""
    written = sae_fx.write_hub_cache(offline_hub, REPO, SUB, "v6-standard", commit=COMMIT)
    assert written.weights.is_symlink()
    assert written.weights.resolve().parent.name == "blobs"
    assert load_sae(f"hf://{REPO}/{SUB}").d_sae == sae_fx.D_SAE


def test_offline_cache_with_commit_revision(offline_hub: Path, sae_fx) -> None:
    """hf://org/repo@<commit>/sub resolves straight to that snapshot, offline."""
    sae_fx.write_hub_cache(offline_hub, REPO, SUB, "v6-topk", commit=COMMIT)
    assert load_sae(f"hf://{REPO}@{COMMIT}/{SUB}").cfg.architecture == "topk"


def test_offline_partial_load_from_cache(offline_hub: Path, sae_fx) -> None:
    """features= works on a cached hub SAE as on a local folder."""
    written = sae_fx.write_hub_cache(offline_hub, REPO, SUB, "v6-gated", commit=COMMIT)
    sae = load_sae(f"hf://{REPO}/{SUB}", features=[30, 4])
    assert torch.equal(sae.W_dec, written.tensors["W_dec"][[30, 4]])


def test_offline_missing_sub_folder(offline_hub: Path, sae_fx) -> None:
    """A cached repo without the named sub-folder raises SAELoadError naming it."""
    sae_fx.write_hub_cache(offline_hub, REPO, SUB, "v6-standard", commit=COMMIT)
    with pytest.raises(SAELoadError, match=r"has no 'blocks\.9\.hook_resid_pre'"):
        load_sae(f"hf://{REPO}/blocks.9.hook_resid_pre")


def test_offline_unknown_revision(offline_hub: Path, sae_fx) -> None:
    """A revision that is not in the cache is reported as not downloaded, not a traceback."""
    sae_fx.write_hub_cache(offline_hub, REPO, SUB, "v6-standard", commit=COMMIT)
    with pytest.raises(SAELoadError, match="ahead of time"):
        load_sae(f"hf://{REPO}@v9/{SUB}")


def test_invalid_repo_id(offline_hub: Path) -> None:
    """A repo id the Hub cannot hold raises SAELoadError."""
    with pytest.raises(SAELoadError, match="bad repo!"):
        load_sae("hf://org/bad repo!/sub")


@pytest.mark.parametrize("revision", [None, COMMIT, "v1.2"])
def test_fetch_asks_only_for_the_named_folder_at_the_pinned_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, revision: str | None
) -> None:
    """The Hub is asked for the policy's sub-folder only (allow_patterns), at its revision."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs))
        (tmp_path / SUB).mkdir(parents=True, exist_ok=True)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    pin = f"@{revision}" if revision else ""
    assert fetch(f"hf://{REPO}{pin}/{SUB}") == tmp_path / SUB
    assert calls == [(REPO, {"revision": revision, "allow_patterns": [SUB, f"{SUB}/*"]})]

"""`featureguard run`: one guarded prompt from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tiny_world as tw
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from featureguard.cli import main

world = tw.world_fixture()

PROMPT = tw.PROMPTS[3]


@dataclass
class Saved:
    """A model folder as `featureguard run` loads it, and an SAE aimed at a token of its reply."""

    folder: Path
    reply: str  # the unwrapped greedy reply to PROMPT (8 tokens), as the folder's tokenizer reads
    target: tw.Aim  # for qwen2 AutoTokenizer is not the char tokenizer: aim at what `run` sees
    token: str  # the aimed token's text


_SAVED: dict[str, Saved] = {}


@pytest.fixture
def saved(world: tw.World, tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """The world's model and tokenizer saved with save_pretrained (once per architecture)."""
    if world.arch not in _SAVED:
        folder = tmp_path_factory.mktemp(f"model-{world.arch}")
        world.model.save_pretrained(folder)
        world.tokenizer.save_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        enc = tok([PROMPT], return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=8, do_sample=False)
        n = enc["input_ids"].shape[1]
        real = tw.real_tokens(ids)
        candidates = [(0, p) for p in range(n, ids.shape[1]) if real[0, p]]
        target = tw.aim(model, world.hook, ids, torch.ones_like(ids), candidates,
                        folder / "sae")  # fmt: skip
        reply = tok.decode(ids[0, n:], skip_special_tokens=True)
        token = tok.decode([int(ids[0, target.position])])
        _SAVED[world.arch] = Saved(folder, reply, target, token)
    return _SAVED[world.arch]


def policy(world: tw.World, tmp_path: Path, saved: Saved, **kw: Any) -> Path:
    doc = tw.policy_doc(world, tmp_path, **{"threshold": saved.target.threshold, **kw})
    doc["saes"]["s"]["path"] = str(saved.target.sae_dir)
    return tw.write_yaml(doc, tmp_path / "p.yaml")


def run(saved: Saved, policies: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["run", "--model", str(saved.folder), "--policies", str(policies),
                 "--prompt", PROMPT, "--max-new-tokens", "8"])  # fmt: skip
    return code, capsys.readouterr().out.splitlines()


def test_run_prints_reply_and_trigger(world: tw.World, tmp_path: Path, saved: Saved,
                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`run` prints the reply and the policy that fired on which token, and exits 0."""
    code, lines = run(saved, policy(world, tmp_path, saved), capsys)
    index, token = saved.target.position, saved.token
    assert code == 0
    assert lines[:2] == [saved.reply, "---"]
    assert lines[2].startswith(f"watch (log) on reply token {index} {token!r}: score ")
    assert lines[3:] == [f"audit log: {tmp_path / 'audit.jsonl'}"]


def test_run_prints_block_message(world: tw.World, tmp_path: Path, saved: Saved,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`run` under a block prints the policy's message and which policy blocked, and exits 0."""
    code, lines = run(saved, policy(world, tmp_path, saved, action="block", message="no."), capsys)
    assert code == 0
    assert lines[:3] == ["no.", "---", "blocked by watch"]


def test_run_without_trigger(world: tw.World, tmp_path: Path, saved: Saved,
                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`run` says when no policy triggered."""
    code, lines = run(saved, policy(world, tmp_path, saved, threshold=1e6), capsys)
    assert code == 0
    assert lines[2] == "no policy triggered"


def test_run_bad_policy_exits_2(world: tw.World, tmp_path: Path, saved: Saved,
                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A policy naming a feature the SAE lacks: the located problem on stderr, exit code 2."""
    policies = policy(world, tmp_path, saved, features=[{"index": 99}])
    code = main(["run", "--model", str(saved.folder), "--policies", str(policies), "--prompt", "x"])
    err = capsys.readouterr().err
    assert code == 2
    assert "featureguard: error: 1 problem in policy file:" in err and "Traceback" not in err
    assert f"{policies}:" in err and "feature index 99 >= d_sae 12" in err

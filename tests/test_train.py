"""The SAE trainer: recovery of a known dictionary, the scale fold, saving, and collection."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import tiny_world
import torch

from featureguard.errors import FeatureguardError
from featureguard.sae import SAE, SAEConfig, load_sae
from featureguard.train import (
    SAETrainConfig,
    TrainReport,
    _losses,
    collect_activations,
    measure,
    save_saelens,
    train_sae,
)

D, ATOMS, N = 16, 32, 20_000
CFG = SAETrainConfig(width=64, k=4, batch_size=256, epochs=5, lr=1e-2, dead_after_tokens=2048,
                     eval_tokens=2000)  # fmt: skip
SMALL = SAETrainConfig(width=64, k=4, batch_size=256, epochs=2, lr=1e-2, dead_after_tokens=512)
HOOK = "blocks.1.hook_resid_post"


def sparse_data(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x = 2-3 of ATOMS unit directions with coefficients in [0.5, 1.5], small noise, an offset."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(ATOMS, D, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.rand(n, ATOMS, generator=g).argsort(1)[:, :3]  # [n, 3] distinct atoms
    used = torch.arange(3) < torch.randint(2, 4, (n, 1), generator=g)  # 2 or 3 of them
    coef = (torch.rand(n, 3, generator=g) + 0.5) * used
    x = torch.einsum("na,nad->nd", coef, atoms[idx]) + 0.01 * torch.randn(n, D, generator=g)
    return x + 1.0, atoms


@pytest.fixture(scope="module")
def trained() -> tuple[torch.Tensor, torch.Tensor, SAE, TrainReport]:
    x, atoms = sparse_data()
    sae, report = train_sae(x, CFG, progress=False)
    return x, atoms, sae, report


def plain_metrics(sae: SAE, x: torch.Tensor) -> tuple[float, float, float]:
    """L0, variance explained and dead fraction, computed in one go in float64."""
    f = sae.encode(x)
    err = (x - sae.decode(f)).double().pow(2).sum()
    var = (x.double() - x.double().mean(0)).pow(2).sum()
    return (
        float((f > 0).sum(1).double().mean()),
        float(1 - err / var),
        float(((f > 0).sum(0) == 0).double().mean()),
    )


def test_training_recovers_a_known_sparse_dictionary(trained) -> None:
    """On data sparse in a known dictionary, the atoms become decoder rows and VE exceeds 0.9."""
    _, atoms, sae, report = trained
    rows = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    best = (atoms @ rows.T).max(dim=1).values  # [ATOMS] cosine of each atom's nearest row
    assert int((best > 0.9).sum()) >= 28 and float(best.mean()) > 0.95
    assert report.variance_explained > 0.9
    assert report.l0 == pytest.approx(CFG.k, abs=0.01)  # ReLU may zero a 4th of 2-3 atoms
    assert report.tokens == (N - CFG.eval_tokens) * CFG.epochs


def test_report_is_measured_on_the_held_out_rows(trained) -> None:
    """The report's L0, VE and dead fraction are those of the last eval_tokens rows."""
    x, _, sae, report = trained
    held = x[-CFG.eval_tokens :]
    l0, ve, dead = plain_metrics(sae, held)
    assert (report.l0, report.variance_explained, report.dead_fraction) == pytest.approx(
        (l0, ve, dead), abs=1e-5
    )
    assert report.scale == pytest.approx(
        1 / float(x[: -CFG.eval_tokens].norm(dim=1).mean()), rel=1e-5
    )


def test_measure_counts_latents_that_cannot_fire() -> None:
    """Latents whose pre-activation is always negative count as dead; L0 counts positives only."""
    cfg = SAEConfig(format="saelens", architecture="topk", d_in=4, d_sae=8, k=3)
    W_enc = torch.cat([torch.eye(4), torch.zeros(4, 4)], dim=1)  # latents 4..7 read nothing
    b_enc = torch.tensor([0.0, 0, 0, 0, -1, -1, -1, -1])
    sae = SAE(cfg, W_enc=W_enc, b_enc=b_enc, W_dec=W_enc.T.clone(), b_dec=torch.zeros(4))
    x = torch.tensor([[1.0, 2, 0, 0], [0, 1, 3, 0], [2, 0, 0, 0]])  # latent 3 never fires either
    m = measure(sae, x)
    assert m.dead_fraction == 5 / 8
    assert m.l0 == pytest.approx(5 / 3)
    assert m.variance_explained == pytest.approx(plain_metrics(sae, x)[1])


def test_losses_match_a_plain_implementation() -> None:
    """Main FVU plus AuxK (top aux_k dead latents fit the residual, weight aux_coef) per row."""
    g = torch.Generator().manual_seed(3)
    cfg = SAETrainConfig(width=12, k=3, aux_k=2, aux_coef=0.5)
    shapes = {"W_enc": (5, 12), "b_enc": (12,), "W_dec": (12, 5), "b_dec": (5,)}
    p = {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}
    xb, dead = torch.randn(7, 5, generator=g), torch.zeros(12, dtype=torch.bool)
    dead[[1, 4, 9]] = True
    loss, _ = _losses(p, xb, dead, cfg)
    main = aux = res_sq = 0.0
    for x in xb:
        pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        keep = sorted(range(12), key=lambda i: -float(pre[i]))[:3]
        x_hat = sum(max(float(pre[i]), 0) * p["W_dec"][i] for i in keep) + p["b_dec"]
        r = x - x_hat
        main += float(r.pow(2).sum())
        dead_top = sorted([1, 4, 9], key=lambda i: -float(pre[i]))[:2]
        r_hat = sum(max(float(pre[i]), 0) * p["W_dec"][i] for i in dead_top)
        aux += float((r - r_hat).pow(2).sum())
        res_sq += float(r.pow(2).sum())
    expected = main / float((xb - xb.mean(0)).pow(2).sum()) + 0.5 * aux / res_sq
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_the_fold_makes_the_sae_work_on_raw_activations() -> None:
    """Training on 2x gives the same features on 2x and twice the reconstruction: s is folded."""
    x = sparse_data(4000)[0]
    sae, report = train_sae(x, SMALL, progress=False)
    sae2, report2 = train_sae(2 * x, SMALL, progress=False)
    assert report2.scale == pytest.approx(report.scale / 2)
    f = sae.encode(x)
    assert (f > 0).any()
    torch.testing.assert_close(sae2.encode(2 * x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae2.decode(f), 2 * sae.decode(f), atol=1e-5, rtol=1e-5)
    assert sae.cfg.normalization.kind == "none"


def test_same_seed_gives_identical_weights() -> None:
    """Two runs with one seed are bit-identical; another seed differs."""
    x = sparse_data(4000)[0]
    one, again = (train_sae(x, SMALL, progress=False)[0] for _ in range(2))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(again, name), getattr(one, name)), name
    other, _ = train_sae(x, replace(SMALL, seed=1), progress=False)
    assert not torch.equal(other.W_dec, one.W_dec)


def test_saved_folder_loads_through_the_users_loader(trained, tmp_path: Path) -> None:
    """save_saelens then load_sae: same config, same maths on raw activations, same VE."""
    x, _, sae, report = trained
    folder = save_saelens(sae, tmp_path / "sae", hook=HOOK, model_name="tiny",
                          extra={"context_size": 256})  # fmt: skip
    loaded = load_sae(folder)
    c = loaded.cfg
    assert (c.format, c.architecture, c.k, c.hook, c.model_name) == ("saelens", "topk", 4, HOOK,
                                                                      "tiny")  # fmt: skip
    xs = x[:1000]
    torch.testing.assert_close(loaded.encode(xs), sae.encode(xs), atol=1e-5, rtol=1e-5)
    f = sae.encode(xs)
    torch.testing.assert_close(loaded.decode(f), sae.decode(f), atol=1e-5, rtol=1e-5)
    held = x[-CFG.eval_tokens :]
    assert measure(loaded, held).variance_explained == pytest.approx(report.variance_explained,
                                                                     abs=1e-5)  # fmt: skip
    torch.testing.assert_close(loaded.log_sparsity, sae.log_sparsity)
    raw = json.loads((folder / "cfg.json").read_text())
    assert raw["normalize_activations"] == "none" and raw["metadata"]["context_size"] == 256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temp folder left


def test_save_replaces_an_saelens_folder_but_not_a_foreign_one(trained, tmp_path: Path) -> None:
    """Saving twice replaces the first save; a folder of other files is left alone."""
    _, _, sae, _ = trained
    folder = tmp_path / "sae"
    save_saelens(sae, folder, hook=HOOK, model_name=None)
    save_saelens(sae, folder, hook="blocks.0.hook_resid_post", model_name=None)
    assert load_sae(folder).cfg.hook == "blocks.0.hook_resid_post"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(FeatureguardError, match="not an SAELens folder"):
        save_saelens(sae, foreign, hook=HOOK, model_name=None)
    assert (foreign / "todo.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    tok = tiny_world.char_tokenizer()
    return tiny_world.tiny_model("llama", len(tok)), tok


TEXTS = ["<bos>def f(x):\n    return x", "a = 1<eos>", "<bos>hello", "import os", "b"]


def direct(model: torch.nn.Module, tok: object, texts: list[str]) -> torch.Tensor:
    """Activations after layer 1 by a plain forward hook, one text at a time, specials dropped."""
    out: list[torch.Tensor] = []
    layer = model.model.layers[1]
    handle = layer.register_forward_hook(
        lambda m, a, o: out.append((o[0] if isinstance(o, tuple) else o)[0])
    )
    rows = []
    try:
        with torch.no_grad():
            for text in texts:
                ids = torch.tensor([tok(text)["input_ids"]])
                model(input_ids=ids)
                rows.append(out.pop()[~torch.isin(ids[0], torch.tensor([0, 1, 2]))])
    finally:
        handle.remove()
    return torch.cat(rows)


def test_collect_equals_a_direct_hook_without_padding_or_specials(tiny) -> None:
    """Batched, padded collection gives each real token's activation as if run alone."""
    model, tok = tiny
    got = collect_activations(model, tok, TEXTS, HOOK, max_tokens=10_000, batch_size=2,
                              progress=False)  # fmt: skip
    want = direct(model, tok, TEXTS)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    kept = collect_activations(model, tok, TEXTS, HOOK, max_tokens=10_000, skip_special=False,
                               progress=False)  # fmt: skip
    assert len(kept) == len(want) + 3  # two <bos>, one <eos>


def test_collect_stops_at_max_tokens_and_leaves_the_model_as_it_was(tiny) -> None:
    """max_tokens cuts the stream; the model's mode comes back and no hook is left behind."""
    model, tok = tiny
    model.train()
    try:
        got = collect_activations(model, tok, TEXTS, HOOK, max_tokens=7, batch_size=1,
                                  progress=False)  # fmt: skip
        assert model.training
    finally:
        model.eval()
    assert not model.model.layers[1]._forward_hooks
    torch.testing.assert_close(got, direct(model, tok, TEXTS)[:7], atol=1e-5, rtol=1e-5)


def test_progress_is_shown_and_can_be_disabled(tiny, capsys, monkeypatch) -> None:
    """A progress bar goes to stderr (tqdm, or a plain line without it); progress=False is quiet."""
    model, tok = tiny
    x, _ = sparse_data(3000)
    cfg = SAETrainConfig(width=16, k=2, batch_size=512, epochs=1)
    train_sae(x, cfg, progress=False)
    collect_activations(model, tok, TEXTS, HOOK, max_tokens=5, progress=False)
    assert capsys.readouterr() == ("", "")
    train_sae(x, cfg)
    assert "training SAE" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm not installed
    train_sae(x, cfg)
    collect_activations(model, tok, TEXTS, HOOK, max_tokens=5)
    err = capsys.readouterr().err
    assert "training SAE: 6/6 loss=" in err and f"activations at {HOOK}: 5/5" in err


@pytest.mark.parametrize(
    "kw", [{"k": 0}, {"width": 8, "k": 9}, {"lr": -1.0}, {"epochs": 0}, {"aux_k": -1}]
)
def test_bad_config_is_a_featureguard_error(kw: dict) -> None:
    """Each invalid setting raises FeatureguardError naming it."""
    with pytest.raises(FeatureguardError, match="SAETrainConfig"):
        SAETrainConfig(**kw)


@pytest.mark.parametrize(
    "x",
    [torch.zeros(100), torch.zeros(5, 4), torch.full((100, 4), math.nan)],
    ids=["1-D", "too-few", "nan"],
)
def test_bad_activations_are_a_featureguard_error(x: torch.Tensor) -> None:
    """1-D, too few (no held-out row) or non-finite activations are refused."""
    with pytest.raises(FeatureguardError, match="finite activations"):
        train_sae(x, SAETrainConfig(width=8, k=2), progress=False)

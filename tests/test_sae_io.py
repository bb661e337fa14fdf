"""Saving and loading SAEs strictly; SAELens export."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conceptedit.errors import ArtifactError, ConfigError
from conceptedit.sae import (
    SAE_ARCHITECTURES,
    SAETrainer,
    TrainConfig,
    create_sae,
    export_saelens,
    load_sae,
    save_sae,
)
from conceptedit.sae.io import SAEConfigError, SAEShapeError
from conceptedit.sae.synthetic import planted_sparse_data

D, WIDTH = 16, 40


def small(arch: str):
    names = SAE_ARCHITECTURES[arch].hparam_names()
    kw = {"k": 3} if "k" in names else {}
    if "n_archetypes" in names:
        kw["n_archetypes"] = 32
    x = planted_sparse_data(2048, D, 20, 3, seed=3)[0] * 4
    cfg = TrainConfig(token_budget=128 * 8, batch_size=128, progress=False, init_rows=512, lr=3e-3)
    sae = SAETrainer(create_sae(arch, D, WIDTH, seed=5, **kw), x, cfg).train()
    return sae, x


@pytest.mark.parametrize("arch", sorted(SAE_ARCHITECTURES))
def test_save_load_round_trip_gives_identical_codes(arch, tmp_path) -> None:
    sae, x = small(arch)
    sae.source = {"model": "tiny", "module": "text_model.encoder.layers.1"}
    save_sae(sae, tmp_path / "sae")
    back = load_sae(tmp_path / "sae")
    assert type(back) is type(sae) and back.hparams() == sae.hparams()
    assert float(back.input_scale) == float(sae.input_scale) != 1.0
    assert back.source == sae.source
    a, b = sae.encode(x[:300]), back.encode(x[:300])
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    assert torch.equal(sae.decode(a), back.decode(b))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["d_in"] == D and cfg["width"] == WIDTH


def test_bad_configs_name_what_is_wrong(tmp_path) -> None:
    sae, _ = small("topk")
    path = save_sae(sae, tmp_path / "sae")
    cfg_file = path / "cfg.json"
    good = json.loads(cfg_file.read_text())

    def write(cfg: dict) -> None:
        cfg_file.write_text(json.dumps(cfg))

    write({**good, "colour": "red"})
    with pytest.raises(SAEConfigError, match=r"unknown key\(s\) \['colour'\]; valid keys: .*architecture"):
        load_sae(path)
    write({**good, "hparams": {**good["hparams"], "kk": 3}})
    with pytest.raises(SAEConfigError, match=r"unknown hparam\(s\) \['kk'\].*'k'"):
        load_sae(path)
    write({**good, "architecture": "nope"})
    with pytest.raises(SAEConfigError, match="unknown architecture 'nope'"):
        load_sae(path)
    write({k: v for k, v in good.items() if k != "width"})
    with pytest.raises(SAEConfigError, match="missing key"):
        load_sae(path)
    cfg_file.write_text("{not json")
    with pytest.raises(SAEConfigError, match="not valid JSON"):
        load_sae(path)
    with pytest.raises(ArtifactError, match="not a saved SAE"):
        load_sae(tmp_path / "missing")
    assert issubclass(SAEConfigError, ConfigError)


def test_shape_mismatch_says_which_tensor(tmp_path) -> None:
    sae, _ = small("topk")
    path = save_sae(sae, tmp_path / "sae")
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**cfg, "width": WIDTH * 2}))
    with pytest.raises(SAEShapeError, match=rf"W_dec: file \({WIDTH}, {D}\) vs expected \({2 * WIDTH}, {D}\)"):
        load_sae(path)
    (path / "cfg.json").write_text(json.dumps(cfg))
    state = load_file(str(path / "sae.safetensors"))
    del state["b_enc"]
    state["extra"] = torch.zeros(1)
    save_file(state, str(path / "sae.safetensors"))
    with pytest.raises(SAEShapeError, match=r"missing tensors \['b_enc'\].*unexpected tensors \['extra'\]"):
        load_sae(path)


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk", "mutual_choice", "feature_choice"])
def test_saelens_export_reproduces_our_reconstruction(arch, tmp_path) -> None:
    sae, x = small(arch)
    export_saelens(sae, tmp_path / "sl", model_name="tiny", hook_name="text_model.encoder.layers.1")
    w = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert w["W_enc"].shape == (D, WIDTH) and w["W_dec"].shape == (WIDTH, D)
    pre = (x[:200] - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # SAELens' formulas on raw inputs
    if cfg["architecture"] == "topk":
        v, i = pre.topk(cfg["k"], dim=-1)
        z = torch.zeros_like(pre).scatter_(1, i, torch.relu(v))
    elif cfg["architecture"] == "jumprelu":
        z = torch.relu(pre) * (pre > w["threshold"])
    else:
        assert cfg["architecture"] == "standard"
        z = torch.relu(pre)
    recon = z @ w["W_dec"] + w["b_dec"]
    ours = sae.decode(sae.encode(x[:200])).detach()
    torch.testing.assert_close(recon, ours, rtol=1e-4, atol=1e-4)


def test_export_writes_names_as_strings_or_says_what_to_set(tmp_path) -> None:
    """SAELens crashes on a null hook_name: the export takes the names from the arguments or ``source``,
    and refuses (naming what to set) when neither has them."""
    sae, _ = small("topk")
    sae.source = {"model": None, "module": None}  # what the trainer records for a tensor (no store metadata)
    with pytest.raises(ConfigError, match=r"model_name=.*hook_name=.*sae\.source\['module'\]"):
        export_saelens(sae, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    sae.source = {"model": "shapes", "module": None}
    with pytest.raises(ConfigError, match="hook_name=") as info:
        export_saelens(sae, tmp_path / "b")
    assert "model_name" not in str(info.value)
    sae.source = {"model": "shapes", "module": "text_model.encoder.layers.2"}
    cfg = json.loads((export_saelens(sae, tmp_path / "c") / "cfg.json").read_text())
    assert (cfg["model_name"], cfg["hook_name"]) == ("shapes", "text_model.encoder.layers.2")
    assert cfg["metadata"] == {"model_name": "shapes", "hook_name": "text_model.encoder.layers.2"}
    cfg = json.loads((export_saelens(sae, tmp_path / "d", hook_name="h.3") / "cfg.json").read_text())
    assert cfg["hook_name"] == "h.3" and cfg["metadata"]["hook_name"] == "h.3"


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk"])
def test_export_loads_in_real_saelens(arch, tmp_path) -> None:
    """The export loads with the real ``sae_lens`` package (extra ``saelens``) and reproduces our codes."""
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens not installed (pip install -e '.[saelens]')")
    sae, x = small(arch)
    sae.source = {"model": "shapes", "module": "text_model.encoder.layers.1"}
    path = export_saelens(sae, tmp_path / "sl")
    theirs = sae_lens.SAE.load_from_disk(str(path), device="cpu")
    assert theirs.cfg.metadata.hook_name == "text_model.encoder.layers.1"
    with torch.no_grad():
        recon = theirs.decode(theirs.encode(x[:200]))
    torch.testing.assert_close(recon, sae.decode(sae.encode(x[:200])).detach(), rtol=1e-4, atol=1e-4)


def test_export_refuses_architectures_saelens_lacks(tmp_path) -> None:
    with pytest.raises(ConfigError, match="SAELens has no 'mp'"):
        export_saelens(create_sae("mp", D, WIDTH), tmp_path)
    with pytest.raises(ConfigError, match="no learned inference threshold"):
        export_saelens(create_sae("batchtopk", D, WIDTH), tmp_path, model_name="m", hook_name="h")

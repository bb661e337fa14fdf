"""The blind-spot analysis: energy statistics on synthetic codes with planted shifts, the report schema,
memorisation flags, naming, and bad inputs (plugins/blindspots.py and its helpers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptedit.errors import ConceptEditError
from conceptedit.plugins._blindspots_report import check_schema, write_report
from conceptedit.plugins._blindspots_stats import (
    benjamini_hochberg,
    concept_stats,
    label_concepts,
    label_correlations,
    memorisation_flags,
)


def _energies(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sparse non-negative per-image energies: each concept present in ~40 % of images."""
    return rng.gamma(2.0, 1.0, (n, k)) * (rng.random((n, k)) < 0.4)


def test_planted_shifts_are_found_with_the_right_sign():
    rng = np.random.default_rng(0)
    n, k = 200, 60
    real = _energies(n, k, rng)
    gen = _energies(n, k, rng)
    gen[:, :4] *= 0.15  # suppressed
    gen[:, 4:7] = _energies(n, 3, rng) * 3.0  # exaggerated
    stats = concept_stats(real, gen, fdr=0.05, bootstrap=300)
    labels = [s.label for s in stats]
    assert labels[:4] == ["suppressed"] * 4
    assert labels[4:7] == ["exaggerated"] * 3
    assert sum(lab != "faithful" for lab in labels[7:]) <= 1  # null concepts: at most one false discovery
    for s in stats[:4]:
        assert s.delta_high < 0.5 and s.effect < 0 and s.q <= 0.05
    for s in stats[4:7]:
        assert s.delta_low > 0.5 and s.effect > 0


def test_no_false_positives_under_the_null():
    """20 data sets with no shift at all: BH at 5 % keeps discoveries rare (global null: P(any) ≤ 5 %)."""
    discoveries = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        real, gen = _energies(120, 80, rng), _energies(120, 80, rng)
        discoveries += sum(s.label in ("suppressed", "exaggerated") for s in concept_stats(real, gen, bootstrap=0))
    assert discoveries <= 3


def test_min_shift_keeps_tiny_significant_shifts_out_of_the_discoveries():
    """At many pairs a 10 % energy drift is significant; with a least shift of 0.1 in δ it is flagged
    ``significant`` but stays ``faithful``, while a 3x shift is still found."""
    rng = np.random.default_rng(5)
    n = 3000
    real = _energies(n, 3, rng)
    gen = real * rng.uniform(0.8, 1.2, real.shape)
    gen[:, 0] *= 1.1  # δ ≈ 0.524: tiny, significant at n = 3000
    gen[:, 1] *= 3.0  # δ = 0.75
    plain = concept_stats(real, gen, bootstrap=0)
    assert plain[0].label == "exaggerated" and plain[1].label == "exaggerated" and plain[2].label == "faithful"
    margin = concept_stats(real, gen, bootstrap=0, min_shift=0.1)
    assert margin[0].label == "faithful" and margin[0].significant and abs(margin[0].delta - 0.5) < 0.1
    assert margin[1].label == "exaggerated" and margin[1].significant
    assert not margin[2].significant
    with pytest.raises(ConceptEditError, match="min_shift"):
        concept_stats(real, gen, min_shift=0.5)


def test_bootstrap_interval_covers_the_true_delta():
    rng = np.random.default_rng(3)
    covered = 0
    for _ in range(40):
        real = rng.exponential(1.0, (150, 1))
        gen = rng.exponential(1.0 / 3.0, (150, 1))  # true delta = (1/3) / (1 + 1/3) = 0.25
        (s,) = concept_stats(real, gen, bootstrap=400, seed=int(rng.integers(1 << 30)))
        covered += s.delta_low <= 0.25 <= s.delta_high
    assert covered >= 32  # nominal 95 %: 38 of 40; a broken interval covers far less


def test_inactive_concepts_are_not_tested():
    rng = np.random.default_rng(1)
    real, gen = _energies(50, 5, rng), _energies(50, 5, rng)
    real[:, 0] = 0
    gen[:, 0] = 0
    gen[0, 0] = 1.0
    stats = concept_stats(real, gen)
    assert stats[0].label == "inactive" and stats[0].p == 1.0


def test_benjamini_hochberg_matches_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.20])
    # sorted 0.01, 0.03, 0.04, 0.20 -> 0.04, 0.06, 0.0533, 0.20 -> monotone from the top: 0.04, .0533, .0533, .2
    assert np.allclose(benjamini_hochberg(p), [0.04, 0.05333333, 0.05333333, 0.2])


def test_memorisation_flags_near_copies_only():
    gen_rng = torch.Generator().manual_seed(0)
    real = torch.randn(100, 16, generator=gen_rng)
    gen = torch.randn(10, 16, generator=gen_rng)
    gen[3] = real[42] + 1e-4 * torch.randn(16, generator=gen_rng)
    flags, nearest, _, _ = memorisation_flags(real, gen, quantile=0.01)
    assert flags[3] and nearest[3] == 42
    assert sum(flags) == 1


def test_label_correlation_names_the_planted_concept():
    rng = np.random.default_rng(0)
    labels = [
        {"shape": str(rng.choice(["circle", "square", "crescent"])), "halo": bool(rng.random() < 0.3)}
        for _ in range(90)
    ]
    energy = rng.random((90, 3)) * 0.1
    energy[:, 1] += [row["shape"] == "crescent" for row in labels]
    energy[:, 2] += [row["halo"] for row in labels]
    names = label_correlations(energy, labels)
    assert names[1][0] == "shape=crescent" and names[1][1] > 0.9
    assert names[2][0] == "halo=True"
    # the other direction: a label that is no concept's best name still has its best concept
    energy[:, 0] = energy[:, 2] + 0.5 * rng.random(90)  # carries the halo, more weakly than concept 2
    by_label = label_concepts(energy, labels)
    assert by_label["halo=True"][0] == 2 and by_label["shape=crescent"][0] == 1
    assert by_label["shape=circle"][1] < 0.5


def _result(n_concepts: int = 4) -> dict:
    rng = np.random.default_rng(0)
    stats = concept_stats(_energies(30, n_concepts, rng), _energies(30, n_concepts, rng), bootstrap=50)
    concepts = [{**s.to_dict(), "top_real_images": [0, 1]} for s in stats]
    return {
        "format": "conceptedit.blindspots",
        "version": 1,
        "model": "m",
        "features": "f",
        "n_images": 30,
        "sae": {},
        "counts": {},
        "concepts": concepts,
        "memorisation": {"threshold": 0.1, "flagged": [], "pairs": []},
        "config": {"fdr": 0.05},
    }


def test_report_schema_and_files(tmp_path: Path):
    result = _result()
    images = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(30)]
    write_report(result, images, images, tmp_path)
    back = json.loads((tmp_path / "report.json").read_text())
    check_schema(back)
    assert (tmp_path / "report.html").read_text().startswith("<!doctype html>")
    assert (tmp_path / "delta.png").stat().st_size > 0
    broken = _result()
    del broken["concepts"][0]["q"]
    with pytest.raises(ValueError, match="q"):
        check_schema(broken)
    broken = _result()
    broken["concepts"][0]["q"] = 1.5
    with pytest.raises(ValueError, match="q out of range"):
        check_schema(broken)
    broken = _result()
    broken["concepts"][1]["label"] = "weird"
    with pytest.raises(ValueError, match="label"):
        check_schema(broken)


def test_report_names_concepts_and_shows_where_an_exaggerated_concept_appears(tmp_path: Path):
    """The HTML names each shown concept by its label, lists a named label that is *not* shifted, shows an
    exaggerated concept's top generated images (not only the generations for its top real captions),
    and says so when nothing is found."""
    from conceptedit.plugins._blindspots_report import shown_concepts

    result = _result(5)
    names = [("shape=crescent", 0.8), ("halo=True", 0.9), ("halo=True", 0.5), ("colour=red", 0.1), ("qr=True", 0.7)]
    for c, (name, r) in zip(result["concepts"], names, strict=True):
        c.update(name=name, name_corr=r, label="faithful", q=0.5, top_real_images=[0, 1], top_generated_images=[2])
    result["concepts"][1].update(label="exaggerated", q=0.001, top_generated_images=[7, 8])
    result["captions"] = [f"caption {i}" for i in range(30)]
    shown = shown_concepts(result["concepts"])
    # the discovery first, then the best concept of each label above the name threshold (not #2, not colour=red)
    assert [c["concept"] for c in shown] == [1, 4, 0]
    images = [Image.new("RGB", (8, 8), (i * 8, 0, 0)) for i in range(30)]
    write_report(result, images, images, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "#1 halo=True (r 0.90)" in page and "#0 shape=crescent (r 0.80)" in page and "#4 qr=True" in page
    assert "colour=red" not in page  # a weak best label is no name
    assert 'title="7: caption 7"' in page and 'title="8: caption 8"' in page  # the top generated images
    assert "no concept differs" not in page
    for c in result["concepts"]:
        c["label"] = "faithful"
    write_report(result, images, images, tmp_path)
    assert "no concept differs between real and generated images at FDR 0.05" in (tmp_path / "report.html").read_text()


def test_bad_inputs_are_one_line_errors(tmp_path: Path):
    from conceptedit.plugins.blindspots import check_user_images

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConceptEditError, match="holds no images"):
        check_user_images([empty], ["a"])
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    with pytest.raises(ConceptEditError, match="3 images but 2 captions"):
        check_user_images([folder], ["a", "b"])
    with pytest.raises(ConceptEditError, match="caption 2 is empty"):
        check_user_images([folder], ["a", " ", "c"])
    with pytest.raises(ConceptEditError, match="pairs"):
        concept_stats(np.ones((1, 3)), np.ones((1, 3)))


def test_cli_mismatch_is_one_error_line(tmp_path: Path):
    import subprocess
    import sys

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    captions = tmp_path / "c.txt"
    captions.write_text("one caption\n")
    args = ["analyze", "blindspots", "--images", str(folder), "--captions", str(captions)]
    result = subprocess.run([sys.executable, "-m", "conceptedit", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error: 2 images but 1 captions" in result.stderr and "Traceback" not in result.stderr


def _tiny_model_with_clip(folder: Path) -> Path:
    """The tiny pipeline saved with a tiny CLIP in ``clip/`` named by conceptedit.json, as v2 ships."""
    from tiny import save_tiny_pipeline
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    save_tiny_pipeline(folder)
    settings = json.loads((folder / "conceptedit.json").read_text())
    (folder / "conceptedit.json").write_text(json.dumps({**settings, "files": {"clip": "clip"}}))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1},
        vision_config={
            "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
            "image_size": 16, "patch_size": 4,
        },
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder / "clip")
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
        folder / "clip"
    )
    return folder


@pytest.mark.slow
def test_end_to_end_on_the_tiny_model_writes_a_valid_report_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from conceptedit.loading import load_pipeline
    from conceptedit.plugin import Request
    from conceptedit.registry import get_plugin

    model = _tiny_model_with_clip(tmp_path / "model")
    pipe = load_pipeline(str(model), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    folder = tmp_path / "real"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    captions = ["cat" if i % 2 else "red dog" for i in range(12)]
    values = {"sae_width": 16, "sae_k": 2, "n_archetypes": 16, "train_tokens": 2048, "bootstrap": 50}
    plugin = get_plugin("blindspots")({**values, "out": str(tmp_path / "out")})
    report = plugin.fit(pipe, Request(targets=["all"], images=[folder], extra={"captions": captions}))
    result = json.loads((tmp_path / "out" / "report.json").read_text())
    check_schema(result)
    assert result["features"].startswith("clip:") and result["features"].endswith("clip")  # the model's own CLIP
    assert sum(result["counts"].values()) == 16 == len(result["concepts"])
    assert len(result["memorisation"]["pairs"]) == 12 and result["captions"] == captions
    assert report.data["counts"] == result["counts"]
    cached = sorted((tmp_path / "out" / "cache").rglob("*.png"))
    assert len(cached) == 12

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again although every image is cached")

    def no_training(*args, **kwargs):
        raise AssertionError("trained the SAE again although the same real images' SAE is saved")

    monkeypatch.setattr("conceptedit.generation.generate", no_generation)
    monkeypatch.setattr("conceptedit.sae.train_sae", no_training)
    again = plugin.fit(pipe, Request(targets=["all"], images=[folder], extra={"captions": captions}))
    assert sorted((tmp_path / "out" / "cache").rglob("*.png")) == cached  # nothing generated twice
    assert [c["delta"] for c in again.data["concepts"]] == [c["delta"] for c in result["concepts"]]
    # another SAE setting on the same folder is refused, not silently answered with the saved SAE
    other = get_plugin("blindspots")({**values, "sae_k": 3, "out": str(tmp_path / "out")})
    with pytest.raises(ConceptEditError, match="holds an SAE of other images or settings"):
        other.fit(pipe, Request(targets=["all"], images=[folder], extra={"captions": captions}))


def test_feature_extractor_errors_are_one_line():
    from conceptedit.plugins._blindspots_features import make_extractor

    with pytest.raises(ConceptEditError, match="cannot load DINOv2 'no-such-org/dinov2-xyz'"):
        make_extractor("dinov2:no-such-org/dinov2-xyz")  # offline: not in the hub cache
    with pytest.raises(ConceptEditError, match="ships no CLIP"):
        make_extractor("clip")
    with pytest.raises(ConceptEditError, match="unknown feature extractor"):
        make_extractor("resnet")


def test_clip_token_sets_and_layers(tmp_path: Path):
    """``clip-corners`` is CLS + the mean of each corner's patch block of ``clip-all``'s tokens;
    ``@LAYERS`` concatenates layers (the last one's slice is the plain output); deterministic."""
    from conceptedit.plugins._blindspots_features import ClipFeatures, corner_tokens, make_extractor

    folder = _tiny_model_with_clip(tmp_path / "model") / "clip"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    full = make_extractor(f"clip-all:{folder}").tokens(images)
    corners = make_extractor(f"clip-corners:{folder}")
    tok = corners.tokens(images)
    assert full.shape == (3, 17, 16) and tok.shape == (3, 5, 16) and corners.d == 16
    assert torch.equal(tok, corners.tokens(images))
    assert torch.allclose(tok[:, 0], full[:, 0])
    grid = full[:, 1:].reshape(3, 4, 4, 16)
    expected = torch.stack([grid[:, 0, 0], grid[:, 0, -1], grid[:, -1, 0], grid[:, -1, -1]], dim=1)
    assert torch.allclose(tok[:, 1:], expected, atol=1e-6)
    big = torch.arange(2 * 64 * 1, dtype=torch.float32).reshape(2, 64, 1)  # an 8 x 8 grid: 2 x 2 blocks
    assert corner_tokens(big, 8)[0, :, 0].tolist() == [4.5, 10.5, 52.5, 58.5]
    layered = ClipFeatures(folder, layers=(1,))
    assert layered.name == corners.name.replace("clip-corners", "clip") and torch.equal(layered.tokens(images), full)
    # plain clip keeps all tokens on a CLIP that is not the shipped shapes one
    assert make_extractor(f"clip:{folder}").token_set == "all"


def test_clip_centred_subtracts_the_real_images_mean_token_per_position(tmp_path: Path):
    from conceptedit.plugins._blindspots_features import make_extractor

    folder = _tiny_model_with_clip(tmp_path / "model") / "clip"
    rng = np.random.default_rng(1)
    real = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(70)]
    other = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(2)]
    centred = make_extractor(f"clip-centred:{folder}")
    with pytest.raises(ConceptEditError, match="needs the real images first"):
        centred.tokens(other)
    centred.fit(real)  # 70 images: two batches of the fit's 64
    assert "clip-centred:" in centred.name
    full = make_extractor(f"clip-all:{folder}").tokens(real + other)
    tok = centred.tokens(real + other)
    assert tok.shape == full.shape == (72, 17, 16)
    assert torch.allclose(tok[:70].mean(0), torch.zeros(17, 16), atol=1e-5)  # each position, each feature
    assert torch.allclose(tok, full - full[:70].mean(0), atol=1e-5)  # one offset for real and other images


def test_shipped_shapes_clip_defaults_to_centred_tokens():
    """The shapes model's CLIP takes the measured token set (SHAPES_CLIP_TOKENS) under plain ``clip``."""
    from conceptedit.loading import builtin_model_dir
    from conceptedit.plugins._blindspots_features import SHAPES_CLIP_TOKENS, make_extractor

    folder = builtin_model_dir("shapes") / "clip"
    assert make_extractor(f"clip:{folder}").token_set == SHAPES_CLIP_TOKENS == "centred"
    assert make_extractor(f"clip-all:{folder}").token_set == "all"


def test_clip_spec_errors_are_one_line(tmp_path: Path):
    from conceptedit.plugins._blindspots_features import make_extractor

    folder = _tiny_model_with_clip(tmp_path / "model") / "clip"
    with pytest.raises(ConceptEditError, match="give distinct layers in 1..1"):
        make_extractor(f"clip@2:{folder}")
    with pytest.raises(ConceptEditError, match="comma-separated layer numbers"):
        make_extractor(f"clip-all@last:{folder}")
    with pytest.raises(ConceptEditError, match="unknown feature extractor"):
        make_extractor(f"clip-grid:{folder}")

"""CLIP metrics of the batch evaluation: ``clip_score`` and ``clip_fid``/``clip_kid`` use the CLIP a model
folder ships (``conceptedit.json`` → ``files.clip``), offline, per evaluated model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conceptedit.eval.metrics import (
    BASE,
    ClipFrechetDistance,
    ClipScore,
    Group,
    ModelContext,
    frechet_distance,
    kernel_distance,
)
from conceptedit.eval.runner import evaluate
from conceptedit.eval.store import ImageRow, ResultStore

LONG_PROMPT = "a red cat and a blue dog under a red sky"  # 40 characters: longer than the CLIP's 16 positions


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random CLIP with tiny towers (16 text positions, 16x16 images) plus its processor."""
    from tiny import write_char_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tok_dir = write_char_tokenizer(folder.parent / f"{folder.name}-tok", words=("cat", "dog", "red", "blue"))
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 16,
            "patch_size": 4,
        },
        projection_dim=24,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    with torch.no_grad():  # this seed's random towers give negative cosines, which CLIPScore clamps to 0
        model.visual_projection.weight.neg_()
    model.save_pretrained(folder)
    images = CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_with_clip(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny pipeline plus a ``clip/`` folder declared in its conceptedit.json, as the shapes model ships."""
    folder = tmp_path_factory.mktemp("with_clip") / "model"
    shutil.copytree(tiny_model_dir, folder)
    save_tiny_clip(folder / "clip")
    settings = json.loads((folder / "conceptedit.json").read_text())
    (folder / "conceptedit.json").write_text(json.dumps({**settings, "files": {"clip": "clip"}}))
    return folder


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One image cache for the module: each (model, prompt, seed) is generated once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def shipped_run(tmp_path_factory: pytest.TempPathFactory, model_with_clip: Path, cache: Path) -> tuple[dict, Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        out = tmp_path_factory.mktemp("shipped")
        return run_config(out, [model_with_clip], "a", ["clip_score", "clip_fid", "pixel_distance"], cache), out


def run_config(tmp: Path, models: list[Path], name: str, metrics: list, cache: Path) -> dict:
    prompts = tmp / f"{name}.csv"
    rows = ["red cat", "blue dog", LONG_PROMPT, "a cat"]
    prompts.write_text(
        "prompt,evaluation_seed,case_number\n" + "".join(f"{p},{10 + i},{i}\n" for i, p in enumerate(rows))
    )
    config = {
        "name": name,
        "models": [str(m) for m in models],
        "edits": [{"name": "neg-cat", "plugin": "negative-prompt", "concepts": ["cat"]}],
        "prompt_sets": [{"name": "p", "csv": str(prompts)}],
        "seeds_per_prompt": 1,
        "generation": {"batch_size": 8},
        "metrics": metrics,
        "output": str(tmp / name),
        "cache_dir": str(cache),
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return evaluate(path, progress=False)


def group(results: dict, edit: str, model: Path | None = None) -> dict:
    return next(g for g in results["groups"] if g["edit"] == edit and (model is None or g["model"] == str(model)))


def test_clip_score_uses_the_shipped_clip_offline_and_matches_a_direct_computation(
    tmp_path, model_with_clip, shipped_run, cache
):
    from transformers import CLIPModel, CLIPProcessor

    first, out = shipped_run
    assert first["unavailable"] == {}
    base = group(first, BASE)["metrics"]["clip_score"]
    assert base["value"] is not None and base["details"] == {"n": 4, "clip": f"{model_with_clip}/clip"}

    # Direct: the model's forward pass (not get_*_features) on the stored images and their prompts.
    clip = CLIPModel.from_pretrained(model_with_clip / "clip").eval()
    processor = CLIPProcessor.from_pretrained(model_with_clip / "clip")
    store = ResultStore(out / "a" / "results.sqlite")
    rows = list(store.rows())
    store.close()
    images = [Image.open(r.image_path).convert("RGB") for r in rows]
    inputs = processor(
        text=[r.prompt for r in rows], images=images, return_tensors="pt", padding=True, truncation=True, max_length=16
    )
    assert inputs["input_ids"].shape[1] == 16  # the long prompt was cut to the CLIP's positions
    with torch.no_grad():
        out = clip(**inputs)
    direct = (100 * (out.image_embeds * out.text_embeds).sum(-1)).clamp(min=0)
    stored = torch.tensor([r.per_image["clip_score"]["score"] for r in rows])
    assert (direct > 0).sum() >= 3  # not a vacuous comparison of zeros
    torch.testing.assert_close(stored, direct, atol=1e-4, rtol=1e-4)

    second = run_config(tmp_path, [model_with_clip], "b", ["clip_score", "clip_fid", "pixel_distance"], cache)
    # the same numbers up to float32 summation order (the second run scores cached images in other batches)
    assert _rounded([g["metrics"] for g in first["groups"]]) == _rounded([g["metrics"] for g in second["groups"]])


def test_clip_fid_is_named_for_its_features_and_separates_edited_from_base(model_with_clip, shipped_run):
    results, _ = shipped_run
    edited = group(results, "neg-cat")["metrics"]
    assert edited["pixel_distance"]["value"] > 0  # the edit changed the images ...
    assert edited["clip_fid"]["value"] > 0 and edited["clip_kid"]["value"] is not None  # ... and the metric sees it
    for key in ("clip_fid", "clip_kid"):
        assert edited[key]["details"]["features"] == f"{model_with_clip}/clip image tower, not Inception"
        assert edited[key]["details"]["reference"] == "base generations" and edited[key]["details"]["n"] == 4
    assert "clip_fid" not in group(results, BASE)["metrics"]  # base is the reference, not scored against itself
    assert "not Inception" in ClipFrechetDistance.description


def _rows(paths: list[str]) -> list[ImageRow]:
    return [ImageRow("m", "e", "p", i, 0, "x", "", "", {}, f"k{i}", path, {}) for i, path in enumerate(paths)]


def _save(images: np.ndarray, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folder / f"{i}.png") for i in range(len(images))]
    for image, path in zip(images, paths, strict=True):
        Image.fromarray(image).save(path)
    return paths


def test_clip_fid_of_identical_sets_is_zero_and_of_different_sets_positive(tmp_path, model_with_clip):
    rng = np.random.default_rng(0)
    noise = _save(rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), tmp_path / "noise")
    flat = _save(np.repeat(rng.integers(0, 256, (12, 1, 1, 3), dtype=np.uint8), 16, 1).repeat(16, 2), tmp_path / "flat")
    metric = ClipFrechetDistance({"kid_subset_size": 12})
    assert metric.use_model(ModelContext("m", {"clip": str(model_with_clip / "clip")})) is None

    def scores(edited: list[str], base: list[str]) -> tuple[float, float]:
        load = lambda path: Image.open(path).convert("RGB")  # noqa: E731
        base_rows = {(r.case_number, r.seed): r for r in _rows(base)}
        out = metric.compute(Group("m", "e", "p", _rows(edited), base_rows, load))
        return out["clip_fid"].value, out["clip_kid"].value

    same_fid, same_kid = scores(noise, noise)
    other_fid, other_kid = scores(flat, noise)
    # KID's unbiased estimate of identical sets (whole sets as subsets) is ≤ 0 for a PSD kernel, not exactly 0
    assert same_fid == pytest.approx(0.0, abs=1e-6) and same_kid <= 1e-12
    assert other_fid > 1e-2 and other_kid > 0
    assert scores(flat, noise) == (other_fid, other_kid)  # deterministic


def test_frechet_and_kernel_distances_match_reference_formulas():
    from scipy import linalg

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 6)), rng.normal(loc=0.5, scale=1.5, size=(30, 6))
    mu_a, mu_b, cov_a, cov_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-8)

    m, d = 30, 6  # whole sets as the one subset: the unbiased MMD^2, whatever the permutation
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(a[:m], a[:m]), k(b, b), k(a[:m], b)
    mmd = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    mean, std = kernel_distance(torch.from_numpy(a[:m]), torch.from_numpy(b), subset_size=m, subsets=3)
    assert mean == pytest.approx(mmd, rel=1e-8) and std == pytest.approx(0.0, abs=1e-9)


def test_without_a_shipped_clip_offline_the_metric_is_unavailable_for_that_model_only(
    tmp_path, model_with_clip, tiny_model_dir, monkeypatch, cache
):
    monkeypatch.setattr(ClipScore, "default_model", "conceptedit-tests/no-such-clip")  # never in any cache
    monkeypatch.setattr(ClipFrechetDistance, "default_model", "conceptedit-tests/no-such-clip")
    results = run_config(
        tmp_path, [tiny_model_dir, model_with_clip], "two", ["clip_score", "clip_fid", "pixel_distance"], cache
    )
    reasons = results["unavailable"]
    assert set(reasons) == {f"clip_score ({tiny_model_dir})", f"clip_fid ({tiny_model_dir})"}
    for reason in reasons.values():
        assert "ships no CLIP (conceptedit.json files.clip)" in reason and "no-such-clip" in reason
        assert "\n" not in reason
    plain, shipped = group(results, "neg-cat", tiny_model_dir)["metrics"], group(results, "neg-cat", model_with_clip)
    assert "clip_score" not in plain and "pixel_distance" in plain  # the run went on without it
    assert shipped["metrics"]["clip_score"]["value"] is not None and shipped["metrics"]["clip_fid"]["value"] > 0

    only_plain = run_config(tmp_path, [tiny_model_dir], "one", ["clip_score"], cache)
    assert set(only_plain["unavailable"]) == {"clip_score"}
    assert "ships no CLIP" in only_plain["unavailable"]["clip_score"]


def _rounded(value, digits: int = 4):
    """Floats rounded to ``digits`` decimals, recursively (for run-to-run comparisons)."""
    if isinstance(value, float):
        return round(value, digits) + 0.0
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value

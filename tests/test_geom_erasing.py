"""Geom-Erasing: location tokens added and removed exactly, the re-weighted loss, the detector registry,
and the plugin fitted end to end (both settings) on the tiny pipeline with a fake detector.

The effect on the shapes model (mark rates, side effects) is measured by ``benchmarks/geom_erasing.py``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import assert_same_state, full_state

from conceptedit.detectors import DETECTORS, Detection, DetectorError, check_detections, get_detector
from conceptedit.edits import Edit
from conceptedit.edits.tokens import add_token_rows, token_vectors
from conceptedit.errors import ConceptEditError, ModelMismatchError
from conceptedit.generation import generate
from conceptedit.plugin import Request
from conceptedit.plugins._geom_erasing_fit import (
    covered_cells,
    full_caption,
    region_mask,
    region_weights,
    weighted_loss,
)
from conceptedit.plugins.blindspots import IMAGE_SETS
from conceptedit.plugins.geom_erasing import GeomErasingEdit, GeomErasingLoRAEdit
from conceptedit.registry import get_plugin
from conceptedit.toolkit import encode_prompts, tokenize

FAKE = "fake_ge_detectors"


# -- location tokens ------------------------------------------------------------------------------
def test_token_rows_are_added_and_removed_bit_for_bit(tiny_pipe):
    before = full_state(tiny_pipe)
    tokenizer, rows = tiny_pipe.tokenizer, tiny_pipe.text_encoder.get_input_embeddings().num_embeddings
    vocab = tiny_pipe.text_encoder.config.vocab_size
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    undo = add_token_rows(tiny_pipe, ["<loc-a>", "<loc-b>"], vectors)
    table = tiny_pipe.text_encoder.get_input_embeddings()
    assert table.num_embeddings == rows + 2 and tiny_pipe.text_encoder.config.vocab_size == rows + 2
    key = next(k for k in before if k.startswith("text_encoder.") and k.endswith("token_embedding.weight"))
    assert torch.equal(table.weight[:rows], before[key])
    assert torch.equal(table.weight[rows:], vectors)
    ids = tokenize(tiny_pipe.tokenizer, ["cat <loc-b> <loc-a>"]).input_ids[0].tolist()
    assert rows + 1 in ids and rows in ids  # the new words are single tokens with the new rows' ids
    assert tokenizer.get_vocab().get("<loc-a>") is None  # the original tokenizer object never changes
    with pytest.raises(ModelMismatchError, match="already has the token"):
        add_token_rows(tiny_pipe, ["<loc-a>"], vectors[:1])
    undo()
    assert tiny_pipe.tokenizer is tokenizer and tiny_pipe.text_encoder.config.vocab_size == vocab
    assert_same_state(before, full_state(tiny_pipe))


def test_trained_vectors_read_like_added_rows(tiny_pipe):
    """Training through the hook sees exactly what the artifact later adds as rows."""
    vectors = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    rows = tiny_pipe.text_encoder.get_input_embeddings().num_embeddings
    undo = add_token_rows(tiny_pipe, ["<loc-z>"], vectors)
    with torch.no_grad():
        added = encode_prompts(tiny_pipe.text_encoder, tiny_pipe.tokenizer, ["red <loc-z> cat"])
    extended = tiny_pipe.tokenizer
    undo()
    with torch.no_grad(), token_vectors(tiny_pipe.text_encoder, rows, vectors):
        hooked = encode_prompts(tiny_pipe.text_encoder, extended, ["red <loc-z> cat"])
    assert torch.allclose(added, hooked, atol=1e-6)


# -- geometry and the loss ------------------------------------------------------------------------
def test_region_weights_follow_the_formula_on_a_toy_mask():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # K = 4 of T = 16
    alpha = 3.0
    w = region_weights(mask, alpha)
    denom = 4 + alpha * (16 - 4)
    assert torch.allclose(w[0][mask[0]], torch.full((4,), 16 / denom))
    assert torch.allclose(w[0][~mask[0]], torch.full((12,), alpha * 16 / denom))
    assert torch.isclose(w.sum(), torch.tensor(16.0))
    assert torch.equal(region_weights(torch.zeros(1, 4, 4, dtype=torch.bool), alpha), torch.ones(1, 4, 4))
    pred, target = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    expected = (w[:, None] * (pred - target) ** 2).mean()
    assert torch.isclose(weighted_loss(pred, target, w), expected)


def test_boxes_map_to_cells_and_latent_regions():
    assert covered_cells((0.0, 0.0, 0.3, 0.2), 3) == [0]
    assert covered_cells((0.7, 0.7, 1.0, 1.0), 3) == [8]
    assert covered_cells((0.0, 0.0, 1.0, 0.3), 3) == [0, 1, 2]
    assert covered_cells((0.0, 0.0, 0.34, 0.1), 3) == [0]  # grazing the next cell by a hair does not count
    mask = region_mask([(0.0, 0.0, 0.3, 0.2)], 8, 8)
    assert mask[:2, :3].all() and mask.sum() == 6


# -- detectors ------------------------------------------------------------------------------------
@pytest.fixture
def fake_detectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A third-party distribution declaring a detector by entry point (and a module:callable one)."""
    (tmp_path / f"{FAKE}.py").write_text(
        textwrap.dedent(
            """
            from conceptedit.detectors import Detection


            class StampDetector:
                '''Finds "stamp" in the top-left quarter of every other image.'''

                concepts = ("stamp",)

                def detect(self, images):
                    return [
                        {"stamp": Detection(i % 2 == 0, 0.9, (0.0, 0.0, 0.5, 0.5) if i % 2 == 0 else None)}
                        for i in range(len(images))
                    ]


            def broken():
                raise RuntimeError("no weights here")


            not_a_detector = 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    real = importlib.metadata.entry_points

    def entry_points(**selection):
        if selection.get("group") == "conceptedit.detectors":
            return [importlib.metadata.EntryPoint("fake-stamps", f"{FAKE}:StampDetector", "conceptedit.detectors")]
        return real(**selection)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    DETECTORS.discover(refresh=True)
    yield
    dict.pop(DETECTORS, "fake-stamps", None)
    sys.modules.pop(FAKE, None)


def test_a_detector_from_a_fake_distribution_is_found(fake_detectors):
    assert "fake-stamps" in DETECTORS and "shapes" in DETECTORS
    detector = get_detector("fake-stamps")
    assert type(detector).__module__ == FAKE and detector.concepts == ("stamp",)
    assert type(get_detector(f"{FAKE}:StampDetector")).__module__ == FAKE
    found = check_detections(detector, [None, None], ["stamp"])
    assert found[0]["stamp"] == Detection(True, 0.9, (0.0, 0.0, 0.5, 0.5)) and not found[1]["stamp"].present


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown detector 'nope'; available: .*shapes"),
        ("", "empty detector spec"),
        ("no_such_module_xyz:Det", "cannot import 'no_such_module_xyz'"),
        (f"{FAKE}:Missing", f"module '{FAKE}' has no 'Missing'"),
        (f"{FAKE}:broken", "failed to start: RuntimeError: no weights here"),
        (f"{FAKE}:not_a_detector", "is not callable"),
        ("conceptedit.errors:ConceptEditError", "must have a 'concepts' tuple"),
    ],
)
def test_a_bad_detector_spec_is_a_one_line_error(fake_detectors, spec: str, message: str):
    with pytest.raises(DetectorError, match=message) as caught:
        get_detector(spec)
    assert "\n" not in str(caught.value)


def test_malformed_detections_are_refused(fake_detectors):
    class Wrong:
        concepts = ("stamp",)

        def detect(self, images):
            return [{"stamp": Detection(True, 1.0, (0.5, 0.5, 0.2, 0.9))} for _ in images]

    with pytest.raises(DetectorError, match="boxes are"):
        check_detections(Wrong(), [None], ["stamp"])
    with pytest.raises(DetectorError, match="no Detection of 'halo'"):
        check_detections(get_detector("fake-stamps"), [None], ["halo"])


# -- the plugin, end to end -----------------------------------------------------------------------
SETTINGS = {"samples": 4, "steps": 3, "batch_size": 2, "grid": 2, "detector": f"{FAKE}:StampDetector"}


def test_model_setting_fits_applies_and_removes_exactly(tiny_pipe, fake_detectors, tmp_path: Path):
    before = full_state(tiny_pipe)
    tokenizer = tiny_pipe.tokenizer
    base = np.stack([np.asarray(im) for im in generate(tiny_pipe, ["a cat", "a dog"], [0, 1])])
    request = Request(targets=["stamp"], prompts=["a red cat", "a blue dog"])
    edit = get_plugin("geom-erasing")(SETTINGS).fit(tiny_pipe, request)
    assert type(edit) is GeomErasingEdit and edit.manifest.artifact_kind == "runtime"
    assert_same_state(before, full_state(tiny_pipe))  # fit changed nothing
    tokens = edit.manifest.extra["tokens"]
    assert len(tokens) == 4 and edit.manifest.extra["data"]["trained_on"] == 2  # every other image
    assert edit.manifest.extra["negative_text"] == "stamp " + " ".join(tokens)
    init_noise = edit.tensors["text_encoder.location_tokens"]
    assert init_noise.shape == (4, 32) and bool(torch.isfinite(init_noise).all())

    loaded = Edit.load(edit.save(tmp_path / "ge"))
    assert type(loaded) is GeomErasingEdit and loaded.manifest.extra["tokens"] == tokens
    assert torch.equal(loaded.tensors["text_encoder.location_tokens"], init_noise)
    seen = []
    inner = tiny_pipe.encode_prompt

    @functools.wraps(inner)  # the same signature: runtime edits bind arguments by name
    def spy(*args, **kwargs):
        seen.append(inspect.signature(inner).bind(*args, **kwargs).arguments.get("negative_prompt"))
        return inner(*args, **kwargs)  # what the pipeline's own encode_prompt receives under the edit

    object.__setattr__(tiny_pipe, "encode_prompt", spy)
    with loaded.apply(tiny_pipe):
        assert len(tiny_pipe.tokenizer) == len(tokenizer) + 4
        made = generate(tiny_pipe, ["a cat", "a dog"], [0, 1], negative_prompt="dog")
        edited = np.stack([np.asarray(im) for im in made])
    assert tiny_pipe.encode_prompt is spy
    tiny_pipe.__dict__.pop("encode_prompt")
    assert seen and seen[0] == ["dog, stamp " + " ".join(tokens)] * 2  # composed with the user's negative prompt
    assert not np.array_equal(base, edited)
    assert tiny_pipe.tokenizer is tokenizer
    assert_same_state(before, full_state(tiny_pipe))
    after = np.stack([np.asarray(im) for im in generate(tiny_pipe, ["a cat", "a dog"], [0, 1])])
    assert np.array_equal(base, after)


def test_data_setting_trains_a_lora_with_the_tokens(tiny_pipe, fake_detectors, tmp_path: Path):
    from PIL import Image

    def image_set(n, seed):
        rng = np.random.default_rng(seed)
        images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(n)]
        return images, ["a red cat"] * n, [{} for _ in range(n)]

    IMAGE_SETS.register("fake-ge-images", image_set)
    try:
        before = full_state(tiny_pipe)
        edit = get_plugin("geom-erasing")(SETTINGS, setting="data", data="fake-ge-images").fit(
            tiny_pipe, Request(targets=["stamp"])
        )
    finally:
        dict.pop(IMAGE_SETS, "fake-ge-images", None)
    assert type(edit) is GeomErasingLoRAEdit and edit.manifest.extra["data"]["trained_on"] == 4  # marked or not
    assert any(k.endswith("lora_B.weight") and k.startswith("unet.") for k in edit.tensors)
    folder = edit.save(tmp_path / "ge-data")
    assert sorted(p.name for p in folder.iterdir()) == [
        "learned_embeds.safetensors", "manifest.json", "pytorch_lora_weights.safetensors",
    ]  # fmt: skip
    loaded = Edit.load(folder)
    module = next(k for k in loaded.tensors if k.endswith(".lora_A.weight"))[: -len(".lora_A.weight")]
    with loaded.apply(tiny_pipe):
        unet_changed = not torch.equal(before[f"{module}.weight"], full_state(tiny_pipe)[f"{module}.weight"])
    assert unet_changed
    assert_same_state(before, full_state(tiny_pipe))


def test_fit_refuses_what_it_cannot_do(tiny_pipe, fake_detectors):
    plugin = get_plugin("geom-erasing")
    with pytest.raises(ConceptEditError, match="cannot find \\['halo'\\]; it knows \\['stamp'\\]"):
        plugin(SETTINGS).fit(tiny_pipe, Request(targets=["halo"], prompts=["a cat"]))
    with pytest.raises(ConceptEditError, match="unknown detector 'nope'"):
        plugin(SETTINGS, detector="nope").fit(tiny_pipe, Request(targets=["stamp"], prompts=["a cat"]))
    with pytest.raises(ConceptEditError, match="no detector registered for this model"):
        plugin(SETTINGS, detector="auto").fit(tiny_pipe, Request(targets=["stamp"], prompts=["a cat"]))
    with pytest.raises(ConceptEditError, match="ships no prompt corpus"):
        plugin(SETTINGS).fit(tiny_pipe, Request(targets=["stamp"]))
    with pytest.raises(ConceptEditError, match="negative prompt .* over this tokenizer's 16; use a smaller grid"):
        plugin(SETTINGS, grid=9).fit(tiny_pipe, Request(targets=["stamp"], prompts=["a cat"]))
    with pytest.raises(ConceptEditError, match="alpha must be > 0"):
        plugin(SETTINGS, alpha=0)


def test_a_long_caption_loses_its_own_words_not_the_location_tokens(tiny_pipe):
    from conceptedit.edits.tokens import extended_tokenizer, token_table

    tokens = ["<loc-a>", "<loc-b>"]
    tok = extended_tokenizer(tiny_pipe.tokenizer, tokens, token_table(tiny_pipe.text_encoder).num_embeddings)
    long = " ".join(["cat"] * 100)
    text = full_caption(long, "stamp <loc-a> <loc-b>", tok)
    ids = tok(text).input_ids
    assert len(ids) <= tok.model_max_length and text.startswith("cat cat") and text.endswith(", stamp <loc-a> <loc-b>")
    assert tok.convert_tokens_to_ids("<loc-b>") in ids
    assert full_caption("a red cat", "stamp <loc-a>", tok) == "a red cat, stamp <loc-a>"  # short: unchanged
    assert full_caption("", "stamp <loc-a>", tok) == "stamp <loc-a>"


def test_full_unet_mode_trains_every_unet_weight_and_leaves_the_pipeline_alone(tiny_pipe):
    from conceptedit.plugins._geom_erasing_fit import LoopSettings, TrainingData, train

    before = full_state(tiny_pipe)
    side = tiny_pipe.unet.config.sample_size
    channels = tiny_pipe.unet.config.in_channels
    masks = torch.zeros(2, side, side, dtype=torch.bool)
    masks[:, :2, :2] = True
    data = TrainingData(torch.randn(2, channels, side, side), ["a red cat", "a cat"], ["stamp", ""], masks)
    settings = LoopSettings(steps=2, batch_size=2, token_lr=1e-3, alpha=2.0, caption_dropout=0.0, seed=0,
                            lora=True, full_unet=True, unet_lr=1e-2)  # fmt: skip
    _, student, stats = train(tiny_pipe, data, [], None, settings)
    trained = dict(student.named_parameters())
    changed = {n for n, p in tiny_pipe.unet.named_parameters() if not torch.equal(p, trained[n].to(p.dtype))}
    assert any("conv_in" in n for n in changed) and any("attn2.to_k" in n for n in changed)
    assert not any("lora_" in n for n in trained)
    assert_same_state(before, full_state(tiny_pipe))


# -- concept names: the words the model's captions use ----------------------------------------------
class _Phrased:
    concepts = ("stamp", "seal")
    phrases = {"stamp": "with a stamp"}  # noqa: RUF012


def test_concept_names_come_from_the_detector_the_targets_or_the_config():
    from conceptedit.plugins.geom_erasing import GeomErasingConfig, concept_names

    assert concept_names("auto", _Phrased(), ["stamp", "seal"]) == {"stamp": "with a stamp", "seal": "seal"}
    assert concept_names("targets", _Phrased(), ["stamp"]) == {"stamp": "stamp"}
    assert concept_names(" seal = a wax  seal ", _Phrased(), ["stamp", "seal"]) == {
        "stamp": "stamp", "seal": "a wax seal",
    }  # fmt: skip
    assert concept_names("auto", object(), ["stamp"]) == {"stamp": "stamp"}  # a detector without phrases
    with pytest.raises(ConceptEditError, match=r"names gives words for \['halo'\], which are not targets"):
        concept_names("halo=a ring", _Phrased(), ["stamp"])
    for bad in ("stamp", "stamp=", "=x", ";"):
        with pytest.raises(ValueError, match="names:"):
            GeomErasingConfig(names=bad)


def test_the_clause_and_the_negative_prompt_use_the_concept_names(tiny_pipe, fake_detectors):
    from PIL import Image

    from conceptedit.plugins._geom_erasing_fit import build_data

    found = [{"stamp": Detection(True, 0.9, (0.0, 0.0, 0.5, 0.5))}, {"stamp": Detection(False, 0.1)}]
    images = [Image.new("RGB", (16, 16))] * 2
    data = build_data(tiny_pipe, images, ["a", "b"], found, ["stamp"], ["<l0>", "<l1>"], 2, 16, True,
                      names={"stamp": "red stamp"})  # fmt: skip
    assert data.clauses == ["red stamp <l0>", ""]
    edit = get_plugin("geom-erasing")(SETTINGS, names="stamp=red stamp").fit(
        tiny_pipe, Request(targets=["stamp"], prompts=["a red cat", "a blue dog"])
    )
    tokens = edit.manifest.extra["tokens"]
    assert edit.manifest.extra["negative_text"] == "red stamp " + " ".join(tokens)
    assert edit.manifest.extra["names"] == {"stamp": "red stamp"}

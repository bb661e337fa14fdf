"""SDXL support of the erase plugins, on the tiny SDXL pipeline of ``tests/tiny.py`` (two text encoders
of widths 24 and 32 → a 56-d cross-attention context, pooled ``text_embeds`` and ``add_time_ids``)."""

from __future__ import annotations

import numpy as np

from conceptedit.families import SDXL, detect_family
from conceptedit.generation import generate


def test_tiny_sdxl_pipeline_is_sdxl_and_generates(tiny_sdxl_pipe):
    pipe = tiny_sdxl_pipe
    assert detect_family(pipe) == SDXL
    widths = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert pipe.unet.config.cross_attention_dim == widths
    embeds, _, pooled, _ = pipe.encode_prompt("a cat", device="cpu", do_classifier_free_guidance=False)
    assert embeds.shape == (1, 16, 56) and pooled.shape == (1, 16)
    images = generate(pipe, ["a red cat", "a dog"], [0, 1])
    assert [im.size for im in images] == [(16, 16)] * 2
    assert np.abs(np.asarray(images[0], float) - np.asarray(images[1], float)).mean() > 1

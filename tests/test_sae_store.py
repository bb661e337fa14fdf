"""Activation stores: disk round trip through a bounded shuffle buffer, records, collection."""

from __future__ import annotations

import json

import pytest
import torch

from conceptedit.errors import ConceptEditError
from conceptedit.sae import ActivationStore, InMemoryStore, collect_activations, collect_component_activations
from conceptedit.sae.collect import read_prompts


def test_disk_round_trip_with_more_rows_than_the_buffer(tmp_path) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 12, generator=gen) * 3 + 1
    pid = torch.arange(5000) // 7
    store = InMemoryStore(x, {"prompt_id": pid}).save(tmp_path / "s", shard_rows=700)
    assert len(store.shards) == 8 and store.n_rows == 5000
    store.read_rows = 128  # shards are read piecewise
    # buffer of 512 rows << 5000 rows: every row must still come out exactly once per epoch
    got, rows = [], []
    for xb, rb in store.batches(64, seed=3, epochs=1, buffer_rows=512, with_rows=True):
        assert xb.shape[0] <= 64
        got.append(xb)
        rows.append(rb)
    got, rows = torch.cat(got), torch.cat(rows)
    assert sorted(rows.tolist()) == list(range(5000))
    torch.testing.assert_close(got, x[rows])
    assert not torch.equal(rows, torch.arange(5000))  # shuffled
    first = rows[:64] // 700
    assert first.unique().numel() >= 2  # a batch mixes shards
    # deterministic under the seed, different under another seed
    again = torch.cat([r for _, r in store.batches(64, seed=3, epochs=1, buffer_rows=512, with_rows=True)])
    other = torch.cat([r for _, r in store.batches(64, seed=4, epochs=1, buffer_rows=512, with_rows=True)])
    assert torch.equal(rows, again) and not torch.equal(rows, other)
    # statistics and records stored with the shards
    torch.testing.assert_close(store.mean, x.mean(0), rtol=1e-5, atol=1e-5)
    expected_scale = (12 / x.pow(2).sum(-1).mean()).sqrt()
    assert store.norm_scale == pytest.approx(float(expected_scale), rel=1e-5)
    assert torch.equal(store.records()["prompt_id"], pid.to(torch.int32))
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert index["rows"] == 5000 and "norm_scale" in index and len(index["mean"]) == 12


def test_infinite_stream_carries_leftovers_and_sample(tmp_path) -> None:
    x = torch.arange(300 * 2, dtype=torch.float32).view(300, 2)
    store = InMemoryStore(x, part_rows=64)
    stream = store.batches(128, seed=0, buffer_rows=256)
    seen = torch.cat([next(stream) for _ in range(7)])  # 896 rows = 2 epochs + carried rows
    counts = torch.bincount(seen[:, 0].long() // 2, minlength=300)
    assert counts.min() >= 2 and counts.max() <= 3
    assert store.sample(50).shape == (50, 2)


def test_errors(tmp_path) -> None:
    with pytest.raises(ConceptEditError, match="not an activation store"):
        ActivationStore(tmp_path)
    InMemoryStore(torch.randn(10, 3)).save(tmp_path / "s")
    with pytest.raises(ConceptEditError, match="already holds"):
        InMemoryStore(torch.randn(10, 3)).save(tmp_path / "s")


def test_read_prompts(tmp_path) -> None:
    (tmp_path / "p.txt").write_text("a cat\n\nred dog\n")
    (tmp_path / "p.csv").write_text("prompt,evaluation_seed\na cat,1\nblue dog,2\n")
    (tmp_path / "bad.csv").write_text("text\nx\n")
    assert read_prompts(tmp_path / "p.txt") == ["a cat", "red dog"]
    assert read_prompts(tmp_path / "p.csv") == ["a cat", "blue dog"]
    with pytest.raises(ConceptEditError, match="'prompt' column"):
        read_prompts(tmp_path / "bad.csv")


@pytest.fixture(scope="module")
def text_parts():
    from tiny import tiny_components

    comps = tiny_components()
    return comps["text_encoder"].eval(), comps["tokenizer"]


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_collect_text_activations_filters_and_records(tmp_path, text_parts, padding) -> None:
    encoder, tokenizer = text_parts
    prompts = ["a cat", "a red dog on blue", "cat"]
    module = "text_model.encoder.layers.1"
    store = collect_activations(
        text_parts,
        module,
        prompts,
        tmp_path / padding,
        batch_size=2,
        padding=padding,
        shard_rows=5,
        progress=False,
    )
    lengths = [sum(m) for m in tokenizer(prompts, padding="longest")["attention_mask"]]
    assert store.n_rows == sum(n - 1 for n in lengths)  # BOS and padding skipped in both modes
    rec = store.records()
    assert rec["position"].min() >= 1
    assert torch.equal(torch.bincount(rec["prompt_id"].long()), torch.tensor([n - 1 for n in lengths]))
    # rows are the module's outputs at the recorded (prompt, position)
    ids = tokenizer(prompts[1:2], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = encoder(ids, output_hidden_states=True).hidden_states[2][0]
    rows = torch.cat(list(store.iter_rows(1000)))
    sel = rec["prompt_id"] == 1
    torch.testing.assert_close(rows[sel], ref[rec["position"][sel].long()], rtol=1e-4, atol=1e-5)
    assert store.meta["module"] == module and store.meta["padding"] == padding


def test_collect_keeps_bos_and_padding_when_asked(text_parts) -> None:
    _, tokenizer = text_parts
    mem = collect_activations(
        text_parts,
        "text_encoder.text_model.encoder.layers.0",
        ["a cat", "a red dog"],
        None,
        padding="max_length",
        skip_bos=False,
        skip_padding=False,
        progress=False,
    )
    assert isinstance(mem, InMemoryStore)
    assert mem.n_rows == 2 * tokenizer.model_max_length


def test_collect_component_activations_per_spatial_position(tmp_path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(5, 2, 1))
    images = [torch.randn(2, 3, 4, 6) for _ in range(3)]
    store = collect_component_activations(net, "1", images, tmp_path / "c", shard_rows=20, progress=False)
    assert store.n_rows == 3 * 2 * 4 * 6 and store.d_in == 5
    rows = torch.cat(list(store.iter_rows(1000)))
    with torch.no_grad():
        ref = net[1](net[0](images[0]))  # [2, 5, 4, 6]
    torch.testing.assert_close(rows[:24], ref[0].permute(1, 2, 0).reshape(24, 5))
    rec = store.records()
    assert rec["prompt_id"].tolist()[:25] == [0] * 24 + [1]
    assert rec["position"].tolist()[:3] == [0, 1, 2]


def test_collect_from_a_unet_block_per_spatial_position() -> None:
    from tiny import tiny_components

    unet = tiny_components()["unet"].eval()
    gen = torch.Generator().manual_seed(0)
    batches = [
        {
            "sample": torch.randn(2, 4, 8, 8, generator=gen),
            "timestep": torch.tensor(10),
            "encoder_hidden_states": torch.randn(2, 5, 32, generator=gen),
        }
        for _ in range(2)
    ]
    store = collect_component_activations(unet, "mid_block", batches, None, progress=False)
    # mid block of the tiny UNet: [B, 16, 4, 4] -> one row per spatial position and sample
    assert store.d_in == 16 and store.n_rows == 2 * 2 * 4 * 4
    rec = store.records()
    assert rec["prompt_id"].tolist() == [i for i in range(4) for _ in range(16)]
    assert rec["position"].tolist() == list(range(16)) * 4

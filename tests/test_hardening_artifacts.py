"""Issue 11, artifact side: saving never destroys a user's files, an artifact never reaches outside its
folder, the manifest is under the integrity check, malformed manifests give one-line errors naming the
key, and fingerprints accept fp16/bf16 of the same weights but refuse 1 %-perturbed or other weights."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from conceptedit.edits import Edit, Manifest, NegativePromptEdit, WeightDeltaEdit, storage
from conceptedit.errors import ArtifactError, ModelMismatchError
from conceptedit.fingerprint import compare, fingerprint


def small_edit(scale: float = 0.1) -> WeightDeltaEdit:
    gen = torch.Generator().manual_seed(0)
    tensors = {"unet.a.weight": scale * torch.randn(4, 3, generator=gen), "unet.b.bias": torch.zeros(4)}
    base = {"id": "tiny", "family": "sd1", "components": {"unet": fingerprint(torch.nn.Linear(3, 4))}}
    manifest = Manifest("weight_delta", "weight_delta", "test", targets=["cat"], base_model=base)
    return WeightDeltaEdit(manifest, tensors)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return small_edit().save(tmp_path / "edit")


def read(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def write(folder: Path, data: object, rehash: bool = False) -> None:
    """Write a manifest; with ``rehash`` as a tamperer who recomputes the content hash would."""
    if rehash:
        assert isinstance(data, dict)
        data = {k: v for k, v in data.items() if k != storage.DIGEST_KEY}
        (folder / "manifest.json").write_text(storage.manifest_text(data))
    else:
        (folder / "manifest.json").write_text(json.dumps(data))


def one_line_error(folder: Path, match: str) -> str:
    with pytest.raises(ArtifactError, match=match) as info:
        Edit.load(folder)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- saving never destroys what it did not create ------------------------------------------------
def test_save_refuses_a_user_folder_and_keeps_every_file(tmp_path):
    user = tmp_path / "mydata"
    (user / "sub").mkdir(parents=True)
    (user / "thesis.txt").write_text("years of work")
    (user / "sub" / "data.csv").write_text("a,b\n")
    before = snapshot(user)
    with pytest.raises(ArtifactError, match="is not an edit artifact .*thesis.txt.*choose another output folder"):
        small_edit().save(user)
    assert snapshot(user) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]  # no temporary folder left behind


def test_save_refuses_a_folder_whose_manifest_is_not_an_artifact(tmp_path):
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "my app", "icons": []}')
    (webapp / "index.html").write_text("<html>")
    before = snapshot(webapp)
    with pytest.raises(ArtifactError, match="is not an edit artifact"):
        small_edit().save(webapp)
    assert snapshot(webapp) == before


def test_save_refuses_a_file_and_a_symlink(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(ArtifactError, match="is a file, not an edit artifact folder"):
        small_edit().save(notes)
    assert notes.read_text() == "keep me"
    real = tmp_path / "real"
    real.mkdir()
    (real / "x").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ArtifactError, match="symbolic link"):
        small_edit().save(link)
    assert link.is_symlink() and (real / "x").read_text() == "x"


def test_save_refuses_an_artifact_that_also_holds_user_files(artifact):
    (artifact / "my_notes.md").write_text("notes")
    with pytest.raises(ArtifactError, match="also holds other files .*my_notes.md"):
        small_edit(scale=0.2).save(artifact)
    assert (artifact / "my_notes.md").read_text() == "notes"
    Edit.load(artifact)  # the artifact itself is untouched too


def test_save_replaces_an_earlier_artifact_and_fills_an_empty_folder(tmp_path, artifact):
    newer = small_edit(scale=0.7)
    newer.save(artifact)
    assert torch.equal(Edit.load(artifact).tensors["unet.a.weight"], newer.tensors["unet.a.weight"])
    empty = tmp_path / "empty"
    empty.mkdir()
    small_edit().save(empty)
    assert isinstance(Edit.load(empty), WeightDeltaEdit)
    small_edit().save(tmp_path / "a" / "b" / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "edit", "empty"]


def test_save_leaves_a_users_dot_old_folder_alone(tmp_path, artifact):
    mine = tmp_path / ".edit.old"  # the name the old implementation used as its backup and deleted
    mine.mkdir()
    (mine / "precious").write_text("x")
    small_edit(scale=0.3).save(artifact)
    assert (mine / "precious").read_text() == "x"


def test_failed_replace_puts_the_earlier_artifact_back(tmp_path, artifact, monkeypatch):
    before = snapshot(artifact)
    real_rename = Path.rename

    def rename(self: Path, target):
        if Path(target) == artifact and self.name.startswith(".edit."):
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(ArtifactError, match="could not save the edit .*disk full"):
        small_edit(scale=0.9).save(artifact)
    monkeypatch.undo()
    assert snapshot(artifact) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit"]


def test_cli_erase_into_a_user_folder_exits_2_and_keeps_every_file(tmp_path):
    from test_cli import run_main

    user = tmp_path / "mydata"
    user.mkdir()
    (user / "thesis.txt").write_text("years of work")
    before = snapshot(user)
    # a model that does not exist: the refusal must come before any model is loaded or fitted
    result = run_main(
        "erase", "--method", "negative-prompt", "--concept", "zorblax", "--out", str(user), "--model", "/nonexistent"
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "choose another output folder" in lines[0]
    assert snapshot(user) == before


# -- the manifest is checked: types, size, depth, content hash --------------------------------------
MALFORMED = {
    "null": (None, "must hold a JSON object, not null"),
    "list": ([1, 2], "must hold a JSON object, not list"),
    "string": ("x", "must hold a JSON object, not str"),
    "edit_type list": ({"edit_type": []}, "'edit_type' must be a non-empty string, not list"),
    "edit_type empty": ({"edit_type": ""}, "'edit_type' must be a non-empty string"),
    "plugin int": ({"plugin": 5}, "'plugin' must be a non-empty string, not int"),
    "files list": ({"files": ["weights.safetensors"]}, "'files' must be an object, not list"),
    "files null": ({"files": None}, "'files' must be an object, not null"),
    "files value int": ({"files": {"weights.safetensors": 5}}, "'files.weights.safetensors' must be a sha256"),
    "targets int": ({"targets": 5}, "'targets' must be a list of strings, not int"),
    "preserve of ints": ({"preserve": [1]}, "'preserve' must be a list of strings"),
    "format_version str": ({"format_version": "2"}, "'format_version' must be an integer, not str"),
    "format_version bool": ({"format_version": True}, "'format_version' must be an integer, not bool"),
    "extra list": ({"extra": [1]}, "'extra' must be an object, not list"),
    "config null": ({"config": None}, "'config' must be an object, not null"),
    "versions of ints": ({"versions": {"torch": 2}}, "'versions.torch' must be a string"),
    "base_model list": ({"base_model": [1]}, "'base_model' must be an object, not list"),
    "base_model unknown key": ({"base_model": {"evil": 1}}, "'base_model' has unknown keys"),
    "components list": ({"base_model": {"components": [1]}}, "'base_model.components' must be an object"),
    "fingerprint str": ({"base_model": {"components": {"unet": "x"}}}, "'base_model.components.unet' must be a"),
    "fingerprint parts": (
        {"base_model": {"components": {"unet": {"structure": "s", "version": 2, "scale": [1], "projection": "x"}}}},
        "'base_model.components.unet.projection' must be a list of finite numbers",
    ),
    "deep nesting in config": ({"config": {"a": json.loads("[" * 200 + "]" * 200)}}, "'config' is nested deeper"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("rehash", [False, True], ids=["as-is", "hash-recomputed"])
def test_malformed_manifest_is_one_line_error_naming_the_key(artifact, case, rehash):
    change, match = MALFORMED[case]
    if isinstance(change, dict):
        data = read(artifact)
        data.update(copy.deepcopy(change))
    else:
        data, rehash = change, False
    write(artifact, data, rehash=rehash)
    one_line_error(artifact, match)


@pytest.mark.parametrize(
    "raw, match",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (b"\xff\xfe\x00", "is corrupted"),
        ("{not json", "is corrupted"),
        ("", "is corrupted"),
    ],
    ids=["deep", "not-utf8", "not-json", "empty"],
)
def test_unparseable_manifest_is_one_line_error(artifact, raw, match):
    (artifact / "manifest.json").write_bytes(raw if isinstance(raw, bytes) else raw.encode())
    one_line_error(artifact, match)


def test_huge_manifest_is_refused_before_reading(artifact):
    with (artifact / "manifest.json").open("w") as handle:
        handle.write('{"config": {"x": "')
        handle.write("a" * (storage.MAX_MANIFEST_BYTES + 1))
        handle.write('"}}')
    message = one_line_error(artifact, "a manifest is at most 16 MiB")
    assert "aaaa" not in message


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(base_model={}),  # skipped the base-model check before
        lambda m: m.update(edit_type="component", artifact_kind="component"),  # applied as absolute weights
        lambda m: m.update(targets=["dog"]),
        lambda m: m["config"].update(scale=2.0),
        lambda m: m.update(format_version=3),
    ],
    ids=["base_model-emptied", "edit_type-swapped", "targets", "config", "format_version"],
)
def test_hand_edited_manifest_fails_its_content_hash(artifact, change):
    data = read(artifact)
    change(data)
    write(artifact, data)
    one_line_error(artifact, "does not match its content hash: truncated or modified")


def test_manifest_without_its_hash_is_refused(artifact):
    data = read(artifact)
    del data[storage.DIGEST_KEY]
    write(artifact, data)
    one_line_error(artifact, "lacks its content hash")
    data["format_version"] = 1
    write(artifact, data)
    one_line_error(artifact, "older conceptedit .* fit the edit again")


def test_artifact_kind_must_match_the_edit_type(artifact):
    data = read(artifact)
    data["artifact_kind"] = "runtime"
    write(artifact, data, rehash=True)
    one_line_error(artifact, "is a weight_delta edit, not 'runtime'")


def test_legitimately_saved_manifests_always_verify(tmp_path):
    """Unicode, floats, nested config and extras survive the canonical hash."""
    manifest = Manifest(
        "negative_prompt",
        "runtime",
        "negative-prompt",
        config={"x": 0.1 + 0.2, "tiny": 5e-324, "big": 10**30, "t": (1, 2), "s": "zörblax ✓ \u2028"},
        targets=["zörblax", "日本"],
        extra={"negative_text": 'a "quoted" \\ thing', "mode": "append", "nested": {"a": [1.5, -0.0, None]}},
    )
    NegativePromptEdit(manifest).save(tmp_path / "e")
    loaded = Edit.load(tmp_path / "e")
    assert loaded.manifest.targets == ["zörblax", "日本"] and loaded.manifest.config["t"] == [1, 2]


def test_saving_a_nan_manifest_is_refused(tmp_path):
    manifest = Manifest("negative_prompt", "runtime", "x", config={"scale": float("nan")}, extra={"negative_text": "c"})
    with pytest.raises(ArtifactError, match="cannot be saved as JSON"):
        NegativePromptEdit(manifest).save(tmp_path / "e")
    assert not (tmp_path / "e").exists()


# -- files stay inside the folder -------------------------------------------------------------------
@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(save({"unet.a.weight": torch.ones(4, 3)}))
    return secret


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "name, match",
    [
        ("../secret.safetensors", "must stay inside the artifact folder"),
        ("sub/../../secret.safetensors", "must stay inside the artifact folder"),
        ("ABSOLUTE", "must stay inside the artifact folder"),
        ("C:/secret.safetensors", "must stay inside the artifact folder"),
        ("..\\secret.safetensors", "not a plain relative path"),
        ("a\x00b", "not a plain relative path"),
        ("manifest.json", "may not list itself"),
    ],
)
def test_file_names_may_not_leave_the_folder(artifact, outside, name, match):
    name = str(outside) if name == "ABSOLUTE" else name
    data = read(artifact)
    data["files"][name] = sha(outside)
    write(artifact, data, rehash=True)
    one_line_error(artifact, match)


def test_symlinks_resolving_outside_are_refused(artifact, outside):
    weights = artifact / "weights.safetensors"
    shutil.copy(weights, outside)
    weights.unlink()
    weights.symlink_to(outside)  # same bytes, same hash: only the location is wrong
    one_line_error(artifact, "resolves outside the artifact folder")
    weights.unlink()
    shutil.copy(outside, weights)
    manifest = artifact / "manifest.json"
    moved = outside.with_name("manifest.json")
    shutil.move(manifest, moved)
    manifest.symlink_to(moved)
    one_line_error(artifact, "resolves outside the artifact folder")


def test_symlink_inside_the_folder_is_fine(artifact):
    (artifact / "weights.safetensors").rename(artifact / "real.safetensors")
    (artifact / "weights.safetensors").symlink_to("real.safetensors")
    assert "unet.a.weight" in Edit.load(artifact).tensors


def test_special_files_and_missing_files(artifact):
    data = read(artifact)
    os.mkfifo(artifact / "pipe.bin")  # hashing a FIFO would hang
    (artifact / "dir").mkdir()
    for name, match in (("pipe.bin", "not a regular file"), ("dir", "not a regular file"), ("gone", "missing")):
        write(artifact, {**data, "files": {**data["files"], name: "0" * 64}}, rehash=True)
        one_line_error(artifact, match)


HEADER = b'{"unet.a.weight":{"dtype":"F32","shape":[4,3],"data_offsets":[0,48]}}'


def rehash_weights(folder: Path, payload: bytes) -> None:
    (folder / "weights.safetensors").write_bytes(payload)
    data = read(folder)
    data["files"]["weights.safetensors"] = hashlib.sha256(payload).hexdigest()
    write(folder, data, rehash=True)


@pytest.mark.parametrize(
    "payload",
    [
        b"abc",
        (2**62).to_bytes(8, "little") + b"{}",
        (4).to_bytes(8, "little") + b"{{{{",
        len(HEADER).to_bytes(8, "little") + HEADER,  # tensor data promised but absent
    ],
    ids=["short", "huge-header", "bad-json", "offsets-past-end"],
)
def test_corrupt_safetensors_with_recomputed_hashes(artifact, payload):
    rehash_weights(artifact, payload)
    one_line_error(artifact, "not a readable safetensors file")


def test_truncated_safetensors_with_recomputed_hashes(artifact):
    data = (artifact / "weights.safetensors").read_bytes()
    rehash_weights(artifact, data[: len(data) - 7])
    one_line_error(artifact, "not a readable safetensors file")


def test_non_finite_weights_are_refused(artifact):
    tensors = load_file(str(artifact / "weights.safetensors"))
    tensors["unet.a.weight"][0, 0] = float("nan")
    rehash_weights(artifact, save(tensors))
    one_line_error(artifact, "holds NaN or infinite values")
    tensors["unet.a.weight"][0, 0] = float("inf")
    with pytest.raises(ArtifactError, match="NaN or infinite"):
        WeightDeltaEdit(Manifest("weight_delta", "weight_delta", "t"), tensors)


def test_integer_tensors_and_bad_keys_in_weight_edits(artifact):
    rehash_weights(artifact, save({"unet.a.weight": torch.ones(2, dtype=torch.int64)}))
    one_line_error(artifact, "must be floating point")
    rehash_weights(artifact, save({"nocomponent": torch.ones(2)}))
    one_line_error(artifact, "must look like '<component>.<parameter>'")


def test_load_of_a_file_or_missing_folder(tmp_path, outside):
    for path in (outside, tmp_path / "nope"):
        with pytest.raises(ArtifactError, match="is not an edit artifact"):
            Edit.load(path)


# -- fingerprints: the same weights in another dtype pass, other weights do not --------------------
def perturbed_(module: torch.nn.Module, rel: float, seed: int = 5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1 + rel * torch.randn(p.shape, generator=gen))


def test_fingerprint_tolerance_sits_between_dtype_rounding_and_other_weights(tiny_pipe):
    """Both sides of the tolerance, on every component (figures: benchmarks/fingerprint_tolerance.py)."""
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(tiny_pipe, name)
        reference = fingerprint(module)
        for dtype in (torch.bfloat16, torch.float16):
            assert compare(reference, fingerprint(copy.deepcopy(module).to(dtype))) is None, (name, dtype)
        noisy = copy.deepcopy(module)
        perturbed_(noisy, 0.01)
        assert "different weights" in (compare(reference, fingerprint(noisy)) or ""), name
        scaled = copy.deepcopy(module)
        with torch.no_grad():
            for p in scaled.parameters():
                p.mul_(1.01)
        assert "different weights" in (compare(reference, fingerprint(scaled)) or ""), name


def test_weight_edit_refuses_a_one_percent_perturbed_unet(tiny_pipe):
    from test_edits import make_delta_edit

    edit = make_delta_edit(tiny_pipe)
    perturbed_(tiny_pipe.unet, 0.01)
    with pytest.raises(ModelMismatchError, match="has a unet with different weights"):
        edit.apply(tiny_pipe)


def test_unet_edit_refuses_another_text_encoder(tiny_pipe, other_tiny_model_dir):
    from test_edits import make_delta_edit

    from conceptedit.loading import load_pipeline

    edit = make_delta_edit(tiny_pipe)  # the plugin named only ["unet"]
    assert edit.components == ["text_encoder", "unet"]
    tiny_pipe.text_encoder = load_pipeline(str(other_tiny_model_dir), device="cpu").text_encoder
    with pytest.raises(ModelMismatchError, match="has a text_encoder with different weights"):
        edit.apply(tiny_pipe)


def test_runtime_edit_fingerprints_the_text_encoder(tiny_pipe):
    from conceptedit.plugin import Request
    from conceptedit.registry import get_plugin

    edit = get_plugin("negative-prompt")().fit(tiny_pipe, Request(targets=["cat"]))
    assert edit.components == ["text_encoder"]

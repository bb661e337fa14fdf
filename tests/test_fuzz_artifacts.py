"""Property/fuzz suite over the artifact loader (issue 11): generated malformed manifests, file-name
fields, symlinks and corrupted safetensors. Every case ends in an Edit or an ArtifactError (never
another exception), nothing outside the artifact folder is opened, nothing is written, a manifest
changed without recomputing its hash never loads, and a legitimately saved manifest always does.
Budgeted to well under 20 s on 2 CPU cores."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from conceptedit.edits import Edit, Manifest, NegativePromptEdit, WeightDeltaEdit, storage
from conceptedit.edits import base as edits_base
from conceptedit.errors import ArtifactError
from conceptedit.fingerprint import fingerprint
from conceptedit.registry import discover

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: CI stays reproducible
    database=None,
)
KEYS = sorted(Manifest.__dataclass_fields__) + [storage.DIGEST_KEY]

json_leaf = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
file_name = st.sampled_from(
    [
        "../secret.safetensors",
        "/etc/passwd",
        "SECRET",
        "link",
        "sub/../../secret.safetensors",
        "weights.safetensors",
        "manifest.json",
        ".",
        "",
        "a\\b",
        "sub/x",
        "x\x00y",
        "C:/x",
        "dir",
    ]
) | st.text(max_size=30)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Path]:
    """A folder with a template artifact and a 'secret' file outside it that must never be opened."""
    shm = Path("/dev/shm")  # memory-backed where available: each example writes a few files
    root = Path(tempfile.mkdtemp(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None))
    tensors = {"unet.a.weight": torch.randn(4, 3), "unet.b.bias": torch.randn(4)}
    base = {"id": "tiny", "family": "sd1", "components": {"unet": fingerprint(torch.nn.Linear(3, 4))}}
    edit = WeightDeltaEdit(Manifest("weight_delta", "weight_delta", "t", targets=["cat"], base_model=base), tensors)
    edit.save(root / "template")
    (root / "secret.safetensors").write_bytes(save({"unet.a.weight": torch.ones(4, 3)}))
    discover()  # import the plugins now, not while the loader's file accesses are recorded
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def guarded(sandbox: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every path the loader opens (Python's io.open and safetensors' load_file)."""
    opened: list[Path] = []
    real_open, real_load = io.open, edits_base.load_file

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, Path)):
            opened.append(Path(file))
        return real_open(file, *args, **kwargs)

    def spy_load(file: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr(edits_base, "load_file", spy_load)
    return opened


def fresh(sandbox: Path) -> Path:
    folder = Path(tempfile.mkdtemp(dir=sandbox)) / "edit"
    shutil.copytree(sandbox / "template", folder)
    return folder


def state(root: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``root`` (symlinks not followed)."""
    out = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            out[os.path.join(folder, name)] = (info.st_size, info.st_mtime_ns)
    return out


def load_checked(folder: Path, sandbox: Path, opened: list[Path]) -> Edit | None:
    """Edit.load must return an Edit or raise a one-line ArtifactError; it opens only files inside
    ``folder`` and writes nothing."""
    before = state(sandbox)
    opened.clear()
    try:
        result: Edit | None = Edit.load(folder)
    except ArtifactError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 1000, str(exc)[:300]
        result = None
    inside = folder.resolve()
    for path in opened:
        assert path.resolve().is_relative_to(inside), f"opened {path} outside {folder}"
    assert state(sandbox) == before, "loading wrote or changed files"
    shutil.rmtree(folder.parent, ignore_errors=True)
    return result


def write_manifest(folder: Path, data: Any, rehash: bool) -> None:
    if rehash and isinstance(data, dict):
        body = {k: v for k, v in data.items() if k != storage.DIGEST_KEY}
        try:
            (folder / "manifest.json").write_text(storage.manifest_text(body))
            return
        except ArtifactError:  # NaN somewhere: cannot be hashed, write it as is
            pass
    (folder / "manifest.json").write_text(json.dumps(data))


@FUZZ
@given(
    action=st.sampled_from(["set", "delete", "add", "replace-nested"]),
    key=st.sampled_from(KEYS),
    value=json_value,
    rehash=st.booleans(),
)
def test_fuzzed_manifest_fields(sandbox, guarded, action, key, value, rehash):
    folder = fresh(sandbox)
    original = json.loads((folder / "manifest.json").read_text())
    data = json.loads(json.dumps(original))
    if action == "set":
        data[key] = value
    elif action == "delete":
        data.pop(key, None)
    elif action == "add":
        data[f"x_{key}"] = value
    else:
        target = data.get(key)
        if isinstance(target, dict):
            target[str(value)[:8]] = value
        else:
            data[key] = [value]
    write_manifest(folder, data, rehash)
    result = load_checked(folder, sandbox, guarded)
    if result is not None and not rehash:
        assert data == original, "a manifest changed without recomputing its hash was accepted"


@FUZZ
@given(document=json_value | st.binary(max_size=64).map(lambda b: b.decode("latin-1")))
def test_fuzzed_whole_manifest(sandbox, guarded, document):
    folder = fresh(sandbox)
    (folder / "manifest.json").write_text(document if isinstance(document, str) else json.dumps(document))
    assert load_checked(folder, sandbox, guarded) is None


@FUZZ
@given(
    names=st.lists(file_name, min_size=1, max_size=3),
    links=st.lists(st.sampled_from(["link", "sub", "weights.safetensors", "dir"]), max_size=2),
    link_target=st.sampled_from(["secret", "inside", "parent", "dangling", "self"]),
)
def test_fuzzed_file_names_and_symlinks(sandbox, guarded, names, links, link_target):
    folder = fresh(sandbox)
    secret = sandbox / "secret.safetensors"
    (folder / "dir").mkdir()
    targets = {"secret": secret, "inside": folder / "dir", "parent": sandbox, "dangling": sandbox / "nope"}
    for link in links:
        path = folder / link
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        path.symlink_to(targets.get(link_target, path))
    data = json.loads((folder / "manifest.json").read_text())
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    for name in names:
        data["files"][str(secret) if name == "SECRET" else name] = digest
    write_manifest(folder, data, rehash=True)
    result = load_checked(folder, sandbox, guarded)
    if result is not None:  # only names of real files inside the folder can have loaded
        assert all(not n.startswith("/") and ".." not in n for n in result.manifest.files)


@FUZZ
@given(
    how=st.sampled_from(["truncate", "flip", "random", "header"]),
    where=st.floats(min_value=0, max_value=1),
    payload=st.binary(max_size=64),
)
def test_fuzzed_safetensors_bytes(sandbox, guarded, how, where, payload):
    folder = fresh(sandbox)
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    cut = int(where * len(data))
    if how == "truncate":
        data = data[:cut]
    elif how == "flip":
        for i, byte in enumerate(payload or b"\xff"):
            data[(cut + i) % len(data)] ^= byte or 1
    elif how == "random":
        data = bytearray(payload)
    else:  # a header length pointing anywhere, then arbitrary bytes
        data = bytearray(int(where * (2**64 - 1)).to_bytes(8, "little") + payload)
    weights.write_bytes(bytes(data))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["weights.safetensors"] = hashlib.sha256(bytes(data)).hexdigest()
    write_manifest(folder, manifest, rehash=True)  # a hash-recomputing tamperer: the parser is reached
    load_checked(folder, sandbox, guarded)


@FUZZ
@given(
    config=st.dictionaries(st.text(max_size=10), json_value, max_size=4),
    targets=st.lists(st.text(min_size=1, max_size=10), max_size=3),
    text=st.text(min_size=1, max_size=20).filter(str.strip),
)
def test_legitimately_saved_artifacts_always_load(sandbox, config, targets, text):
    folder = Path(tempfile.mkdtemp(dir=sandbox)) / "edit"
    manifest = Manifest(
        "negative_prompt", "runtime", "p", config=config, targets=targets, extra={"negative_text": text}
    )
    try:
        NegativePromptEdit(manifest).save(folder)
    except ArtifactError as exc:  # only NaN/infinity cannot be saved as JSON
        assert "cannot be saved as JSON" in str(exc)
        return
    loaded = Edit.load(folder)
    assert loaded.manifest.targets == targets and loaded.manifest.extra["negative_text"] == text


def test_a_manifest_without_versions_reads_as_unknown_not_as_this_machines(tmp_path):
    """Filling a missing "versions" from the installed libraries would be a silent wrong value (and read files
    outside the artifact: the packages' metadata; found by the fuzzer in a fresh CI clone)."""
    from conceptedit.edits.base import Manifest

    data = {"edit_type": "weight_delta", "artifact_kind": "weight_delta", "plugin": "uce"}
    assert Manifest.from_dict(data, tmp_path).versions == {}

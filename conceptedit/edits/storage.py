"""The on-disk side of Edit artifacts: reading a manifest defensively, keeping every file inside its
folder, the manifest's content hash, and saving without destroying what the user did not create.

What the hashes protect against: ``manifest.files`` holds the SHA-256 of every data file, and
``manifest_sha256`` the SHA-256 of the manifest's own content (canonical JSON of every other key).
Together they detect an artifact that was truncated, corrupted, or edited by hand or by a tool that
does not know to recompute them (a ``base_model`` emptied, an ``edit_type`` swapped, a weight file
replaced). They are not signatures: anyone who can write the folder can recompute them, so they say
nothing about who made an artifact. Trust an artifact as much as its source; loading one still never
executes code (JSON and safetensors only) and never reads outside its folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from conceptedit.errors import ArtifactError

MANIFEST = "manifest.json"
DIGEST_KEY = "manifest_sha256"
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_DEPTH = 32


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_digest(data: dict[str, Any]) -> str:
    """SHA-256 of ``data`` as canonical JSON (sorted keys, no spaces, ASCII); raises ValueError on NaN/inf."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_text(data: dict[str, Any]) -> str:
    """The manifest file's text: ``data`` plus the hash of its content."""
    try:
        data = json.loads(json.dumps(data, allow_nan=False))  # normalise (tuples -> lists) before hashing
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"the manifest cannot be saved as JSON ({exc}); plugins must store JSON values") from None
    data[DIGEST_KEY] = canonical_digest(data)
    return json.dumps(data, indent=2, sort_keys=True)


# -- reading -------------------------------------------------------------------------------------
def _inside(folder: Path, name: str) -> Path:
    """``folder / name`` if it resolves to a regular file inside ``folder`` (symlinks followed), else raise."""
    if not isinstance(name, str) or not name or len(name) > 255 or "\x00" in name or "\\" in name:
        raise ArtifactError(f"{folder}: manifest lists a file name that is not a plain relative path")
    parts = name.split("/")
    if ":" in parts[0] or any(p in ("", ".", "..") for p in parts):  # absolute ("/x" has an empty first part)
        raise ArtifactError(f"{folder}: manifest file name {name[:80]!r} must stay inside the artifact folder")
    try:
        root = folder.resolve()
        path = (root / name).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise ArtifactError(f"{folder}: {name[:80]!r} is a symlink loop") from None
    if not path.is_relative_to(root):
        raise ArtifactError(f"{folder}: {name[:80]!r} resolves outside the artifact folder (a symlink?); refused")
    try:
        mode = path.stat().st_mode
    except OSError:
        raise ArtifactError(f"{folder}: file {name[:80]!r} listed in the manifest is missing") from None
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{folder}: {name[:80]!r} is not a regular file")
    return path


def _too_deep(value: Any) -> bool:
    """True when ``value`` nests objects/lists deeper than MAX_DEPTH (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def read_manifest_file(folder: Path) -> dict[str, Any]:
    """The parsed manifest of ``folder`` (a JSON object of bounded size and depth), or ArtifactError."""
    if not folder.is_dir() or not os.path.lexists(folder / MANIFEST):
        raise ArtifactError(f"{folder} is not an edit artifact (no {MANIFEST})")
    path = _inside(folder, MANIFEST)
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is {size / 2**20:.0f} MiB; a manifest is at most {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupted: {str(exc)[:200]}") from None
    except RecursionError:
        raise ArtifactError(f"{path} is nested too deeply to be a manifest") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, not {_type(data)}")
    for key, value in data.items():
        if _too_deep(value):
            raise ArtifactError(f"{path}: manifest key {key!r} is nested deeper than {MAX_DEPTH} levels")
    return data


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(where: Path, key: str, expected: str, value: Any) -> ArtifactError:
    return ArtifactError(f"{where}: manifest key {key!r} must be {expected}, not {_type(value)}")


def check_manifest_types(data: dict[str, Any], where: Path) -> None:
    """Raise a one-line ArtifactError naming the first key whose value has the wrong type."""
    for key in ("edit_type", "artifact_kind", "plugin", "created_at"):
        if key in data and not (isinstance(data[key], str) and (data[key] or key == "created_at")):
            raise _fail(where, key, "a non-empty string", data[key])
    for key in ("config", "extra", "base_model", "versions", "files"):
        if key in data and not isinstance(data[key], dict):
            raise _fail(where, key, "an object", data[key])
    for key in ("targets", "preserve"):
        if key in data and not (isinstance(data[key], list) and all(isinstance(v, str) for v in data[key])):
            raise _fail(where, key, "a list of strings", data[key])
    if "format_version" in data and not (isinstance(data["format_version"], int) and _number(data["format_version"])):
        raise _fail(where, "format_version", "an integer", data["format_version"])
    for name, value in data.get("versions", {}).items():
        if not isinstance(value, str):
            raise _fail(where, f"versions.{name}", "a string", value)
    for name, value in data.get("files", {}).items():
        if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
            raise _fail(where, f"files.{name[:80]}", "a sha256 hex digest", value)
    base = data.get("base_model", {})
    unknown = sorted(set(base) - {"id", "family", "components"})
    if unknown:
        raise ArtifactError(f"{where}: manifest key 'base_model' has unknown keys {unknown[:5]}")
    for key in ("id", "family"):
        if base.get(key) is not None and not isinstance(base[key], str):
            raise _fail(where, f"base_model.{key}", "a string", base[key])
    components = base.get("components", {})
    if not isinstance(components, dict):
        raise _fail(where, "base_model.components", "an object", components)
    for name, fp in components.items():
        key = f"base_model.components.{name[:40]}"
        if not isinstance(fp, dict):
            raise _fail(where, key, "a fingerprint object", fp)
        if not isinstance(fp.get("structure"), str) or not isinstance(fp.get("version"), int):
            raise ArtifactError(f"{where}: manifest key {key!r} lacks a fingerprint 'structure' and 'version'")
        for part in ("scale", "projection"):
            if not (isinstance(fp.get(part), list) and all(_number(v) for v in fp[part])):
                raise _fail(where, f"{key}.{part}", "a list of finite numbers", fp.get(part))
        if len(fp["scale"]) != len(fp["projection"]):
            raise ArtifactError(f"{where}: manifest key {key!r} has scale and projection of different lengths")


def verify_digest(data: dict[str, Any], where: Path) -> dict[str, Any]:
    """``data`` without its content hash, after checking the hash; raise if absent or different."""
    data = dict(data)
    claimed = data.pop(DIGEST_KEY, None)
    if claimed is None:
        if data.get("format_version", 1) < 2:
            raise ArtifactError(
                f"{where} was saved by an older conceptedit (artifact format 1, no manifest hash); fit the edit again"
            )
        raise ArtifactError(f"{where}: manifest lacks its content hash {DIGEST_KEY!r}")
    try:
        actual = canonical_digest(data)
    except ValueError:
        raise ArtifactError(f"{where}: manifest holds a non-finite number (NaN or infinity)") from None
    if claimed != actual:
        raise ArtifactError(
            f"{where}: manifest.json does not match its content hash: truncated or modified after it was "
            "saved; fit or save the edit again rather than editing the manifest"
        )
    return data


def data_file(folder: Path, name: str, digest: str) -> Path:
    """The path of a listed data file after checking it stays inside ``folder`` and matches ``digest``."""
    if name == MANIFEST:
        raise ArtifactError(f"{folder}: the manifest may not list itself as a data file")
    path = _inside(folder, name)
    if sha256_file(path) != digest:
        raise ArtifactError(f"{folder / name} does not match its hash in the manifest: truncated or modified")
    return path


# -- saving --------------------------------------------------------------------------------------
def _artifact_entries(folder: Path) -> set[str] | None:
    """Top-level names belonging to the artifact in ``folder``, or None if it holds no artifact manifest."""
    try:
        data = read_manifest_file(folder)
    except ArtifactError:
        return None
    files = data.get("files")
    if not all(isinstance(data.get(k), str) for k in ("edit_type", "artifact_kind", "plugin")) or not isinstance(
        files, dict
    ):
        return None
    return {MANIFEST} | {str(name).split("/")[0] for name in files}


def check_save_target(target: Path) -> None:
    """Raise unless ``target`` is new, an empty folder, or an edit artifact with nothing else in it.

    Saving replaces the folder, so anything else there would be lost.
    """
    advice = "choose another output folder (--out) or remove it yourself"
    if target.is_symlink():
        raise ArtifactError(f"{target} is a symbolic link; {advice}")
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise ArtifactError(f"{target} exists and is a file, not an edit artifact folder; {advice}")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    owned = _artifact_entries(target)
    stray = [e for e in entries if owned is None or e not in owned]
    if stray:
        shown = ", ".join(stray[:3]) + (f" and {len(stray) - 3} more" if len(stray) > 3 else "")
        what = "is not an edit artifact" if owned is None else "is an edit artifact but also holds other files"
        raise ArtifactError(f"{target} {what} ({shown}); saving would delete them: {advice}")


def replace_folder(new: Path, target: Path) -> None:
    """Move the finished folder ``new`` to ``target``; an earlier artifact there survives any failure."""
    if not os.path.lexists(target):
        new.rename(target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    try:
        target.rename(aside / "old")
    except OSError:
        aside.rmdir()
        raise
    try:
        new.rename(target)
    except OSError:
        (aside / "old").rename(target)  # put the earlier artifact back
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)

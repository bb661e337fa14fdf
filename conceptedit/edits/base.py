"""Edit artifacts: what a plugin's ``fit`` returns, and what can be applied, stacked, removed,
saved, shared and loaded again.

An Edit on disk is a folder: tensors in safetensors and ``manifest.json`` (plugin, config, concepts,
base model id and fingerprints of the components it touches, library versions, file hashes).
Loading never executes anything from the folder: the manifest's ``edit_type`` selects a class
registered in this process, and only tensors and JSON are read, never outside the folder. File hashes
and the manifest's own content hash detect accidents and hand edits, not forgery (``storage``).
Saving replaces only an earlier artifact or an empty folder, never a user's files.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from conceptedit.edits.storage import (
    MANIFEST,
    check_manifest_types,
    check_save_target,
    data_file,
    manifest_text,
    read_manifest_file,
    replace_folder,
    sha256_file,
    verify_digest,
)
from conceptedit.errors import ArtifactError, ArtifactWriteError, ConceptEditError, ModelMismatchError
from conceptedit.fingerprint import compare, fingerprint
from conceptedit.registry import EDIT_TYPES, get_edit_type

FORMAT_VERSION = 2  # 2: manifest content hash, fingerprints with scale + projection
ARTIFACT_KINDS = ("weight_delta", "lora", "component", "runtime")

Undo = Callable[[], None]


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("conceptedit", "torch", "diffusers", "transformers", "peft", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


@dataclass
class Manifest:
    """Everything needed to know what an Edit is, where it came from and whether it fits a model."""

    edit_type: str
    artifact_kind: str
    plugin: str
    config: dict[str, Any] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)
    preserve: list[str] = field(default_factory=list)
    base_model: dict[str, Any] = field(default_factory=dict)  # id, family, components: {name: fingerprint}
    extra: dict[str, Any] = field(default_factory=dict)  # edit-type specific JSON (scale, threshold ...)
    versions: dict[str, str] = field(default_factory=library_versions)
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> Manifest:
        check_manifest_types(data, where)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ArtifactError(f"{where}: unknown manifest keys {unknown}; made by a newer conceptedit?")
        missing = [k for k in ("edit_type", "artifact_kind", "plugin") if k not in data]
        if missing:
            raise ArtifactError(f"{where}: manifest lacks {missing}")
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise ArtifactError(f"{where}: artifact format {data['format_version']} is newer than this conceptedit")
        # a manifest without "versions" says nothing about what made it: record that, not this machine's
        return cls(**({"versions": {}} | data))


def base_fingerprints(pipe: Any, components: list[str]) -> dict[str, dict[str, Any]]:
    """Fingerprints of ``components`` as they were before any conceptedit edit was applied."""
    stack = edit_stack(pipe)
    if not stack.entries:
        stack.base_fingerprints.clear()  # the weights may have changed outside conceptedit
    out = {}
    for name in components:
        if name not in stack.base_fingerprints:
            module = getattr(pipe, name, None)
            if not isinstance(module, torch.nn.Module):
                raise ModelMismatchError(f"the pipeline has no component {name!r} that this edit needs")
            stack.base_fingerprints[name] = fingerprint(module)
        out[name] = stack.base_fingerprints[name]
    return out


class Edit:
    """Base class of every artifact kind. Subclasses set ``edit_type`` and implement ``_attach``."""

    edit_type: ClassVar[str] = ""
    artifact_kind: ClassVar[str] = ""
    weights_file: ClassVar[str] = "weights.safetensors"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.edit_type:
            if cls.artifact_kind not in ARTIFACT_KINDS:
                raise ValueError(f"{cls.__name__}.artifact_kind must be one of {ARTIFACT_KINDS}")
            EDIT_TYPES.register(cls.edit_type, cls)

    def __init__(self, manifest: Manifest, tensors: dict[str, torch.Tensor] | None = None) -> None:
        self.manifest = manifest
        self.tensors = dict(tensors or {})
        self.validate()

    # -- what subclasses provide -------------------------------------------------------------
    def validate(self) -> None:
        """Check tensors and ``manifest.extra`` fit this edit type (raise ArtifactError)."""

    def _attach(self, pipe: Any) -> Undo:
        """Change the pipeline and return a function that restores exactly what it changed."""
        raise NotImplementedError

    # -- public API ------------------------------------------------------------------------
    @property
    def components(self) -> list[str]:
        return sorted(self.manifest.base_model.get("components", {}))

    def touched_components(self) -> set[str]:
        """Components whose weights this edit changes (weight edits name them in their tensor keys)."""
        return set()

    def depends_on(self, pipe: Any, components: list[str]) -> list[str]:
        """The components whose fingerprints guard this edit: those the plugin named, those it changes,
        and the text encoder(s) whenever the UNet is changed (a UNet edit is fitted to the embeddings
        the text encoder gives the concept, so another text encoder makes it miss)."""
        names = set(components) | self.touched_components()
        if "unet" in names:
            names |= {
                n for n in ("text_encoder", "text_encoder_2") if isinstance(getattr(pipe, n, None), torch.nn.Module)
            }
        return sorted(names)

    def record_base(self, pipe: Any, components: list[str]) -> None:
        """Store the base model id, family and fingerprints of every component the edit depends on."""
        from conceptedit.families import detect_family
        from conceptedit.loading import model_id

        self.manifest.base_model = {
            "id": model_id(pipe),
            "family": detect_family(pipe),
            "components": base_fingerprints(pipe, self.depends_on(pipe, components)),
        }

    def check_compatible(self, pipe: Any) -> None:
        from conceptedit.loading import model_id

        expected = self.manifest.base_model.get("components", {})
        actual = base_fingerprints(pipe, list(expected))
        for name, fp in expected.items():
            problem = compare(fp, actual[name])
            if problem:
                raise ModelMismatchError(
                    f"edit {self.manifest.plugin!r} was made for base model "
                    f"{self.manifest.base_model.get('id')!r}, but this pipeline ({model_id(pipe)!r}) has a "
                    f"{name} with {problem}. Fit the edit on this model, or pass strict=False to apply anyway."
                )

    def apply(self, pipe: Any, *, strict: bool = True) -> EditHandle:
        """Apply to ``pipe``; the returned handle's ``remove()`` restores the pipeline bit for bit."""
        if strict:
            self.check_compatible(pipe)
        return edit_stack(pipe).push(self)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the artifact atomically: a failed save leaves an earlier artifact at ``folder`` intact.

        ``folder`` may be new, empty or an earlier artifact; a folder holding anything else, or a
        file, is refused (saving replaces the whole folder, so those files would be lost).
        """
        target = Path(folder)
        check_save_target(target)
        tmp: Path | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            files = self._write_tensors(tmp)
            self.manifest.files = {name: sha256_file(tmp / name) for name in files}
            (tmp / MANIFEST).write_text(manifest_text(asdict(self.manifest)))
            replace_folder(tmp, target)
        except OSError as exc:
            raise ArtifactWriteError(f"could not save the edit to {target}: {exc}") from exc
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _write_tensors(self, folder: Path) -> list[str]:
        if not self.tensors:
            return []
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.tensors.items()}
        save_file(tensors, str(folder / self.weights_file))
        return [self.weights_file]

    @staticmethod
    def load(folder: str | os.PathLike) -> Edit:
        """Read an artifact folder, verifying the manifest's and every file's hash; nothing in it is
        executed and nothing outside it is read. Any problem is an ArtifactError."""
        path = Path(folder)
        data = read_manifest_file(path)
        check_manifest_types(data, path)
        for key in ("edit_type", "plugin"):
            if key not in data:
                raise ArtifactError(f"{path}: manifest lacks {key!r}")
        try:
            cls = get_edit_type(data["edit_type"], data["plugin"])
        except ArtifactError as exc:
            raise ArtifactError(f"{path}: {exc}") from None
        manifest = Manifest.from_dict(verify_digest(data, path), path)
        if manifest.artifact_kind != cls.artifact_kind:
            raise ArtifactError(
                f"{path}: edit type {manifest.edit_type!r} is a {cls.artifact_kind} edit, "
                f"not {manifest.artifact_kind!r} as the manifest says"
            )
        tensors: dict[str, torch.Tensor] = {}
        for name, digest in manifest.files.items():
            file = data_file(path, name, digest)
            if name.endswith(".safetensors"):
                try:
                    loaded = load_file(str(file))
                except Exception as exc:  # noqa: BLE001 - any parse failure of a hashed file is corruption
                    message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                    raise ArtifactError(f"{file} is not a readable safetensors file: {message}") from None
                clash = sorted(set(loaded) & set(tensors))
                if clash:
                    raise ArtifactError(f"{file} repeats tensor {clash[0][:80]!r} of another file of the artifact")
                tensors.update(loaded)
        try:
            return cls(manifest, tensors)
        except ConceptEditError as exc:
            raise ArtifactError(f"{path}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a subclass's checks tripping over malformed content
            message = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise ArtifactError(
                f"{path}: not a valid {manifest.edit_type} artifact ({type(exc).__name__}: {message})"
            ) from None

    def __repr__(self) -> str:
        m = self.manifest
        return f"<{type(self).__name__} plugin={m.plugin!r} targets={m.targets} base={m.base_model.get('id')!r}>"


class EditHandle:
    """Returned by ``Edit.apply``; ``remove()`` (or leaving the ``with`` block) undoes the edit."""

    def __init__(self, stack: EditStack, edit: Edit) -> None:
        self.stack = stack
        self.edit = edit
        self.active = True

    def remove(self) -> None:
        if self.active:
            self.stack.remove(self)

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __getattr__(self, name: str) -> Any:  # e.g. handle.classify(...) for runtime edits
        return getattr(self.edit, name)


class EditStack:
    """The edits applied to one pipeline, in order. Removing one from the middle undoes the ones
    above it, removes it, and re-applies them, so every removal restores exactly."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.entries: list[tuple[EditHandle, Undo]] = []
        self.base_fingerprints: dict[str, dict[str, Any]] = {}

    def push(self, edit: Edit) -> EditHandle:
        if not self.entries:  # remember the base model before anything changes it
            modules = [n for n, m in vars(self.pipe).items() if isinstance(m, torch.nn.Module)]
            base_fingerprints(self.pipe, modules)
        handle = EditHandle(self, edit)
        self.entries.append((handle, edit._attach(self.pipe)))
        return handle

    def remove(self, handle: EditHandle) -> None:
        index = next(i for i, (h, _) in enumerate(self.entries) if h is handle)
        above = self.entries[index + 1 :]
        for _, undo in reversed(self.entries[index:]):
            undo()
        del self.entries[index:]
        handle.active = False
        for h, _ in above:
            self.entries.append((h, h.edit._attach(self.pipe)))

    @property
    def edits(self) -> list[Edit]:
        return [h.edit for h, _ in self.entries]


def edit_stack(pipe: Any) -> EditStack:
    stack = pipe.__dict__.get("_conceptedit_stack")
    if stack is None:
        stack = EditStack(pipe)
        object.__setattr__(pipe, "_conceptedit_stack", stack)
    return stack


def applied_edits(pipe: Any) -> list[Edit]:
    """The edits currently applied to ``pipe``, bottom first."""
    return edit_stack(pipe).edits

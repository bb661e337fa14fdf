"""The plugin contract: a registered method with a typed config whose defaults are its paper's.

A plugin reads top to bottom like the paper's method section: ``Config`` (dataclass), ``fit``
(pipeline + request → Edit, report or edited image), and the Edit class that applies it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from conceptedit.config import config_from_dict, config_to_dict
from conceptedit.edits.base import Edit, Manifest
from conceptedit.errors import RequestError
from conceptedit.families import SD_FAMILIES, require_family
from conceptedit.toolkit import Progress, no_progress

PluginKind = Literal["erase", "edit", "analyze", "attack"]
PLUGIN_KINDS: tuple[str, ...] = ("erase", "edit", "analyze", "attack")


def _clean_concepts(values: Sequence[str] | str | None, what: str) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values:
        if not isinstance(value, str):
            raise RequestError(f"{what} must be text, got {value!r}")
        text = " ".join(value.split())
        if not text:
            raise RequestError(f"{what} contains an empty concept; give the concept as words, e.g. 'van gogh'")
        out.append(text)
    return out


@dataclass
class Request:
    """What the user asks for. Validated on construction, before any work starts."""

    targets: list[str]
    preserve: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)  # a few images of the concept (few-shot methods)
    prompts: list[str] = field(default_factory=list)  # extra prompts (e.g. ones that contain the concept)
    retain_prompts: list[str] = field(default_factory=list)  # prompts whose outputs must not change
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.targets = _clean_concepts(self.targets, "targets")
        if not self.targets:
            raise RequestError("no target concept given; name at least one concept to erase or edit")
        self.preserve = _clean_concepts(self.preserve, "preserve")
        # the tokenizer lowercases, so "Cat" and "cat" are the same concept to the model
        preserved = {p.casefold() for p in self.preserve}
        overlap = sorted(t for t in self.targets if t.casefold() in preserved)
        if overlap:
            raise RequestError(f"concepts {overlap} are both targets and preserved (compared ignoring case)")
        self.images = [Path(p) for p in self.images]
        missing = [str(p) for p in self.images if not p.exists()]
        if missing:
            raise RequestError(f"image path(s) not found: {', '.join(missing)}")
        self.prompts = _clean_concepts(self.prompts, "prompts")
        self.retain_prompts = _clean_concepts(self.retain_prompts, "retain_prompts")


class Plugin:
    """Base class. Subclasses set the class attributes and implement :meth:`fit`."""

    name: ClassVar[str] = ""
    kind: ClassVar[PluginKind] = "erase"
    Config: ClassVar[type] = type(None)
    families: ClassVar[tuple[str, ...]] = SD_FAMILIES
    artifact_kind: ClassVar[str] = "runtime"  # weight_delta | lora | component | runtime | report | image
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    def __init__(self, config: Any = None, **overrides: Any) -> None:
        if config is None or isinstance(config, dict):
            self.config = config_from_dict(self.Config, {**(config or {}), **overrides})
        elif isinstance(config, self.Config):
            self.config = dataclasses.replace(config, **overrides) if overrides else config
        else:
            raise TypeError(f"{self.name}: config must be a {self.Config.__name__} or a dict")

    @classmethod
    def for_pipeline(cls, pipe: Any, overrides: dict[str, Any] | None = None) -> Plugin:
        """The plugin configured with the model's presets (if it ships any), then ``overrides``."""
        from conceptedit.loading import plugin_presets

        return cls({**plugin_presets(pipe, cls.name), **(overrides or {})})

    def check_pipeline(self, pipe: Any) -> str:
        """Raise before any work if the pipeline's family is not supported; return the family."""
        return require_family(pipe, self.families, f"plugin {self.name!r}")

    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> Any:
        raise NotImplementedError

    def manifest(self, edit_type: str, artifact_kind: str, request: Request, **extra: Any) -> Manifest:
        """A manifest pre-filled with this plugin's name, config and the request's concepts."""
        return Manifest(
            edit_type=edit_type,
            artifact_kind=artifact_kind,
            plugin=self.name,
            config=config_to_dict(self.config),
            targets=list(request.targets),
            preserve=list(request.preserve),
            extra=dict(extra),
        )

    def finish(self, edit: Edit, pipe: Any, components: list[str]) -> Edit:
        """Record the base model's id and fingerprints of ``components`` in the edit's manifest."""
        edit.record_base(pipe, components)
        return edit


@dataclass
class Report:
    """What an ``analyze`` plugin returns: tables (rows of dicts), figures (PNG paths) and a summary."""

    title: str
    summary: str = ""
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "summary": self.summary,
            "tables": self.tables,
            "figures": {k: str(v) for k, v in self.figures.items()},
            "data": self.data,
        }


class ImageEditPlugin(Plugin):
    """Base of ``edit`` plugins (e.g. Concept Lancet): transform one image under an instruction.

    ``request.targets`` holds the concept(s) to edit; the source image, its prompt and the
    instruction come as arguments.
    """

    kind = "edit"
    artifact_kind = "image"

    def edit_image(
        self,
        pipe: Any,
        image: Any,
        source_prompt: str,
        target_prompt: str,
        *,
        seed: int = 0,
        progress: Progress = no_progress,
    ) -> Any:
        raise NotImplementedError

    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> Any:
        extra = request.extra
        missing = [k for k in ("image", "source_prompt", "target_prompt") if k not in extra]
        if missing:
            raise RequestError(f"plugin {self.name!r} edits an image; the request lacks {missing}")
        return self.edit_image(
            pipe,
            extra["image"],
            extra["source_prompt"],
            extra["target_prompt"],
            seed=int(extra.get("seed", 0)),
            progress=progress,
        )


class AnalysisPlugin(Plugin):
    """Base of ``analyze`` plugins (e.g. blindspots): ``fit`` returns a :class:`Report`, not an Edit."""

    kind = "analyze"
    artifact_kind = "report"

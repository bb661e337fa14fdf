"""Runtime interventions: edits that change how a pipeline runs, not its weights.

Three shapes cover the plugins: activation hooks on named modules (ItD), a transform of the prompt
embeddings, and a negative-prompt policy. All of them work through the ordinary ``pipe(...)``
call. Prompt-level interventions wrap ``pipe.encode_prompt`` on the instance; removal restores the
previous attribute, so the class method is used again exactly as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from conceptedit.edits.base import Edit, Undo
from conceptedit.errors import ArtifactError, ConceptEditError
from conceptedit.hooks import add_output_transform

_MISSING = object()


@dataclass(frozen=True)
class PromptDecision:
    """Why a prompt-classifying edit (ItD) did or did not intervene on a prompt."""

    prompt: str
    score: float
    threshold: float
    fired: bool


@runtime_checkable
class PromptClassifier(Protocol):
    """Runtime edits that decide per prompt (the demo and the evaluation show these decisions)."""

    def classify(self, prompts: list[str]) -> list[PromptDecision]: ...


@runtime_checkable
class FeatureExplainer(Protocol):
    """SAE-backed edits: the strongest features of a prompt, as dicts with ``feature`` and ``activation``."""

    def explain(self, prompt: str, top_n: int = 10) -> list[dict[str, Any]]: ...


def wrap_encode_prompt(pipe: Any, make_wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Undo:
    """Replace ``pipe.encode_prompt`` by ``make_wrapper(current)``; return the exact undo."""
    if not hasattr(pipe, "encode_prompt"):
        raise ConceptEditError(f"{type(pipe).__name__} has no encode_prompt; prompt edits cannot attach to it")
    previous = pipe.__dict__.get("encode_prompt", _MISSING)
    object.__setattr__(pipe, "encode_prompt", make_wrapper(pipe.encode_prompt))

    def undo() -> None:
        if previous is _MISSING:
            pipe.__dict__.pop("encode_prompt", None)
        else:
            object.__setattr__(pipe, "encode_prompt", previous)

    return undo


def _as_list(prompt: str | list[str] | None, n: int) -> list[str]:
    if prompt is None:
        return [""] * n
    if isinstance(prompt, str):
        return [prompt] * n
    return list(prompt)


class NegativePromptEdit(Edit):
    """Adds the erased concept(s) to every negative prompt (SLD / Geom-Erasing's baseline).

    With ``guidance_scale <= 1`` there is no unconditional branch, so a negative prompt has no
    effect; that is a property of the method, not of this implementation.
    """

    edit_type = "negative_prompt"
    artifact_kind = "runtime"

    def validate(self) -> None:
        text = self.manifest.extra.get("negative_text")
        if not isinstance(text, str) or not text.strip():
            raise ArtifactError("negative_prompt edit needs a non-empty extra.negative_text")
        if self.manifest.extra.get("mode", "append") not in ("append", "replace"):
            raise ArtifactError("negative_prompt extra.mode must be 'append' or 'replace'")

    def negative_for(self, user_negative: str) -> str:
        text = self.manifest.extra["negative_text"]
        if self.manifest.extra.get("mode", "append") == "replace" or not user_negative.strip():
            return text
        return f"{user_negative}, {text}"

    def _attach(self, pipe: Any) -> Undo:
        def make_wrapper(encode: Callable[..., Any]) -> Callable[..., Any]:
            # bound by name against the pipeline class's own signature (an edit stacked below may wrap it as
            # (*args, **kwargs)): SD's takes (prompt, device, ...), SDXL's (prompt, prompt_2, device, ...)
            signature = inspect.signature(type(pipe).encode_prompt.__get__(pipe, type(pipe)))

            def encode_prompt(*args: Any, **kwargs: Any) -> Any:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                given = bound.arguments
                if given.get("do_classifier_free_guidance") and given.get("negative_prompt_embeds") is None:
                    prompt = given["prompt"]
                    n = len(prompt) if isinstance(prompt, list) else 1
                    for key in ("negative_prompt", "negative_prompt_2"):  # _2: SDXL; None there reuses the first
                        if key == "negative_prompt" or given.get(key) is not None:
                            negatives = [self.negative_for(p) for p in _as_list(given[key], n)]
                            # diffusers wants the negative prompt of the prompt's type: pipe("a cat") passes a str
                            given[key] = negatives if isinstance(prompt, list) else negatives[0]
                return encode(*bound.args, **bound.kwargs)

            return encode_prompt

        return wrap_encode_prompt(pipe, make_wrapper)


class ActivationHookEdit(Edit):
    """Base for edits that transform the output of named modules (``<component>.<module path>``).

    Subclasses implement ``transform(module_key, hidden) -> hidden`` and list their hook points in
    ``hook_points``.
    """

    artifact_kind = "runtime"

    @property
    def hook_points(self) -> list[str]:
        return list(self.manifest.extra.get("hook_points", []))

    def transform(self, module_key: str, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _attach(self, pipe: Any) -> Undo:
        handles = []
        for key in self.hook_points:
            component, _, path = key.partition(".")
            root = getattr(pipe, component, None)
            if root is None:
                raise ConceptEditError(f"the pipeline has no component {component!r} for hook {key!r}")
            handles.append(add_output_transform(root, path, lambda h, k=key: self.transform(k, h)))

        def undo() -> None:
            for handle in handles:
                handle.remove()

        return undo

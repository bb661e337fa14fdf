"""Seeded, batched generation: the same (model, edits, prompt, seed, settings) gives the same image,
and base and edited pipelines share seeds so they compare pairwise."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from conceptedit.devices import generator_for
from conceptedit.errors import ConceptEditError, ConfigError
from conceptedit.loading import generation_defaults, model_id
from conceptedit.validate import check_generation_settings, check_int, check_seed


def generation_settings(pipe: Any, **overrides: Any) -> dict[str, Any]:
    """The model's shipped defaults (if any), overridden by explicit non-None values."""
    settings = generation_defaults(pipe)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def check_request(
    prompts: Sequence[str] | str, seeds: Sequence[int] | int, batch_size: int
) -> tuple[list[str], list[int], int]:
    """Prompts as a list (one string is one prompt, not one per letter), one valid seed per prompt and a
    batch size >= 1, checked before any work."""
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    bad = [p for p in prompt_list if not isinstance(p, str)]
    if bad:
        raise ConfigError(f"prompts must be text, got {type(bad[0]).__name__}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        seed_list = [check_seed(seeds)] * len(prompt_list)
    else:
        seed_list = [check_seed(s) for s in seeds]
    if len(seed_list) != len(prompt_list):
        raise ConfigError(f"{len(prompt_list)} prompts but {len(seed_list)} seeds; give one seed per prompt")
    return prompt_list, seed_list, check_int("batch_size", batch_size, 1)


def iter_generate(
    pipe: Any,
    prompts: Sequence[str] | str,
    seeds: Sequence[int] | int = 0,
    *,
    batch_size: int = 8,
    negative_prompt: str | None = None,
    progress: bool = False,
    **settings: Any,
) -> Iterator[tuple[int, list[Image.Image]]]:
    """Like :func:`generate`, but yields ``(index of the batch's first prompt, images)`` as each batch
    finishes, so a caller can write it before the next one starts (a killed run keeps what it made)."""
    prompt_list, seed_list, batch_size = check_request(prompts, seeds, batch_size)
    kwargs = check_generation_settings(generation_settings(pipe, **settings))
    starts = range(0, len(prompt_list), batch_size)
    for start in tqdm(starts, desc="generate", disable=not progress, unit="batch"):
        chunk = prompt_list[start : start + batch_size]
        gens = [generator_for(s) for s in seed_list[start : start + batch_size]]
        negative = None if negative_prompt is None else [negative_prompt] * len(chunk)
        out = pipe(prompt=chunk, negative_prompt=negative, generator=gens, output_type="pil", **kwargs)
        yield start, list(out.images)


def generate(
    pipe: Any,
    prompts: Sequence[str] | str,
    seeds: Sequence[int] | int = 0,
    *,
    batch_size: int = 8,
    negative_prompt: str | None = None,
    progress: bool = False,
    **settings: Any,
) -> list[Image.Image]:
    """One image per (prompt, seed) pair; each image has its own CPU generator seeded by its seed.
    Seeds, batch size, steps, sizes and guidance are checked before any work."""
    images: list[Image.Image] = []
    for _, batch in iter_generate(
        pipe, prompts, seeds, batch_size=batch_size, negative_prompt=negative_prompt, progress=progress, **settings
    ):
        images.extend(batch)
    return images


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _already_done(out: Path, stem: str, meta: dict[str, Any]) -> bool:
    """True when ``stem`` was written before with the same metadata; refuses any other file of that name."""
    png, sidecar = out / f"{stem}.png", out / f"{stem}.json"
    if sidecar.exists():
        try:
            old = json.loads(sidecar.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            old = None
        if old == meta:
            return png.is_file()  # the metadata is written first: a missing PNG is made again
        differ = sorted(k for k in {*old, *meta} if old.get(k) != meta.get(k)) if isinstance(old, dict) else []
        raise ConceptEditError(
            f"{sidecar} already exists for another image (differs in: {', '.join(differ) or 'everything'}); "
            "nothing was overwritten: use another --out folder"
        )
    if png.exists():
        raise ConceptEditError(
            f"{png} already exists and was not made by `conceptedit generate` (no {sidecar.name}); "
            "nothing was overwritten: use another --out folder"
        )
    return False


def write_images(
    pipe: Any,
    rows: Sequence[tuple[str, int, int]],
    out: str | Path,
    *,
    extra_meta: dict[str, Any] | None = None,
    batch_size: int = 8,
    negative_prompt: str | None = None,
    progress: bool = False,
    **settings: Any,
) -> tuple[int, int]:
    """Generate ``(prompt, seed, case_number)`` rows into ``out`` as ``CASE_seedSEED.png`` + ``.json``
    metadata, each batch written as it finishes. Images already there with the same metadata are
    skipped (a killed run resumes); a file of the same name made otherwise is never overwritten.
    Returns (written, skipped)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConceptEditError(f"--out {out} is a file, not a folder")
    prompts, seeds, batch_size = check_request([r[0] for r in rows], [r[1] for r in rows], batch_size)
    cases = [check_int("case_number", r[2], 0) for r in rows]
    full = check_generation_settings(generation_settings(pipe, **settings))
    common = {"model": model_id(pipe), "negative_prompt": negative_prompt, "settings": full, **(extra_meta or {})}
    stems = [f"{case:04d}_seed{seed}" for case, seed in zip(cases, seeds, strict=True)]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise ConceptEditError(f"two prompts would both be written as {dup}.png; give each row its own case_number")
    metas = [
        json.loads(json.dumps({"prompt": p, "seed": s, "case_number": c, **common}))
        for p, s, c in zip(prompts, seeds, cases, strict=True)
    ]
    todo = [i for i, (stem, meta) in enumerate(zip(stems, metas, strict=True)) if not _already_done(out, stem, meta)]
    if todo:
        out.mkdir(parents=True, exist_ok=True)
    batches = iter_generate(
        pipe,
        [prompts[i] for i in todo],
        [seeds[i] for i in todo],
        batch_size=batch_size,
        negative_prompt=negative_prompt,
        progress=progress,
        **full,
    )
    for start, images in batches:
        for offset, image in enumerate(images):
            i = todo[start + offset]
            _atomic_write(out / f"{stems[i]}.json", json.dumps(metas[i], indent=2).encode())
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            _atomic_write(out / f"{stems[i]}.png", buffer.getvalue())
    return len(todo), len(rows) - len(todo)

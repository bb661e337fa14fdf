"""Attack plugins: find prompts that bring an erased concept back from an edited pipeline.

An attack is a plugin of kind ``attack`` (:class:`AttackPlugin`). It is given a pipeline with the
edit under test applied (``edit.apply(pipe)``; attacks never change weights), the erased concept and
an explicit budget in its ``Config``, and returns an :class:`AttackSet`: prompts (text, or text with
learned token vectors) each with its seed, saved and cached like an edit (JSON + safetensors).

White-box attacks differentiate through the edited pipeline exactly as it generates: the text goes
through ``pipe.encode_prompt`` (so prompt-level edits such as negative prompts and text-encoder hooks
act) while :func:`inject` swaps the token embeddings of the attacked prompt for learned ones, and the
UNet's noise prediction is read with the edited weights. The same code runs on SD 1.x/2.x checkpoints
and on the tiny and shapes pipelines.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from conceptedit.config import config_to_dict
from conceptedit.errors import ArtifactError, RequestError
from conceptedit.plugin import Plugin, Request
from conceptedit.toolkit import Progress, no_progress, payload_hash, tokenize

ATTACK_FILE = "attack.json"
Judge = Callable[[list[Any]], list[bool]]  # images -> did the concept come back (early stopping)
VECTORS_FILE = "vectors.safetensors"


@dataclass
class AttackPrompt:
    """One attack prompt. ``vectors`` (``len(positions) × d``) replace the token embeddings at
    ``positions`` of ``prompt``'s tokenization (soft prompts); plain text attacks have none."""

    prompt: str
    seed: int
    positions: tuple[int, ...] = ()
    vectors: torch.Tensor | None = None
    loss: float | None = None  # the attack's own objective at the end (lower is better)

    def injection(self) -> Injection | None:
        if self.vectors is None:
            return None
        return Injection(self.prompt, self.positions, self.vectors)


@dataclass
class AttackSet:
    """What an attack returns: its prompts, the concept, the plugin's config and what it cost."""

    attack: str
    concept: str
    config: dict[str, Any]
    prompts: list[AttackPrompt]
    seconds: float = 0.0
    history: list[float] = field(default_factory=list)  # the objective per step (white-box attacks)

    @property
    def seconds_per_prompt(self) -> float:
        return self.seconds / max(1, len(self.prompts))

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"prompt_{i}": p.vectors.detach().float().cpu().contiguous()
            for i, p in enumerate(self.prompts)
            if p.vectors is not None
        }
        if tensors:
            save_file(tensors, str(folder / VECTORS_FILE))
        meta = {
            "attack": self.attack,
            "concept": self.concept,
            "config": self.config,
            "seconds": self.seconds,
            "history": self.history,
            "prompts": [
                {
                    "prompt": p.prompt,
                    "seed": p.seed,
                    "positions": list(p.positions),
                    "loss": p.loss,
                    "vectors": p.vectors is not None,
                }
                for p in self.prompts
            ],
        }
        tmp = folder / f".{ATTACK_FILE}.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(folder / ATTACK_FILE)  # written last: a folder with attack.json is complete
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> AttackSet:
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            meta = json.loads((folder / ATTACK_FILE).read_text())
            tensors = load_file(str(folder / VECTORS_FILE)) if (folder / VECTORS_FILE).is_file() else {}
            prompts = []
            for i, p in enumerate(meta["prompts"]):
                vectors = tensors[f"prompt_{i}"] if p["vectors"] else None
                positions = tuple(int(x) for x in p["positions"])
                prompts.append(AttackPrompt(str(p["prompt"]), int(p["seed"]), positions, vectors, p["loss"]))
            return cls(
                meta["attack"],
                meta["concept"],
                meta["config"],
                prompts,
                float(meta["seconds"]),
                list(meta.get("history", [])),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{folder} is not a readable attack folder: {type(exc).__name__}: {exc}") from None


class AttackPlugin(Plugin):
    """Base of ``attack`` plugins: :meth:`attack` (pipeline with the edit applied → :class:`AttackSet`).

    ``white_box``: the attack reads the edited pipeline's weights and gradients; a black-box attack
    (Ring-A-Bell) only uses the text encoder of the model it is given, so an evaluation runs it once on
    the unedited model. ``needs_images``: the attack fits images of the concept (made by the unedited
    model, or the user's)."""

    kind = "attack"
    artifact_kind = "prompts"
    white_box: ClassVar[bool] = True
    needs_images: ClassVar[bool] = False

    def attack(
        self,
        pipe: Any,
        concept: str,
        *,
        images: Sequence[Any] | None = None,
        prompts: Sequence[str] | None = None,
        seed: int = 0,
        judge: Judge | None = None,
        progress: Progress = no_progress,
    ) -> AttackSet:
        """Attack prompts for ``concept``. ``images``/``prompts``: images of the concept and the prompts
        that made them (pairs, white-box attacks fit them); ``judge``: images → concept back? (attacks
        that stop at the first success use it); ``seed`` seeds the attack and the prompts' seeds."""
        raise NotImplementedError

    def fit(self, pipe: Any, request: Request, progress: Progress = no_progress) -> AttackSet:
        from PIL import Image

        images = []
        for path in request.images:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        return self.attack(
            pipe,
            request.targets[0],
            images=images or None,
            prompts=request.prompts or None,
            seed=int(request.extra.get("seed", 0)),
            progress=progress,
        )

    def concept_prompts(self, concept: str, prompts: Sequence[str] | None, n: int) -> list[str]:
        """The prompts naming the concept that an attack starts from: the given ones, else generic frames."""
        given = [p for p in (prompts or []) if p.strip()]
        frames = ("a picture of {}", "an image of {}", "a photo of {}", "{}", "a drawing of {}", "this is {}")
        out = given or [frames[i % len(frames)].format(concept) for i in range(n)]
        return [out[i % len(out)] for i in range(n)]

    def check_images(self, images: Sequence[Any] | None) -> list[Any]:
        if self.needs_images and not images:
            raise RequestError(
                f"attack {self.name!r} fits images of the concept; give some (e.g. generated by the unedited model)"
            )
        return list(images or [])

    def result(self, concept: str, prompts: list[AttackPrompt], start: float, history: list[float] | None = None):
        return AttackSet(
            self.name,
            concept,
            config_to_dict(self.config),
            prompts,
            round(time.perf_counter() - start, 3),
            list(history or []),
        )


def attack_key(payload: dict[str, Any]) -> str:
    """Cache key of an attack run (model, edit, plugin, config, concept, seed, images)."""
    return payload_hash(payload)


# ------------------------------------------------------------------------- token embedding injection
@dataclass
class Injection:
    """Replace, in every row whose token ids are those of ``prompt``, the token embeddings at
    ``positions`` by ``vectors`` (a differentiable tensor while an attack optimises it)."""

    prompt: str
    positions: tuple[int, ...]
    vectors: torch.Tensor


def token_embedding(pipe: Any) -> torch.nn.Embedding:
    """The text encoder's token embedding table (``E``: ids → input vectors)."""
    module = pipe.text_encoder.get_input_embeddings()
    if not isinstance(module, torch.nn.Embedding):
        raise RequestError(f"{type(pipe.text_encoder).__name__} has no token embedding table to attack")
    return module


@contextlib.contextmanager
def inject(pipe: Any, injections: Sequence[Injection]) -> Iterator[None]:
    """While active, the text encoder sees the injected vectors for the injections' prompts (matched by
    token ids, so negative prompts and other rows are untouched); removed exactly on exit."""
    if not injections:
        yield
        return
    table = token_embedding(pipe)
    length = pipe.tokenizer.model_max_length
    keys = []
    for inj in injections:
        ids = tokenize(pipe.tokenizer, [inj.prompt]).input_ids[0]
        if any(not 0 <= p < length for p in inj.positions) or len(inj.positions) != len(inj.vectors):
            raise RequestError(f"injection positions {inj.positions} do not fit the prompt {inj.prompt!r}")
        keys.append(ids)

    def hook(_module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        if ids.dim() != 2:
            return output
        rows = []
        for inj, key in zip(injections, keys, strict=True):
            match = (ids.cpu() == key[: ids.shape[1]]).all(dim=1) if ids.shape[1] == len(key) else None
            if match is not None and bool(match.any()):
                rows.append((inj, match))
        if not rows:
            return output
        out = output.clone()
        for inj, match in rows:
            positions = torch.tensor(inj.positions, dtype=torch.long)
            vectors = inj.vectors.to(out.device, out.dtype)
            for r in torch.nonzero(match).flatten().tolist():
                out[r, positions] = vectors
        return out

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode(pipe: Any, prompts: list[str], guided: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Conditioning (and, with ``guided``, the negative/unconditional embeddings) exactly as the
    pipeline computes them, so prompt-level edits (negative prompts, prompt rewriting) act."""
    device = pipe.unet.device
    cond, uncond = pipe.encode_prompt(prompts, device, 1, guided)
    return cond, uncond


# ----------------------------------------------------------------------------- the diffusion objective
def concept_latents(pipe: Any, images: Sequence[Any]) -> torch.Tensor:
    """VAE latents ``x0`` (scaled as the UNet sees them) of images of the concept, at the model's size."""
    import numpy as np

    from conceptedit.toolkit import default_resolution

    side = default_resolution(pipe)
    arrays = []
    for image in images:
        image = image.convert("RGB").resize((side, side))
        arrays.append(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(pipe.vae.device, pipe.vae.dtype)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean
    return latents * pipe.vae.config.scaling_factor


def denoising_loss(
    pipe: Any,
    x0: torch.Tensor,
    cond: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """``‖ε − ε̂(x_t, t | c)‖²`` (mean) on the pipeline's UNet; with ``uncond`` the guided prediction
    ``ε̂_u + g (ε̂_c − ε̂_u)`` is matched (Pham et al. 2024, Sec. 4, for inference-time erasure). A
    v-prediction model (SD 2.x 768) is compared with ``v`` instead of ``ε``, as it was trained."""
    scheduler = pipe.scheduler
    x_t = scheduler.add_noise(x0, noise, t)
    unet = pipe.unet
    dtype = unet.dtype
    if uncond is None:
        pred = unet(x_t.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample
    else:
        both = unet(
            torch.cat([x_t, x_t]).to(dtype),
            torch.cat([t, t]),
            encoder_hidden_states=torch.cat([uncond, cond]).to(dtype),
        ).sample
        pred_u, pred_c = both.chunk(2)
        pred = pred_u + guidance * (pred_c - pred_u)
    target = noise
    if getattr(scheduler.config, "prediction_type", "epsilon") == "v_prediction":  # SD 2.x 768: the UNet predicts v
        target = scheduler.get_velocity(x0, noise, t)
    return torch.nn.functional.mse_loss(pred.float(), target.float())


def frozen(pipe: Any) -> contextlib.AbstractContextManager[None]:
    """No weight of the pipeline gets a gradient (attacks optimise prompts only); restored on exit."""

    @contextlib.contextmanager
    def manager() -> Iterator[None]:
        params = [p for name in ("unet", "text_encoder", "vae") for p in getattr(pipe, name).parameters()]
        before = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(params, before, strict=True):
                p.requires_grad_(flag)

    return manager()


def special_ids(tokenizer: Any) -> set[int]:
    return {int(i) for i in tokenizer.all_special_ids if i is not None}


def vocabulary(tokenizer: Any) -> torch.Tensor:
    """Token ids an attack may use: every id but the special tokens (BOS, EOS, padding, unknown)."""
    banned = special_ids(tokenizer)
    return torch.tensor([i for i in range(len(tokenizer)) if i not in banned], dtype=torch.long)


def generate_attack_images(
    pipe: Any, prompts: Sequence[AttackPrompt], *, batch_size: int = 16, **settings: Any
) -> list[Any]:
    """Images of attack prompts (soft prompts injected), in order, each with its own seed."""
    from conceptedit.generation import generate

    images: list[Any] = [None] * len(prompts)
    # prompts generate together unless two with the same token ids carry different vectors (the injection
    # hook tells rows apart by their token ids): then they go to different batches
    keys = [tuple(ids.tolist()) for ids in tokenize(pipe.tokenizer, [p.prompt for p in prompts]).input_ids]
    groups: list[list[int]] = []
    for i, p in enumerate(prompts):
        for members in groups:
            clash = [j for j in members if keys[j] == keys[i]]
            if all(_same_vectors(prompts[j], p) for j in clash):
                members.append(i)
                break
        else:
            groups.append([i])
    for members in groups:
        injections = {keys[i]: prompts[i].injection() for i in members}
        with inject(pipe, [inj for inj in injections.values() if inj is not None]):
            made = generate(
                pipe,
                [prompts[i].prompt for i in members],
                [prompts[i].seed for i in members],
                batch_size=batch_size,
                **settings,
            )
        for i, image in zip(members, made, strict=True):
            images[i] = image
    return images


def _same_vectors(a: AttackPrompt, b: AttackPrompt) -> bool:
    if a.vectors is None or b.vectors is None:
        return a.vectors is None and b.vectors is None
    return a.positions == b.positions and torch.equal(a.vectors, b.vectors)


def check_budget(seconds: float, start: float) -> bool:
    """True while the wall-time budget lasts (``seconds <= 0``: no limit)."""
    return seconds <= 0 or time.perf_counter() - start < seconds


@torch.no_grad()
def mean_denoising_loss(
    pipe: Any,
    x0: torch.Tensor,
    prompt: str,
    injections: Sequence[Injection] = (),
    *,
    timesteps: Sequence[int] = (100, 300, 500, 700, 900),
    seed: int = 0,
    guided: bool = False,
    guidance: float = 1.0,
) -> float:
    """An attack's objective at fixed timesteps and seeded noise (deterministic): the mean of
    :func:`denoising_loss` over ``x0``'s images, to compare prompts or soft prompts before/after."""
    generator = torch.Generator().manual_seed(seed)
    device = pipe.unet.device
    losses = []
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
        with inject(pipe, list(injections)):
            cond, uncond = encode(pipe, [prompt] * len(x0), guided)
        step = torch.full((len(x0),), int(t), device=device, dtype=torch.long)
        losses.append(float(denoising_loss(pipe, x0, cond, step, noise, uncond if guided else None, guidance)))
    return sum(losses) / len(losses)

"""What ItD fits on: the SAE (trained on a prompt corpus and cached, or loaded) and the target and
retain prompt sets that select and calibrate its concept latents. A mixin of ``ItDPlugin``
(``plugins/itd.py``; the paper, the deviations and the config are described there)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import torch

from conceptedit.errors import RequestError
from conceptedit.plugin import Request
from conceptedit.plugins._itd_latents import cache_root, encoder_parts, layer_name
from conceptedit.toolkit import Progress, payload_hash, read_prompts

# Prompt frames for target and retain prompts when the request gives none (reference: simple
# "a photo of {}"-style prompts per concept).
TEMPLATES = (
    "{}",
    "a photo of {}",
    "a picture of {}",
    "an image of {}",
    "a drawing of {}",
    "a painting of {}",
    "a portrait of {}",
    "a rendering of {}",
    "this is {}",
    "there is {}",
)
# More frames for the fitted target set (word order, context and register vary as in the paper's sets);
# used for interpretation and calibration, not added to the SAE corpus.
DIVERSE_TEMPLATES = (
    "an illustration of {}",
    "a sketch of {}",
    "a close-up of {}",
    "we can see {}",
    "the picture shows {}",
    "{} in the middle of the image",
    "a nice image with {}",
    "my drawing of {}",
)


def words_of(text: str) -> set[str]:
    """Lower-case words of a prompt (punctuation splits words)."""
    return set(re.findall(r"[\w']+", text.lower()))


class ItDFitting:
    """The plugin's data steps; ``self.config`` is an ``ItDConfig``."""

    config: Any

    # -- step 1: the SAE -----------------------------------------------------------------------
    def shipped_corpus(self, pipe: Any) -> list[str]:
        """Prompts of the config's corpus file, else of the model's shipped corpus (empty if neither)."""
        from conceptedit.loading import model_file

        source = self.config.corpus or model_file(pipe, "prompt_corpus")
        return read_prompts(source) if source else []

    def corpus(self, corpus: list[str], request: Request) -> list[str]:
        """SAE training prompts: the corpus (at most ``corpus_limit``, sampled) plus the request's."""
        prompts = corpus
        if len(prompts) > self.config.corpus_limit:
            g = torch.Generator().manual_seed(self.config.seed)
            keep = torch.randperm(len(prompts), generator=g)[: self.config.corpus_limit].sort().values
            prompts = [prompts[i] for i in keep.tolist()]
        extra = self.given_target_prompts(request) + self.retain_prompts(request, [])
        return prompts + extra

    def sae_cache_key(self, pipe: Any, layer: int, corpus: list[str], component: str = "text_encoder") -> str:
        from conceptedit.fingerprint import fingerprint

        c = self.config
        payload = {
            "text_encoder": fingerprint(encoder_parts(pipe, component)[0]),  # the encoder the SAE reads
            "layer": layer,
            "arch": c.sae_arch,
            "width": c.sae_width,
            "k": c.sae_k,
            "tokens": c.train_tokens,
            "lr": c.train_lr,
            "warmup": c.train_warmup_steps,
            "batch": c.train_batch_prompts,
            "seed": c.seed,
            "corpus": hashlib.sha256("\n".join(corpus).encode()).hexdigest(),
        }
        return payload_hash(payload)

    def get_sae(
        self,
        pipe: Any,
        request: Request,
        layer: int,
        corpus: list[str],
        progress: Progress,
        component: str = "text_encoder",
    ) -> Any:
        from conceptedit.sae import TrainConfig, collect_activations, load_sae, save_sae, train_sae

        c = self.config
        encoder, tokenizer = encoder_parts(pipe, component)
        if c.sae_path:
            sae = load_sae(c.sae_path)
            if sae.d_in != encoder.config.hidden_size:
                raise RequestError(
                    f"SAE at {c.sae_path} has d_in={sae.d_in}, but the hidden size of {component} is "
                    f"{encoder.config.hidden_size}"
                )
            return sae
        corpus = self.corpus(corpus, request)
        folder = cache_root() / "itd-sae" / self.sae_cache_key(pipe, layer, corpus, component)
        if (folder / "cfg.json").is_file():
            return load_sae(folder)
        progress(0.05, f"collecting activations of {len(corpus)} prompts")
        store = collect_activations(
            (encoder, tokenizer),
            layer_name(layer),
            corpus,
            padding="longest",
            skip_bos=False,
            skip_padding=False,
            progress=False,
        )
        tokens_per_prompt = max(1, store.n_rows // max(1, len(corpus)))
        progress(0.15, f"training a {c.sae_arch} SAE ({c.sae_width} latents, k={c.sae_k})")
        train_config = TrainConfig(
            token_budget=c.train_tokens,
            batch_size=c.train_batch_prompts * tokens_per_prompt,
            lr=c.train_lr,
            warmup_steps=c.train_warmup_steps,
            seed=c.seed,
            normalize=False,
            progress=True,
        )
        sae = train_sae(store, c.sae_arch, c.sae_width, config=train_config, k=c.sae_k)
        sae.source = {"module": f"{component}.{layer_name(layer)}", "plugin": "itd"}
        save_sae(sae, folder)
        return sae

    # -- step 2: the prompt sets F and tau are fitted on -----------------------------------------
    def given_target_prompts(self, request: Request) -> list[str]:
        """The request's prompts, else ``TEMPLATES`` frames (what the SAE corpus gets, as before)."""
        if request.prompts:
            return list(request.prompts)
        return [t.format(c) for c in request.targets for t in TEMPLATES]

    def target_prompts(self, request: Request, corpus: list[str] | None = None) -> list[str]:
        """Prompts F and τ are fitted on: the given ones, template frames, and corpus prompts naming a target."""
        prompts = self.given_target_prompts(request)
        if self.config.target_templates:
            prompts += [t.format(c) for c in request.targets for t in TEMPLATES + DIVERSE_TEMPLATES]
        words = {w for c in request.targets for w in words_of(c)}
        naming = [p for p in corpus or [] if words & words_of(p)]
        if naming and self.config.target_from_corpus:
            g = torch.Generator().manual_seed(self.config.seed + 2)
            pick = torch.randperm(len(naming), generator=g)[: self.config.target_from_corpus].tolist()
            prompts += [naming[i] for i in sorted(pick)]
        return list(dict.fromkeys(prompts))

    def excluded_words(self, request: Request) -> set[str]:
        """Words that keep a corpus prompt out of the retain set: the targets' words, every plain
        ``retain_exclude`` word, and every ``a|b|c`` group that contains a target word."""
        words = {w for c in request.targets for w in words_of(c)}
        out = set(words)
        for entry in self.config.retain_exclude:
            group = words_of(entry.replace("|", " "))
            if "|" not in entry or words & group:
                out |= group
        return out

    def retain_prompts(self, request: Request, corpus: list[str]) -> list[str]:
        prompts = list(request.retain_prompts) + [t.format(c) for c in request.preserve for t in TEMPLATES]
        excluded = self.excluded_words(request)
        candidates = [p for p in corpus if not excluded & words_of(p)]
        if candidates and self.config.retain_from_corpus:
            g = torch.Generator().manual_seed(self.config.seed + 1)
            pick = torch.randperm(len(candidates), generator=g)[: self.config.retain_from_corpus].tolist()
            prompts += [candidates[i] for i in sorted(pick)]
        return prompts

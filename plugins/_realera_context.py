"""The context rows RealEra keys and samples (plugins/realera.py): a prompt's conditioning and concept row,
where the concept sits in a sentence against its anchor sentence, the vocabulary pool's word rows and the
same words spliced into the concept's sentence frame."""

from __future__ import annotations

import re
from typing import Any

import torch

from conceptedit.conditioning import Conditioning, conditioning, encode_ids, text_encoders
from conceptedit.errors import RequestError
from conceptedit.toolkit import tokenize


@torch.no_grad()
def concept_condition(pipe: Any, prompt: str) -> tuple[Conditioning, int]:
    """The UNet's conditioning for ``prompt`` (float32, CPU; on SDXL the 2048-d concatenated context, the
    pooled embedding and time ids) and the row of its last word token (UCE's key)."""
    cond = conditioning(pipe, [prompt]).float().to("cpu")
    row = int(tokenize(text_encoders(pipe)[0][2], [prompt]).attention_mask[0].sum()) - 2
    return cond, row


def encode_concept(pipe: Any, prompt: str) -> tuple[torch.Tensor, int]:
    """The cross-attention context ``(1, L, d)`` of ``prompt`` (float32, CPU) and its last word token's row."""
    cond, row = concept_condition(pipe, prompt)
    return cond.embeds, row


@torch.no_grad()
def vocabulary_embeddings(
    pipe: Any, n: int, generator: torch.Generator, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention context rows of ``n`` random vocabulary tokens (special tokens left out), each as the
    one-word prompt's word row (float64, CPU; on SDXL both encoders' rows concatenated: their tokenizers
    share a vocabulary), and the token ids. The encoders are causal, so the row needs only ``[BOS, token]``."""
    encoders = text_encoders(pipe)
    tok = encoders[0][2]
    special = set(tok.all_special_ids)
    ids = torch.tensor([i for i in range(len(tok)) if i not in special])
    ids = ids[torch.randperm(len(ids), generator=generator)[:n]]
    out = []
    for chunk in ids.split(batch):
        inputs = {
            name: torch.stack([torch.full_like(chunk, tokenizer.bos_token_id), chunk], dim=1)
            for name, _, tokenizer in encoders
        }
        out.append(encode_ids(pipe, inputs)[0][:, 1].double().cpu())
    return torch.cat(out), ids


def concept_span(tokenizer: Any, prompt: str, anchor_prompt: str) -> tuple[int, int, int]:
    """Where the concept sits in ``prompt`` and the anchor in ``anchor_prompt`` (the same sentence with the
    anchor substituted), from their common token prefix and suffix (MACE's ``find_matching_indices``):
    ``(prefix, concept_end, anchor_end)``: the concept's tokens are ``prefix..concept_end``, and the anchor's
    last token is ``anchor_end`` (the last prefix token when the anchor is empty: for the bare prompt and
    ``""``, BOS, which is UCE's guide row)."""
    # untruncated, so the common suffix (up to EOS) is found in a sentence longer than the encoder reads
    a, b = (list(tokenizer(p, truncation=False).input_ids) for p in (prompt, anchor_prompt))
    prefix = 0
    while prefix < min(len(a), len(b)) and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(a) - prefix - 1, len(b) - prefix) and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    if len(a) - suffix - 1 < prefix:
        raise RequestError(f"the concept prompt {prompt!r} has no token that its anchor prompt {anchor_prompt!r} lacks")
    return prefix, len(a) - suffix - 1, len(b) - suffix - 1


@torch.no_grad()
def spliced_contexts(
    pipe: Any, prompt: str, prefix: int, concept_end: int, token_ids: torch.Tensor, batch: int = 64
) -> torch.Tensor:
    """Contexts ``(m, L, d)`` (float64, CPU) of ``prompt`` with its concept tokens ``prefix..concept_end``
    replaced by one token each of ``token_ids`` (every encoder's tokenizer shares the vocabulary; padded with
    its own pad token): the beyond-concept samples in the concept's sentence frame. No ids (no vocabulary
    word lies outside the neighbourhood, as with random-weight encoders): ``(0, L, d)``."""
    if not len(token_ids):  # split() of an empty tensor still yields one (empty) chunk
        ids = {name: tokenize(tokenizer, [prompt]).input_ids for name, _, tokenizer in text_encoders(pipe)}
        return encode_ids(pipe, ids)[0][:0].double().cpu()
    out = []
    for chunk in token_ids.split(batch):
        inputs = {}
        for name, _, tokenizer in text_encoders(pipe):
            ids = tokenize(tokenizer, [prompt]).input_ids[0]
            pad = torch.full((concept_end - prefix,), int(tokenizer.pad_token_id), dtype=ids.dtype)
            rows = [torch.cat([ids[:prefix], t.view(1).to(ids.dtype), ids[concept_end + 1 :], pad]) for t in chunk]
            inputs[name] = torch.stack(rows)[:, : len(ids)]
        out.append(encode_ids(pipe, inputs)[0].double().cpu())
    return torch.cat(out)


def pool_indices(pool: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Indices in ``pool`` of ``rows`` (exact copies of pool rows, as :func:`beyond_from_pool` returns)."""
    return torch.tensor([int(torch.nonzero((pool == r).all(dim=1))[0]) for r in rows], dtype=torch.long)


def corpus_contexts(
    corpus: list[str], word: str, anchor: str, n: int, generator: torch.Generator
) -> list[tuple[str, str]]:
    """Up to ``n`` (caption, anchor caption) pairs: captions of ``corpus`` naming ``word`` exactly once (as a whole
    word, any case), each with the word replaced by ``anchor`` — MACE's concept-in-context prompts, read from the
    model's caption distribution instead of written templates. Sampled without replacement (seeded)."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(word.strip())}(?![\w-])", re.IGNORECASE)
    naming = [c for c in dict.fromkeys(corpus) if len(pattern.findall(c)) == 1]
    order = torch.randperm(len(naming), generator=generator)[:n].tolist()
    pairs = []
    for i in sorted(order):
        caption = naming[i]
        pairs.append((" ".join(caption.split()), " ".join(pattern.sub(anchor, caption).split())))
    return pairs

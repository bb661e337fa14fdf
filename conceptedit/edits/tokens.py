"""New tokens: words added to the tokenizer and rows added to the text encoder's embedding table.

Textual-inversion-style edits (Geom-Erasing's location tokens) need words the base model does not
have. :func:`add_token_rows` adds them to ``pipe.tokenizer`` and ``pipe.text_encoder`` on new rows only
(every existing row is copied unchanged) and returns the undo, which puts back the very tokenizer object,
embedding module and ``config.vocab_size`` that were there: removal is exact, bit for bit.
:func:`token_vectors` lets a plugin train such rows before they exist in any table (a hook on the
existing table), so ``fit`` never changes the pipeline. Only the first tokenizer / text encoder pair
is extended (SD 1.x / 2.x); SDXL's second encoder is left as it is.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from conceptedit.edits.base import Undo
from conceptedit.errors import ArtifactError, ModelMismatchError


def token_table(text_encoder: Any) -> torch.nn.Embedding:
    table = text_encoder.get_input_embeddings()
    if not isinstance(table, torch.nn.Embedding):
        raise ModelMismatchError(f"{type(text_encoder).__name__} has no token embedding table to add tokens to")
    return table


def extended_tokenizer(tokenizer: Any, tokens: Sequence[str], table_rows: int) -> Any:
    """A copy of ``tokenizer`` with ``tokens`` added as ids ``table_rows …``; the original is untouched."""
    vocab = tokenizer.get_vocab()
    clash = [t for t in tokens if t in vocab]
    if clash:
        raise ModelMismatchError(
            f"the tokenizer already has the token {clash[0]!r}: an edit adding the same tokens is already applied"
        )
    if len(tokenizer) != table_rows:
        raise ModelMismatchError(
            f"the tokenizer has {len(tokenizer)} tokens but the text encoder's table {table_rows} rows; "
            "new tokens would get ids that are not their rows"
        )
    twin = copy.deepcopy(tokenizer)
    twin.add_tokens(list(tokens))
    ids = twin.convert_tokens_to_ids(list(tokens))
    if list(ids) != list(range(table_rows, table_rows + len(tokens))):
        raise ModelMismatchError(f"the tokenizer gave the new tokens ids {ids}, not rows {table_rows}…")
    return twin


def check_token_vectors(tokens: Sequence[str], vectors: torch.Tensor) -> None:
    if len(set(tokens)) != len(tokens) or not all(isinstance(t, str) and t.strip() == t and t for t in tokens):
        raise ArtifactError("new tokens must be distinct non-empty words without surrounding spaces")
    if vectors.ndim != 2 or vectors.shape[0] != len(tokens) or not vectors.is_floating_point():
        raise ArtifactError(f"token vectors of shape {tuple(vectors.shape)} do not fit {len(tokens)} tokens")
    if not bool(torch.isfinite(vectors).all()):
        raise ArtifactError("token vectors hold NaN or infinite values")


def add_token_rows(pipe: Any, tokens: Sequence[str], vectors: torch.Tensor) -> Undo:
    """Add ``tokens`` with input embeddings ``vectors`` to ``pipe``; return the exact undo."""
    check_token_vectors(tokens, vectors)
    encoder = pipe.text_encoder
    old_table = token_table(encoder)
    if vectors.shape[1] != old_table.embedding_dim:
        raise ModelMismatchError(
            f"token vectors have width {vectors.shape[1]}, the text encoder's table {old_table.embedding_dim}"
        )
    old_tokenizer = pipe.tokenizer
    rows = old_table.num_embeddings
    new_tokenizer = extended_tokenizer(old_tokenizer, tokens, rows)
    weight = old_table.weight
    new_table = torch.nn.Embedding(
        rows + len(tokens), old_table.embedding_dim, padding_idx=old_table.padding_idx, device=weight.device,
        dtype=weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        new_table.weight[:rows] = weight.detach()
        new_table.weight[rows:] = vectors.detach().to(weight.device, weight.dtype)
    new_table.weight.requires_grad_(weight.requires_grad)
    old_vocab_size = getattr(encoder.config, "vocab_size", None)
    encoder.set_input_embeddings(new_table)
    encoder.config.vocab_size = rows + len(tokens)
    object.__setattr__(pipe, "tokenizer", new_tokenizer)

    def undo() -> None:
        object.__setattr__(pipe, "tokenizer", old_tokenizer)
        encoder.set_input_embeddings(old_table)
        encoder.config.vocab_size = old_vocab_size

    return undo


@contextlib.contextmanager
def token_vectors(text_encoder: Any, table_rows: int, vectors: torch.Tensor) -> Iterator[None]:
    """While active, ids ``table_rows + i`` read ``vectors[i]`` (differentiable) from the unchanged table.

    For training new rows without adding them: ids past the table are looked up as row 0 and their
    outputs replaced by the vectors. The hooks are removed on exit; no weight is touched.
    """
    table = token_table(text_encoder)
    seen: list[torch.Tensor] = []

    def before(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        ids = args[0]
        seen.append(ids)
        return (torch.where(ids >= table_rows, torch.zeros_like(ids), ids), *args[1:])

    def after(_module: Any, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        ids = seen.pop()
        new = ids >= table_rows
        if not bool(new.any()):
            return output
        if bool((ids >= table_rows + len(vectors)).any()):
            raise ModelMismatchError("a token id lies past the new rows being trained")
        picked = vectors.to(output.device, output.dtype)[(ids - table_rows).clamp(min=0)]
        return torch.where(new[..., None], picked, output)

    handles = [table.register_forward_pre_hook(before), table.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

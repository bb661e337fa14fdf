"""A CLIP-format BPE tokenizer for the shapes world, trained offline with ``tokenizers``.

The BPE is trained on training captions with CLIP's normaliser and pre-tokeniser, so
``CLIPTokenizer`` applies the merges exactly as they were learnt (in BPE order: a merge never fires
inside another word unless training made it so). The vocabulary starts like CLIP's (256 byte
symbols, the same with ``</w>``), so any text tokenises without unknown tokens; then come the merge
results and the two special tokens. :func:`check` verifies that every world word is ONE token.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from conceptedit.datasets.shapes import WORLD, render

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 32  # text encoder positions (SD 1.x: 77)
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _corpus(n_captions: int, seed: int) -> list[str]:
    caps = [s.caption for s in render(n_captions, seed=seed) if s.caption]
    # every world word at least a few times, so all of them become single tokens
    caps += [" ".join(WORLD.words())] * 8
    return caps


def train_tokenizer(n_captions: int = 20000, seed: int = 1234) -> CLIPTokenizer:
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix="", unk_token=EOS))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        min_frequency=1,
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(n_captions, seed), trainer=trainer)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for sym in alphabet + [a + "</w>" for a in alphabet]:
        vocab.setdefault(sym, len(vocab))
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    pairs = [tuple(m.split(" ")) for m in merges]
    tok = CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=MAX_LENGTH)
    check(tok)
    return tok


def check(tok: CLIPTokenizer) -> None:
    """Every world word must be a single token, and captions must round-trip."""
    bad = {w: tok.tokenize(w) for w in WORLD.words() if len(tok.tokenize(w)) != 1}
    if bad:
        raise RuntimeError(f"world words split into several tokens: {bad}")
    text = "a glowing red striped circle on a black background with an aura"
    ids = tok(text).input_ids
    if tok.decode(ids, skip_special_tokens=True) != text:
        raise RuntimeError(f"round trip failed: {tok.decode(ids, skip_special_tokens=True)!r}")


def save_tokenizer(tok: CLIPTokenizer, folder: str | Path) -> None:
    """``save_pretrained`` (tokenizer.json) plus CLIP's vocab.json / merges.txt for other loaders."""
    folder = Path(folder)
    tok.save_pretrained(folder)
    vocab = tok.get_vocab()
    (folder / "vocab.json").write_text(json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1]))))
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    check(CLIPTokenizer.from_pretrained(folder))

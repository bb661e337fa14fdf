"""Concept Lancet's representation side (Luo et al., CVPR 2025, arXiv 2504.02828), on plain tensors.

What the ``colan`` edit needs before any diffusion runs:

- a stimulus file ``{concept: [sentence, ...]}`` (JSON object, or CSV with columns ``concept,sentence``,
  one row per sentence — the CoLan-150K layout) read by :func:`load_stimuli`;
- a concept dictionary: per concept, the mean text-encoder embedding of its stimuli, flattened
  (the whole padded prompt embedding, not a pooled one) — :func:`build_dictionary`;
- the decomposition ``v = Σ_i w_i d_i + r`` of a prompt embedding by elastic net with the reference
  code's SPAMS settings (atoms and v L2-normalised, mode 2, λ₁ = τα, λ₂ = (1 − τ)α, τ = 0.95,
  α = 0.05), coefficients rescaled by ‖v‖/‖d_i‖ so they apply to the unnormalised atoms —
  :func:`decompose` (solver: :func:`conceptedit.sparsity.elastic_net`);
- the transplant: replace ``v′ = v + w_src (d_tgt − d_src)`` (swap the source atom for the target, keep
  its weight and the residual); remove = replace by the empty-string atom; add = replace a
  counterpart concept by ``counterpart + new`` — :func:`transplant`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from conceptedit.errors import ConceptEditError
from conceptedit.sparsity import elastic_net, spams_to_sklearn

__all__ = ["ConceptDictionary", "build_dictionary", "decompose", "load_stimuli", "transplant"]

TAU = 0.95
ALPHA = 0.05


def load_stimuli(path: str | Path) -> dict[str, list[str]]:
    """Read ``{concept: [sentences]}`` from a .json object or a .csv with ``concept,sentence`` columns."""
    p = Path(path)
    if not p.is_file():
        raise ConceptEditError(f"stimulus file {str(p)!r} does not exist")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConceptEditError(f"stimulus file {str(p)!r} is not valid JSON: {e}") from None
    elif p.suffix.lower() == ".csv":
        data: dict[str, list[str]] = {}
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"concept", "sentence"} <= set(reader.fieldnames):
                raise ConceptEditError(f"stimulus CSV {str(p)!r} needs the columns concept,sentence")
            for row in reader:
                data.setdefault(row["concept"], []).append(row["sentence"])
    else:
        raise ConceptEditError(f"stimulus file {str(p)!r}: expected .json or .csv")
    return check_stimuli(data, str(p))


def check_stimuli(data: object, where: str = "stimuli") -> dict[str, list[str]]:
    if not isinstance(data, dict) or not data:
        raise ConceptEditError(f"{where}: expected a non-empty mapping {{concept: [sentences]}}")
    for k, v in data.items():
        if not isinstance(k, str) or not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
            raise ConceptEditError(f"{where}: concept {k!r} needs a non-empty list of sentences")
    return {k: list(v) for k, v in data.items()}


@dataclass
class ConceptDictionary:
    """Atoms ``(K, d)`` (flattened mean embeddings), one per named concept."""

    names: list[str]
    atoms: torch.Tensor

    def __post_init__(self) -> None:
        if not self.names or self.atoms.dim() != 2 or self.atoms.shape[0] != len(self.names):
            raise ConceptEditError("a concept dictionary needs at least one concept and one atom per name")
        if len(set(self.names)) != len(self.names):
            raise ConceptEditError("concept names in a dictionary must be unique")

    def index(self, concept: str) -> int:
        try:
            return self.names.index(concept)
        except ValueError:
            known = ", ".join(self.names[:12]) + (" …" if len(self.names) > 12 else "")
            raise ConceptEditError(f"unknown concept {concept!r}; the dictionary has: {known}") from None


def build_dictionary(encode: Callable[[list[str]], torch.Tensor], stimuli: dict[str, list[str]]) -> ConceptDictionary:
    """Mean of ``encode(sentences)`` (any ``(n, ...)`` embedding, flattened) per concept."""
    stimuli = check_stimuli(stimuli)
    atoms = [encode(sents).double().flatten(1).mean(0) for sents in stimuli.values()]
    return ConceptDictionary(list(stimuli), torch.stack(atoms))


def decompose(
    v: torch.Tensor, dictionary: ConceptDictionary, *, tau: float = TAU, alpha: float = ALPHA
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights ``(K,)``, residual) with ``v.flatten() = weightsᵀ atoms + residual``."""
    y = v.double().flatten()
    D = dictionary.atoms.double()
    if y.shape[0] != D.shape[1]:
        raise ConceptEditError(f"embedding has {y.shape[0]} values, the dictionary's atoms {D.shape[1]}")
    yn, dn = y.norm(), D.norm(dim=1)
    if yn == 0:
        return torch.zeros(D.shape[0], dtype=torch.float64), y.clone()
    Dn = D / dn.clamp_min(1e-12)[:, None]
    a, rho = spams_to_sklearn(tau * alpha, (1 - tau) * alpha, D.shape[1])
    w = elastic_net(y / yn, Dn, a, rho, tol=1e-8).codes * yn / dn.clamp_min(1e-12)
    return w, y - w @ D


def transplant(
    v: torch.Tensor,
    dictionary: ConceptDictionary,
    weights: torch.Tensor,
    source: str,
    target_atom: torch.Tensor,
) -> torch.Tensor:
    """``v + w_src (d_tgt − d_src)`` in ``v``'s shape: replace (target atom), remove (empty-string atom)
    or add (the atom of "counterpart + new concept", with ``source`` the counterpart)."""
    i = dictionary.index(source)
    d_src = dictionary.atoms[i].double()
    d_tgt = target_atom.double().flatten()
    if d_tgt.shape != d_src.shape:
        raise ConceptEditError(f"target atom has {d_tgt.shape[0]} values, the dictionary's {d_src.shape[0]}")
    out = v.double().flatten() + weights[i].double() * (d_tgt - d_src)
    return out.reshape(v.shape).to(v.dtype)

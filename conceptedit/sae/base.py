"""The SAE base class, sparse codes, and the architecture registry.

Every architecture shares: a pre-encoder bias ``b_pre`` (initialised at the geometric median of a
data sample), a dictionary ``W_dec`` with one atom per row (``[width, d_in]``; the papers' columns)
kept at unit norm during training, and an input scale (inputs are multiplied by it so that the mean
squared norm is ``d_in``; the public methods take and return raw activations). Architectures differ
in how they select latents; they implement :meth:`SAE._train_forward` (differentiable, used by the
trainer) and :meth:`SAE._encode` (no grad, memory-bounded, used by plugins).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from conceptedit.errors import ConfigError
from conceptedit.registry import Registry
from conceptedit.sae.kernels import DEFAULT_CHUNK_ELEMS, geometric_median, sparse_decode


def _sae_from_entry_point(name: str, obj: Any) -> None:
    if not (isinstance(obj, type) and issubclass(obj, SAE)):
        raise TypeError(f"entry point {name!r} must point at a conceptedit SAE subclass, not {obj!r}")
    own = obj.__dict__.get("architecture")  # a subclass of a registered architecture inherits its name
    if own and own != name:
        raise TypeError(f"entry point {name!r} points at SAE architecture {obj.architecture!r}; use its name")
    register_sae(name)(obj)


# Other packages add architectures with @register_sae in a module they import, or through the
# ``conceptedit.sae_architectures`` entry point (name = architecture, object = the SAE subclass).
SAE_ARCHITECTURES: Registry[type[SAE]] = Registry(
    "SAE architecture", group="conceptedit.sae_architectures", load=_sae_from_entry_point
)


def register_sae(name: str) -> Callable[[type[SAE]], type[SAE]]:
    """Class decorator adding an architecture to :data:`SAE_ARCHITECTURES` (duplicates are an error)."""

    def deco(cls: type[SAE]) -> type[SAE]:
        SAE_ARCHITECTURES.register(name, cls)  # raises on a taken name before the class is changed
        cls.architecture = name
        return cls

    return deco


@dataclass
class SparseCodes:
    """Per-row selected latents, padded: ``indices``/``values`` are ``[N, m]``; padding has value 0."""

    indices: torch.Tensor
    values: torch.Tensor
    width: int

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(self.values.shape[0], self.width, dtype=self.values.dtype, device=self.values.device)
        return out.scatter_add_(1, self.indices, self.values)

    def l0(self) -> torch.Tensor:
        """Active latents per row (an atom picked twice by matching pursuit counts once)."""
        idx, order = self.indices.sort(dim=-1)
        active = self.values.gather(1, order) != 0
        first = torch.ones_like(active)
        first[:, 1:] = idx[:, 1:] != idx[:, :-1]
        return (active & first).sum(-1)

    def fired(self) -> torch.Tensor:
        """Boolean ``[width]``: which latents are active in at least one row."""
        hit = torch.zeros(self.width, dtype=torch.bool, device=self.values.device)
        hit[self.indices[self.values != 0]] = True
        return hit


Codes = SparseCodes | torch.Tensor
#: what ``_train_forward`` returns: (reconstruction in scaled units, codes, auxiliary losses)
TrainOut = tuple[torch.Tensor, Codes, dict[str, torch.Tensor]]


def codes_l0(codes: Codes) -> torch.Tensor:
    return codes.l0() if isinstance(codes, SparseCodes) else (codes != 0).sum(-1)


def codes_fired(codes: Codes) -> torch.Tensor:
    return codes.fired() if isinstance(codes, SparseCodes) else (codes != 0).any(0)


@dataclass
class SAEOutput:
    """What :meth:`SAE.forward` returns: the codes and the reconstruction (raw units)."""

    codes: Codes
    recon: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)


def normalized_mse(target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """``||target - recon||^2 / ||target - mean(target)||^2`` over the batch (= batch FVU)."""
    denom = (target - target.mean(0)).pow(2).sum().clamp_min(1e-12)
    return (target - recon).pow(2).sum() / denom


class SAE(nn.Module):
    """Base class. Subclasses call ``super().__init__`` and define their encoder parameters."""

    architecture: ClassVar[str] = ""
    #: renormalise decoder rows after each step and project their gradient (off for ReLU+L1).
    unit_norm_decoder: ClassVar[bool] = True
    #: whether ``_train_forward`` uses the sparse kernels (for docs/benchmarks only).
    sparse_training: ClassVar[bool] = True

    def __init__(
        self,
        d_in: int,
        width: int,
        *,
        tied_init: bool = True,
        seed: int = 0,
        chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    ) -> None:
        super().__init__()
        if d_in <= 0 or width <= 0:
            raise ConfigError(f"d_in and width must be positive, got d_in={d_in}, width={width}")
        self.d_in, self.width, self.tied_init, self.seed = int(d_in), int(width), bool(tied_init), int(seed)
        self.chunk_elems = int(chunk_elems)
        gen = torch.Generator().manual_seed(self.seed)
        w_dec = F.normalize(torch.randn(width, d_in, generator=gen), dim=-1)
        self.W_dec = nn.Parameter(w_dec)
        self.b_pre = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(()))
        self.source: dict[str, Any] = {}
        self._gen = gen

    # -- construction helpers -------------------------------------------------------------------
    def _make_encoder(self, scale: float = 1.0) -> None:
        """``W_enc [width, d_in]`` (tied: ``scale`` x a copy of the decoder) and ``b_enc``."""
        if self.tied_init:
            w = self.dictionary().detach().clone()
        else:
            bound = 1.0 / self.d_in**0.5
            w = (torch.rand(self.width, self.d_in, generator=self._gen) * 2 - 1) * bound
        self.W_enc = nn.Parameter(w * scale)
        self.b_enc = nn.Parameter(torch.zeros(self.width))

    @classmethod
    def hparam_names(cls) -> list[str]:
        """Constructor keywords saved in ``cfg.json`` (everything except d_in, width, chunk_elems)."""
        names: list[str] = []
        for klass in cls.__mro__:
            if klass is nn.Module or not issubclass(klass, SAE):
                continue
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind is p.KEYWORD_ONLY and p.name not in ("chunk_elems",) and p.name not in names:
                    names.append(p.name)
        return names

    def hparams(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.hparam_names()}

    # -- shared pieces ----------------------------------------------------------------------------
    def dictionary(self) -> torch.Tensor:
        """Decoder atoms, one per row ``[width, d_in]`` (archetypal SAEs compute them)."""
        return self.W_dec

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.b_pre.dtype) * self.input_scale

    @torch.no_grad()
    def init_from_data(self, sample: torch.Tensor) -> None:
        """Set ``b_pre`` to the geometric median of a (raw) sample, as Gao et al. do."""
        self.b_pre.copy_(geometric_median(self._scale(sample)))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Dense encoder pre-activations ``W_enc (s·x - b_pre) + b_enc`` — ``[N, width]``, small N only."""
        return (self._scale(x) - self.b_pre) @ self.W_enc.T + self.b_enc

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> SparseCodes:
        """Sparse codes of raw activations ``x [..., d_in]`` (leading dims flattened), memory-bounded."""
        xc = self._scale(x.reshape(-1, self.d_in)) - self.b_pre
        vals, idx = self._encode(xc)
        return SparseCodes(idx, vals, self.width)

    def decode(self, codes: Codes) -> torch.Tensor:
        """Raw-unit reconstruction; sparse codes gather their atoms, dense codes use a matmul."""
        if isinstance(codes, SparseCodes):
            out = sparse_decode(codes.indices, codes.values, self.dictionary(), self.chunk_elems)
        else:
            out = codes @ self.dictionary()
        return (out + self.b_pre) / self.input_scale

    def forward(self, x: torch.Tensor) -> SAEOutput:
        """Codes and reconstruction of raw ``x [N, d_in]``.

        PyTorch convention: in eval mode this is the inference path, ``decode(encode(x))`` (per-row,
        batch-independent codes; what SAELens reproduces); in train mode it is :meth:`train_forward`.
        BatchTopK / mutual / feature choice select latents across the batch in training, so the two
        paths differ for them.
        """
        if not self.training:
            codes = self.encode(x)
            return SAEOutput(codes, self.decode(codes).reshape(x.shape))
        return self.train_forward(x)

    def train_forward(self, x: torch.Tensor) -> SAEOutput:
        """The training path on raw ``x [N, d_in]`` (differentiable, batch-level selection), any mode."""
        recon, codes, aux = self._train_forward(self._scale(x), None)
        return SAEOutput(codes, recon / self.input_scale, aux)

    def training_loss(
        self, x: torch.Tensor, dead_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """(loss, stats, fired latents) for a raw batch; loss = batch FVU + auxiliary terms."""
        xn = self._scale(x)
        recon, codes, aux = self._train_forward(xn, dead_mask)
        fvu = normalized_mse(xn, recon)
        loss = fvu + sum(aux.values()) if aux else fvu
        with torch.no_grad():
            stats = {"fvu": float(fvu), "l0": float(codes_l0(codes).float().mean())}
            stats.update({name: float(v) for name, v in aux.items()})
            fired = codes_fired(codes)
        return loss, stats, fired

    @torch.no_grad()
    def before_step(self) -> None:
        """Remove the gradient component parallel to each unit-norm atom (keeps the step on the sphere)."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            w, g = self.W_dec, self.W_dec.grad
            g -= (g * w).sum(-1, keepdim=True) * w

    @torch.no_grad()
    def after_step(self) -> None:
        if self.unit_norm_decoder:
            self.W_dec.copy_(F.normalize(self.W_dec, dim=-1))

    # -- what architectures implement ---------------------------------------------------------------
    def _train_forward(self, xn: torch.Tensor, dead_mask: torch.Tensor | None) -> TrainOut:
        """(reconstruction in scaled units, codes, auxiliary losses) for a scaled batch ``xn``."""
        raise NotImplementedError

    def _encode(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, indices) for centred scaled inputs, without autograd and memory-bounded."""
        raise NotImplementedError

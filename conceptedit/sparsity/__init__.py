"""Solvers that plugins share, on plain torch tensors.

- :mod:`~conceptedit.sparsity.ridge`: the weighted ridge (closed-form) edit of a linear layer that
  UCE uses and RealEra-style methods build on.
- :mod:`~conceptedit.sparsity.lasso`: batched lasso / elastic net (FISTA with restart, duality-gap
  stop), scikit-learn's objective scaling ``1/(2d)‖y − Dᵀw‖² + αρ‖w‖₁ + α(1−ρ)/2‖w‖²``.
- :mod:`~conceptedit.sparsity.omp`: batched orthogonal matching pursuit (Cholesky updates).
- :mod:`~conceptedit.sparsity.mp`: chunked matching pursuit (the SAE backend's ``mp`` encoder).

Pruning masks (magnitude, Wanda, N:M) will join here, so that a method needing one imports it rather
than writing its own.
"""

from conceptedit.sparsity.lasso import SparseCodes, elastic_net, lasso, objective, spams_to_sklearn
from conceptedit.sparsity.mp import matching_pursuit_select
from conceptedit.sparsity.omp import omp

__all__ = [
    "SparseCodes",
    "elastic_net",
    "lasso",
    "matching_pursuit_select",
    "objective",
    "omp",
    "spams_to_sklearn",
]

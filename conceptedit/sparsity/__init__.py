"""Solvers that plugins share, on plain torch tensors.

Today: :mod:`conceptedit.sparsity.ridge`, the weighted ridge (closed-form) edit of a linear layer that
UCE uses and RealEra-style methods build on. Sparse-coding solvers (batched lasso / elastic net, OMP)
and pruning masks (magnitude, Wanda, N:M) will join here, so that a method needing one imports it
rather than writing its own.
"""

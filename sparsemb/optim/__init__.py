"""Sparse-aware optimizers: a training step costs O(rows in the batch), not O(vocabulary).

The rules (``SparseSGD``, ``SparseAdagrad``, ``RowWiseAdagrad``, ``SparseAdam``, ``SparseAdamW``)
are ``torch.optim.Optimizer`` subclasses for embedding tables with sparse gradients. They take the
gradient's unique rows and values directly (coalescing torch's uncoalesced gradients first) and
read and write only those rows of the weight and the state: in pure PyTorch on CPU, or one fused
Triton kernel per table per step where ``sparsemb._backend.uses_triton(weight)``.

Shared by every rule:
  - bfloat16/float16 tables keep float32 state and compute in float32; ``stochastic_rounding=True``
    rounds the new weight up or down with probability by distance (unbiased), ``seed`` fixes the
    noise (default: drawn from torch's global generator at construction);
  - bad input (a dense gradient, bad options, state on another device, a checkpoint of another
    rule) raises ValueError, a gradient row outside the table IndexError, before any weight or
    state is written; on both backends every write bumps the tensor's autograd version;
  - ``enable_fused_backward()``: the update runs inside the backward of ``sparsemb.Embedding`` and
    no gradient is materialized.

``SparseAware`` puts a whole model under one optimizer (sparse tables get a rule, everything else a
torch optimizer); ``clip_grad_norm_`` clips dense and sparse gradients by their global norm.
"""

from sparsemb.optim.aware import SparseAware
from sparsemb.optim.base import SparseOptimizer
from sparsemb.optim.clip import clip_grad_norm_
from sparsemb.optim.rules import (
    SPARSE_RULES,
    RowWiseAdagrad,
    SparseAdagrad,
    SparseAdam,
    SparseAdamW,
    SparseSGD,
)

__all__ = [
    "SparseOptimizer",
    "SparseSGD",
    "SparseAdagrad",
    "RowWiseAdagrad",
    "SparseAdam",
    "SparseAdamW",
    "SparseAware",
    "clip_grad_norm_",
    "SPARSE_RULES",
]

# The public home of these names (reprs, pickles, error messages) is ``sparsemb.optim``.
for _public in (SparseOptimizer, SparseSGD, SparseAdagrad, RowWiseAdagrad, SparseAdam,
                SparseAdamW, SparseAware, clip_grad_norm_):  # fmt: skip
    _public.__module__ = __name__
del _public

"""Triton kernels of sparsemb, installed as ``sparsemb.kernels``.

Import the submodules through ``sparsemb._backend.kernel_module`` so that, on a machine without
a GPU, Triton's interpreter is switched on before any ``@triton.jit`` runs:
  - ``gather``: fused gather and in-place max_norm renorm of the unique looked-up rows;
  - ``grad``: deduplicated gradient (sort + deterministic segment reduce), sparse and dense;
  - ``optim``: fused sparse optimizer updates.
"""

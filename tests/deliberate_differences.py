"""Every deliberate difference between sparsemb and torch's embedding, in one place.

The oracle tests (test_layouts, test_torch_opinfo, test_functorch) compare sparsemb with
``torch.nn.Embedding`` / ``F.embedding`` and consult only this module where the two are meant to
differ, so each departure from torch is listed once, with its reason (README, "Differences from
torch, all deliberate"). An entry here is a design decision, not a known bug: known bugs fail.
"""

import torch
import torch.nn.functional as F

DIFFERENCES = {
    "validates_first": (
        "Bad input raises IndexError/TypeError/ValueError before anything is written; torch "
        "raises RuntimeError for some of it, and under max_norm renormalizes valid rows first."
    ),
    "coalesced_sparse_grad": (
        "The sparse gradient is coalesced (sorted unique rows, each summed once); torch's has one "
        "row per token. Compared as dense tensors. Its rows are sorted and unique always; it is "
        "flagged coalesced except on a CUDA table whose rows are not contiguous, where torch's "
        "CUDA dense.add_(coalesced sparse) writes the wrong elements (one row included, which "
        "torch flags coalesced by itself and sparsemb unflags)."
    ),
    "cuda_renorm_is_the_p_norm": (
        "max_norm on CUDA renorms by the p-norm of each row, as torch does on CPU and documents; "
        "torch's CUDA kernel is wrong for norm_type other than 1 and 2 (no abs), for "
        "non-contiguous tables (it walks stride(0) elements) and fails on empty indices. The "
        "oracle renorms with torch's CPU kernel there (helpers.torch_embedding)."
    ),
    "scale_grad_by_freq_with_sparse": (
        "scale_grad_by_freq works with sparse=True (torch raises); compared with torch's dense "
        "gradient."
    ),
    "sparse_0d_index": (
        "A 0-d index works with sparse=True (torch fails); compared with torch's dense gradient."
    ),
    "exact_double_backward_with_scale_grad_by_freq": (
        "Double backward with scale_grad_by_freq is the exact adjoint of the scaled gradient; "
        "torch's ignores the scaling, so it is not compared with torch."
    ),
    "float32_grad_accumulation": (
        "bfloat16/float16 gradients are summed in float32 and rounded once; torch sums in the "
        "table dtype. The oracle is torch's gradient computed in float32, rounded to the dtype."
    ),
    "bag_max_mode_sparse": (
        "EmbeddingBag: mode='max' works with sparse=True (torch raises); the sparse gradient "
        "equals torch's dense one."
    ),
    "bag_float32_pooling": (
        "EmbeddingBag: bfloat16/float16 bags are pooled in float32 and rounded once; the oracle "
        "is torch run on a float32 copy of the table, rounded to the dtype."
    ),
    "bag_include_last_offset_tail": (
        "EmbeddingBag: with include_last_offset=True, offsets[-1] must equal the input's length "
        "(ValueError); torch pools indices after it inconsistently (into the last bag for max "
        "mode or with a padding_idx, not for sum; mean divides by them too)."
    ),
}

# torch's error input (matched on its error_regex) -> the exception sparsemb raises instead, and
# why. A torch error input missing here fails test_torch_opinfo: decide its mapping first.
ERROR_TYPES = {
    r"'weight' must be 2-D": (ValueError, "a weight that is not 2-D is a bad value"),
    r"index out of range in self": (IndexError, "the same type; the message names the index"),
    r"Expected tensor for argument.*indices.*to have.*scalar type.*Long.*Int": (
        TypeError,
        "float indices are the wrong type",
    ),
    r"Trying to create tensor with negative dimension": (
        ValueError,
        "negative sizes are rejected by the constructor",
    ),
}

# Bad calls outside torch's own error inputs: (torch's exception, sparsemb's exception, reason).
EXTRA_ERRORS = {
    "integer table with max_norm": (
        RuntimeError,
        TypeError,
        "a renorm needs a floating-point table; torch fails in norm()",
    ),
    "weight that is not a tensor": (
        TypeError,
        TypeError,
        "the same type as torch",
    ),
}


def sparsemb_error_for(torch_error_regex: str) -> type[Exception]:
    """The exception sparsemb raises for the torch error input whose regex is given."""
    if torch_error_regex in ERROR_TYPES:
        return ERROR_TYPES[torch_error_regex][0]
    raise KeyError(
        f"torch has an error input {torch_error_regex!r} with no entry in ERROR_TYPES: decide "
        "which exception sparsemb raises for it and add it to tests/deliberate_differences.py"
    )


def grad_accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sparsemb sums gradient rows in (see float32_grad_accumulation)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def torch_can_take(sparse: bool, scale_grad_by_freq: bool, index_dim: int) -> bool:
    """Whether torch's sparse=True path accepts this call (else the oracle uses sparse=False)."""
    return sparse and not scale_grad_by_freq and index_dim > 0


def torch_weight_grad(
    indices, grad_out, num_embeddings, padding_idx=None, scale_grad_by_freq=False
):
    """The gradient oracle: torch's dense weight gradient of a lookup, summed in the dtype
    sparsemb sums in (float32_grad_accumulation) and rounded to ``grad_out``'s dtype."""
    acc = grad_accumulation_dtype(grad_out.dtype)
    weight = torch.zeros(
        num_embeddings, grad_out.shape[-1], dtype=acc, device=grad_out.device, requires_grad=True
    )
    out = F.embedding(
        indices, weight, padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq
    )
    out.backward(grad_out.to(acc))
    return weight.grad.to(grad_out.dtype)

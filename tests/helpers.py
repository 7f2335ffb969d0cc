"""Builders shared by the tests: twin tables (sparsemb and torch) with identical weights, and
the torch oracle for max_norm where torch's own CUDA renorm is wrong."""

import torch
import torch.nn.functional as F

import sparsemb

# (atol, rtol) for sums and renorms per weight dtype; gathers are compared exactly.
TOLERANCES = {
    torch.float32: (1e-6, 1e-5),
    torch.float64: (1e-12, 1e-10),
    torch.bfloat16: (1e-2, 1.6e-2),
    torch.float16: (1e-3, 2e-3),
}


def cuda_renorm_is_wrong(weight, indices, norm_type) -> bool:
    """Whether torch's CUDA ``embedding_renorm_`` (torch 2.11) gives a wrong answer here, so the
    oracle must renorm on CPU. Its kernel sums ``pow(x, p)`` without ``abs`` (wrong for every p
    but 1 and 2: odd p subtract, fractional p make NaN, inf gives 1), walks ``stride(0)``
    elements from each row start as the row (wrong for any non-contiguous table), and launches
    an empty grid for empty indices (CUDA error: invalid argument). Its CPU kernel computes the
    documented p-norm over each row, which sparsemb computes on every device."""
    if weight.device.type != "cuda":
        return False
    contiguous_rows = weight.stride(1) == 1 and weight.stride(0) == weight.shape[1]
    return float(norm_type) not in (1.0, 2.0) or not contiguous_rows or indices.numel() == 0


def torch_embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0,
                    scale_grad_by_freq=False, sparse=False):
    """``F.embedding``, the oracle, with max_norm's in-place renorm done by torch's CPU kernel
    (on a copy, written back) where ``cuda_renorm_is_wrong``; the lookup itself stays torch's
    on the tensor's device."""
    if weight.device.type == "cuda" and input.numel() == 0:
        # torch's CUDA backward with scale_grad_by_freq fails on empty indices (CUDA error:
        # invalid argument, torch 2.11); with no indices there is no frequency to scale by
        scale_grad_by_freq = False
    if max_norm is not None and cuda_renorm_is_wrong(weight, input, norm_type):
        with torch.no_grad():
            rows = weight.detach().cpu()
            torch.embedding_renorm_(rows, input.detach().cpu(), max_norm, norm_type)
            weight.detach().copy_(rows)
        max_norm = None
    return F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)


class OracleEmbedding(torch.nn.Embedding):
    """``nn.Embedding`` whose forward is ``torch_embedding`` (torch's answer on every device)."""

    def forward(self, input):
        return torch_embedding(input, self.weight, self.padding_idx, self.max_norm,
                               self.norm_type, self.scale_grad_by_freq, self.sparse)


def twin_tables(num_embeddings, dim, dtype=torch.float32, seed=0, device="cpu", **options):
    """(sparsemb.Embedding, torch.nn.Embedding) holding the same random weights (the torch
    side an ``OracleEmbedding``: the same module, right where torch's CUDA renorm is wrong)."""
    torch.manual_seed(seed)
    ours = sparsemb.Embedding(num_embeddings, dim, dtype=dtype, **options).to(device)
    theirs = OracleEmbedding(num_embeddings, dim, dtype=dtype, **options).to(device)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
    return ours, theirs


def dense(grad):
    """A gradient as a dense tensor, whatever its layout."""
    return grad.coalesce().to_dense() if grad.is_sparse else grad


def random_indices(num_embeddings, shape, seed=1, hot=None, dtype=torch.int64, device="cpu"):
    """Random indices with heavy duplication: a third of them point at row ``hot``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, num_embeddings, shape, generator=g)
    if hot is not None and idx.numel():
        flat = idx.view(-1)
        flat[: max(1, flat.numel() // 3)] = hot
        idx = flat[torch.randperm(flat.numel(), generator=g)].view(shape)
    return idx.to(dtype=dtype, device=device)


def integer_grad(shape, dtype, seed=2, device="cpu"):
    """Integer-valued output gradients: their sums are exact in every float dtype used here."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=g).to(dtype=dtype, device=device)

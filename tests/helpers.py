"""Builders shared by the tests: twin tables (sparsemb and torch) with identical weights."""

import torch

import sparsemb

# (atol, rtol) for sums and renorms per weight dtype; gathers are compared exactly.
TOLERANCES = {
    torch.float32: (1e-6, 1e-5),
    torch.float64: (1e-12, 1e-10),
    torch.bfloat16: (1e-2, 1.6e-2),
    torch.float16: (1e-3, 2e-3),
}


def twin_tables(num_embeddings, dim, dtype=torch.float32, seed=0, device="cpu", **options):
    """(sparsemb.Embedding, torch.nn.Embedding) holding the same random weights."""
    torch.manual_seed(seed)
    ours = sparsemb.Embedding(num_embeddings, dim, dtype=dtype, **options).to(device)
    theirs = torch.nn.Embedding(num_embeddings, dim, dtype=dtype, **options).to(device)
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

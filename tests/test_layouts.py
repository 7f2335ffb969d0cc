"""sparsemb.embedding against F.embedding over memory layouts, dtypes and options, both backends.

Random configurations cross index layouts (contiguous, strided, expanded, transposed), index
dtypes, table layouts (contiguous, transposed, row- and column-strided), table dtypes, max_norm
and norm_type (NaN and inf rows in the table), padding_idx, scale_grad_by_freq and sparse. Each
compares the output, the weight after the call (max_norm renorms in place) and the gradient
(output gradients are integer-valued: sums are exact in float32, whatever the order).
The seed of each configuration is printed and in every assertion message; set
``SPARSEMB_TEST_SEED`` to draw other configurations. Each side builds its own tensors from the
seed, so torch and sparsemb never share a tensor object. Where the two differ on purpose, the
oracle follows ``deliberate_differences``.
"""

import os
import random
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from deliberate_differences import grad_accumulation_dtype, torch_can_take, torch_weight_grad

import sparsemb
from helpers import TOLERANCES, dense, integer_grad, torch_embedding
from sparsemb._autograd import flags_coalesced

BASE_SEED = int(os.environ.get("SPARSEMB_TEST_SEED", "0"))
INDEX_LAYOUTS = ("contiguous", "strided", "expanded", "transposed")
WEIGHT_LAYOUTS = ("contiguous", "transposed", "row_strided", "column_strided")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
NORM_TYPES = (1.0, 2.0, 3.5, float("inf"))
# The Triton interpreter is slow: fewer random configurations on that backend.
CASES = [("torch", BASE_SEED + i) for i in range(40)] + [
    ("triton", BASE_SEED + 1000 + i) for i in range(12)
]


@dataclass(frozen=True)
class Config:
    seed: int
    num_embeddings: int
    dim: int
    dtype: torch.dtype
    weight_layout: str
    index_shape: tuple
    index_dtype: torch.dtype
    index_layout: str
    padding_idx: int | None
    max_norm: float | None
    norm_type: float
    scale_grad_by_freq: bool
    sparse: bool
    special_values: bool  # a NaN, an inf and a -inf row among the looked-up rows


def random_config(seed: int) -> Config:
    rng = random.Random(seed)
    num_embeddings = rng.randint(1, 13)
    padding = rng.choice([None, rng.randrange(num_embeddings), -rng.randint(1, num_embeddings)])
    return Config(
        seed=seed,
        num_embeddings=num_embeddings,
        dim=rng.choice([1, 3, 5, 17]),
        dtype=rng.choice(FLOAT_DTYPES),
        weight_layout=rng.choice(WEIGHT_LAYOUTS),
        index_shape=rng.choice([(), (1,), (7,), (3, 4), (2, 3, 2), (0,), (2, 0)]),
        index_dtype=rng.choice([torch.int32, torch.int64]),
        index_layout=rng.choice(INDEX_LAYOUTS),
        padding_idx=padding,
        max_norm=rng.choice([None, 0.5, 1.5]),
        norm_type=rng.choice(NORM_TYPES),
        scale_grad_by_freq=rng.random() < 0.4,
        sparse=rng.random() < 0.5,
        special_values=rng.random() < 0.3,
    )


def make_indices(shape, num_embeddings, layout, dtype, seed, device="cpu"):
    """Random indices of ``shape`` laid out as ``layout`` (a fresh tensor on every call)."""
    g = torch.Generator().manual_seed(seed)

    def draw(size):
        return torch.randint(0, num_embeddings, size, generator=g).to(dtype=dtype, device=device)

    if layout == "contiguous":
        return draw(shape)
    if layout == "strided":  # every other element of a wider tensor, as in idx[:, 0]
        return draw((*shape, 2))[..., 0]
    if layout == "expanded":  # a size-1 dim broadcast with stride 0
        if not shape:
            return draw(())
        dim = int(torch.randint(len(shape), (), generator=g))
        small = list(shape)
        small[dim] = 1
        return draw(tuple(small)).expand(shape)
    if layout == "transposed":  # a transposed base; 1-D: a row of a transposed matrix
        if len(shape) >= 2:
            return draw(shape[::-1]).permute(*reversed(range(len(shape))))
        return draw((*shape, 3)).movedim(-1, 0)[1] if shape else draw((3,))[1]
    raise ValueError(layout)


def make_weight(num_embeddings, dim, dtype, layout, seed, special_rows=(), device="cpu"):
    """A (num_embeddings, dim) table with values N(0, 2^2) laid out as ``layout``; the
    ``special_rows`` (up to 3) get a NaN, an inf and a -inf entry."""
    g = torch.Generator().manual_seed(seed)

    def draw(size):
        return (torch.randn(size, generator=g, dtype=torch.float64) * 2).to(dtype).to(device)

    v, d = num_embeddings, dim
    if layout == "contiguous":
        weight = draw((v, d))
    elif layout == "transposed":
        weight = draw((d, v)).t()
    elif layout == "row_strided":
        weight = draw((v, d + 3))[:, :d]
    elif layout == "column_strided":
        weight = draw((v, 2 * d))[:, ::2]
    else:
        raise ValueError(layout)
    for row, value in zip(special_rows, ("nan", "inf", "-inf"), strict=False):
        weight[row, row % d] = float(value)
    return weight


def explain(context):
    """An assert_close message that puts ``context`` above torch's own report."""
    return lambda report: f"{context}\n{report}"


def assert_layout(tensor, layout):
    """The builders must really produce the layout under test (else the test proves nothing)."""
    if layout != "contiguous" and tensor.dim() and min(tensor.shape) > 1:
        assert not tensor.is_contiguous(), (layout, tensor.shape, tensor.stride())


def run_side(fn, cfg, device, sparse):
    """One side of the comparison, built from the seed: (output, weight after, weight grad)."""
    idx = make_indices(
        cfg.index_shape, cfg.num_embeddings, cfg.index_layout, cfg.index_dtype, cfg.seed, device
    )
    special_rows = idx.unique().tolist()[:3] if cfg.special_values else ()
    weight = make_weight(
        cfg.num_embeddings, cfg.dim, cfg.dtype, cfg.weight_layout, cfg.seed, special_rows, device
    ).requires_grad_()
    assert_layout(weight, cfg.weight_layout)
    assert_layout(idx, cfg.index_layout)
    out = fn(
        idx,
        weight,
        padding_idx=cfg.padding_idx,
        max_norm=cfg.max_norm,
        norm_type=cfg.norm_type,
        scale_grad_by_freq=cfg.scale_grad_by_freq,
        sparse=sparse,
    )
    out.backward(integer_grad(out.shape, cfg.dtype, cfg.seed + 1, device))
    return out.detach(), weight.detach(), weight.grad, idx


def grad_oracle(cfg, device):
    """torch's dense gradient, summed in the dtype sparsemb sums in (float32_grad_accumulation)."""
    idx = make_indices(
        cfg.index_shape, cfg.num_embeddings, cfg.index_layout, cfg.index_dtype, cfg.seed, device
    )
    grad_out = integer_grad((*idx.shape, cfg.dim), cfg.dtype, cfg.seed + 1, device)
    return torch_weight_grad(
        idx, grad_out, cfg.num_embeddings, cfg.padding_idx, cfg.scale_grad_by_freq
    )


def check_against_torch(cfg, device):
    print(f"config: {cfg}")
    msg = f"seed {cfg.seed}: {cfg}"
    out, weight, grad, idx = run_side(sparsemb.embedding, cfg, device, cfg.sparse)
    torch_sparse = torch_can_take(cfg.sparse, cfg.scale_grad_by_freq, len(cfg.index_shape))
    ref_out, ref_weight, ref_grad, _ = run_side(torch_embedding, cfg, device, torch_sparse)

    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype, msg
    # The output is a gather of our own weight after the renorm: exact.
    torch.testing.assert_close(
        out, weight[idx.long()], rtol=0, atol=0, equal_nan=True, msg=explain(msg)
    )
    atol, rtol = (0, 0) if cfg.max_norm is None else TOLERANCES[cfg.dtype]
    for ours, theirs in ((weight, ref_weight), (out, ref_out)):
        torch.testing.assert_close(
            ours, theirs, atol=atol, rtol=rtol, equal_nan=True, msg=explain(msg)
        )

    assert grad is not None and grad.is_sparse == cfg.sparse, msg
    if cfg.sparse:
        # deliberate difference: coalesced_sparse_grad (not on a non-contiguous CUDA table)
        assert grad.is_coalesced() == flags_coalesced(weight), msg
    same_sums = grad_accumulation_dtype(cfg.dtype) == cfg.dtype
    expected = dense(ref_grad) if same_sums else grad_oracle(cfg, device)
    atol, rtol = TOLERANCES[cfg.dtype]
    torch.testing.assert_close(dense(grad), expected, atol=atol, rtol=rtol, msg=explain(msg))


@pytest.mark.parametrize("backend, seed", CASES, indirect=["backend"])
def test_random_configuration_matches_torch(backend, seed):
    check_against_torch(random_config(seed), backend.device)


@pytest.mark.parametrize("index_layout", INDEX_LAYOUTS)
@pytest.mark.parametrize("index_shape", [(7,), (3, 4)])
def test_index_layouts_read_the_right_rows(backend, index_layout, index_shape):
    """Exact gather and gradient for every index layout, 1-D included (the strided 1-D case is
    ``idx[:, 0]`` of a 2-column tensor)."""
    for weight_layout in WEIGHT_LAYOUTS:
        cfg = Config(
            seed=7,
            num_embeddings=11,
            dim=3,
            dtype=torch.float32,
            weight_layout=weight_layout,
            index_shape=index_shape,
            index_dtype=torch.int64,
            index_layout=index_layout,
            padding_idx=None,
            max_norm=None,
            norm_type=2.0,
            scale_grad_by_freq=False,
            sparse=False,
            special_values=False,
        )
        check_against_torch(cfg, backend.device)


def test_strided_1d_indices_example(backend):
    """The reported case: a column of a (3, 2) index tensor must read rows 1, 2, 3."""
    base = torch.tensor([[1, 9], [2, 9], [3, 9]], device=backend.device)
    weight = torch.arange(40.0, device=backend.device).view(10, 4)
    out = sparsemb.embedding(base[:, 0], weight.clone())
    assert torch.equal(out, F.embedding(base[:, 0].clone(), weight.clone()))


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_max_norm_with_nan_and_inf_rows(backend, norm_type, dtype, index_dtype):
    """torch leaves a NaN row as it is (its norm is not > max_norm) and turns an inf row into
    0 and NaN (scale 0); every other looked-up row is renormalized."""
    cfg = Config(
        seed=3,
        num_embeddings=6,
        dim=5,
        dtype=dtype,
        weight_layout="contiguous",
        index_shape=(8,),
        index_dtype=index_dtype,
        index_layout="contiguous",
        padding_idx=None,
        max_norm=1.0,
        norm_type=norm_type,
        scale_grad_by_freq=False,
        sparse=False,
        special_values=True,
    )
    check_against_torch(cfg, backend.device)


@pytest.mark.parametrize("weight_layout", WEIGHT_LAYOUTS)
@pytest.mark.parametrize("index_layout", INDEX_LAYOUTS)
def test_integer_table_lookup(backend, weight_layout, index_layout):
    """Integer tables are lookup-only: exact gathers in every layout."""
    weight = make_weight(9, 4, torch.float64, weight_layout, 0)
    idx = make_indices((3, 4), 9, index_layout, torch.int64, 0, backend.device)
    ours = sparsemb.embedding(idx, (weight * 100).to(torch.int32).to(backend.device))
    theirs = F.embedding(idx.clone(), (weight * 100).to(torch.int32).to(backend.device))
    assert ours.dtype == torch.int32
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_integer_table_with_max_norm_raises_before_writing(backend, dtype):
    """torch raises (norm() of an integer tensor); sparsemb must not zero the rows instead."""
    weight = torch.arange(12, device=backend.device).view(6, 2).to(dtype)
    idx = torch.tensor([1, 4], device=backend.device)
    with pytest.raises(RuntimeError):
        F.embedding(idx.clone(), weight.clone(), max_norm=1.0)
    ours = weight.clone()
    with pytest.raises((TypeError, ValueError)):
        sparsemb.embedding(idx, ours, max_norm=1.0)
    assert torch.equal(ours, weight)


def _training_pair(device, sparse):
    """(sparsemb, torch) tables on a transposed (non-contiguous) weight, so the optimizer state
    (zeros_like, preserve_format) is non-contiguous too."""
    tables = []
    for cls in (sparsemb.Embedding, torch.nn.Embedding):
        table = cls(13, 5, padding_idx=1, sparse=sparse, device=device)
        weight = make_weight(13, 5, torch.float32, "transposed", 11, device=device)
        table.weight = torch.nn.Parameter(weight)
        assert not table.weight.is_contiguous()
        tables.append(table)
    return tables


@pytest.mark.parametrize(
    "optimizer, sparse, options",
    [
        (torch.optim.SparseAdam, True, {"lr": 0.1}),
        (torch.optim.SGD, True, {"lr": 0.5}),
        (torch.optim.SGD, False, {"lr": 0.5, "momentum": 0.9}),
        (torch.optim.Adam, False, {"lr": 0.1}),
    ],
)
def test_training_steps_with_strided_indices(backend, optimizer, sparse, options):
    """A few steps of a torch optimizer on both sides, strided indices: same weights and state."""
    ours, theirs = _training_pair(backend.device, sparse)
    opts = [optimizer(t.parameters(), **options) for t in (ours, theirs)]
    for step in range(4):
        for table, opt in zip((ours, theirs), opts, strict=True):
            idx = make_indices((4, 6), 13, "strided", torch.int64, step, backend.device)
            g = torch.Generator().manual_seed(100 + step)
            target = torch.randn(4, 6, 5, generator=g).to(backend.device)
            opt.zero_grad()
            ((table(idx) - target) ** 2).sum().backward()
            opt.step()
        msg = f"{optimizer.__name__} step {step}"
        torch.testing.assert_close(ours.weight, theirs.weight, atol=1e-5, rtol=1e-5, msg=msg)
        for p_ours, p_theirs in zip(ours.parameters(), theirs.parameters(), strict=True):
            state, ref_state = opts[0].state[p_ours], opts[1].state[p_theirs]
            assert state.keys() == ref_state.keys(), msg
            for key in ref_state:
                torch.testing.assert_close(state[key], ref_state[key], atol=1e-5, rtol=1e-5)

"""Sparse-gradient training under torch.compile: no graph break, the same gradients as eager."""

import copy

import pytest
import torch
from torch import nn

import sparsemb
import sparsemb.optim
from helpers import dense, random_indices

VOCAB, DIM = 60, 16


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class Block(nn.Module):
    """A Llama block: RMSNorm, causal attention, RMSNorm, SwiGLU."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.gate = nn.Linear(dim, 2 * dim, bias=False)
        self.up = nn.Linear(dim, 2 * dim, bias=False)
        self.down = nn.Linear(2 * dim, dim, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, -1).unbind(2)
        att = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        h = self.norm2(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class TinyLlama(nn.Module):
    def __init__(self, layers=2, tie=False):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(Block(DIM) for _ in range(layers))
        self.norm = RMSNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def loss_of(model, ids):
    logits = model(ids[:, :-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def twins(**kwargs):
    torch.manual_seed(0)
    eager = TinyLlama(**kwargs)
    sparsemb.convert(eager)
    eager.embed.sparse = True  # by hand: convert would untie a tied table
    return eager, copy.deepcopy(eager)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_llama_style_model_has_no_graph_break():
    _, model = twins()
    ids = random_indices(VOCAB, (2, 9), hot=4)
    explained = torch._dynamo.explain(lambda i: loss_of(model, i))(ids)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_compiled_sparse_gradients_equal_eager(backend):
    eager, model = twins()
    eager.to(backend.device), model.to(backend.device)
    compiled = torch.compile(lambda i: loss_of(model, i), fullgraph=True)
    for seed in (1, 2):  # two backward calls: gradients accumulate
        ids = random_indices(VOCAB, (2, 9), seed=seed, hot=4, device=backend.device)
        loss_of(eager, ids).backward()
        compiled(ids).backward()
    grad = model.embed.weight.grad
    assert grad.is_sparse and grad._nnz() <= 2 * 2 * 8  # O(batch) rows, not the vocabulary
    torch.testing.assert_close(dense(grad), dense(eager.embed.weight.grad))
    for (name, ours), theirs in zip(model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(ours.grad.to_dense() if ours.grad.is_sparse else ours.grad,
                                   dense(theirs.grad), msg=name)


def test_one_compiled_graph_serves_two_models():
    """The weight reaches the gradient sink as the Parameter itself, not a traced constant."""
    (first, _), (second, _) = twins(), twins()
    with torch.no_grad():
        second.embed.weight.mul_(2)
    step = torch.compile(loss_of, fullgraph=True)
    ids = random_indices(VOCAB, (2, 9))
    step(first, ids).backward()
    step(second, ids).backward()
    for model in (first, second):
        ref = copy.deepcopy(model)
        for p in ref.parameters():
            p.grad = None
        loss_of(ref, ids).backward()
        torch.testing.assert_close(dense(model.embed.weight.grad), dense(ref.embed.weight.grad))


def test_tied_sparse_table_under_compile_sums_both_gradients():
    eager, model = twins(tie=True)
    ids = random_indices(VOCAB, (2, 9), hot=4)
    loss_of(eager, ids).backward()
    torch.compile(lambda i: loss_of(model, i), fullgraph=True)(ids).backward()
    torch.testing.assert_close(dense(model.embed.weight.grad), dense(eager.embed.weight.grad))


def test_fused_backward_under_compile_equals_eager():
    eager, model = twins()
    opts = [sparsemb.optim.SparseAware(m, sparse="adam", dense=torch.optim.Adam, lr=1e-2,
                                       fused_backward=True) for m in (eager, model)]
    compiled = torch.compile(lambda i: loss_of(model, i), fullgraph=True)
    for seed in (1, 2, 3):
        ids = random_indices(VOCAB, (2, 9), seed=seed, hot=4)
        for step, opt in ((lambda i: loss_of(eager, i), opts[0]), (compiled, opts[1])):
            opt.zero_grad()
            step(ids).backward()
            opt.step()
    assert model.embed.weight.grad is None  # the update ran inside backward
    for (name, ours), theirs in zip(model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5, msg=name)


def test_max_norm_and_two_lookups_of_one_table_under_compile():
    torch.manual_seed(0)
    table = sparsemb.Embedding(VOCAB, DIM, max_norm=1.0, padding_idx=2, sparse=True,
                               scale_grad_by_freq=True)
    twin = copy.deepcopy(table)
    a, b = random_indices(VOCAB, (3, 5), seed=1, hot=2), random_indices(VOCAB, (4,), seed=2)

    def f(t, a, b):
        return (t(a).sum(1) ** 2).sum() + t(b).pow(3).sum()

    f(table, a, b).backward()
    torch.compile(f, fullgraph=True)(twin, a, b).backward()
    torch.testing.assert_close(twin.weight, table.weight)
    torch.testing.assert_close(dense(twin.weight.grad), dense(table.weight.grad))


def test_a_computed_weight_gets_a_dense_gradient_without_a_graph_break():
    """A non-leaf weight's gradient flows back through the ops that made it: under compile it
    is dense (a sparse tensor cannot enter a compiled backward), and equals eager's."""
    base = torch.randn(VOCAB, DIM)
    eager_w, compiled_w = base.clone().requires_grad_(), base.clone().requires_grad_()
    ids = random_indices(VOCAB, (3, 4), hot=5)

    def f(w, i):
        return (sparsemb.embedding(i, w * 2, padding_idx=1, sparse=True) ** 2).sum()

    f(eager_w, ids).backward()
    explained = torch._dynamo.explain(f)(compiled_w.detach().requires_grad_(), ids)
    assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    torch.compile(f, fullgraph=True)(compiled_w, ids).backward()
    torch.testing.assert_close(dense(compiled_w.grad), dense(eager_w.grad))

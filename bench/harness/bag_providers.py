"""EmbeddingBag groups: pooled forward and training step, sparsemb vs nn.EmbeddingBag and
FBGEMM's TBE with PoolingMode.SUM / MEAN (its home ground).

Every bag workload is ``BAGS`` bags of ``POOLING`` Zipf indices over the workload's table (the
issue's 4,096 x 32), drawn from the workload's seed whatever its ``num_indices``; the output
gradient is normal. Offsets are int64: the B bag starts for the nn.EmbeddingBag API, and the
B + 1 boundaries FBGEMM takes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import torch

import sparsemb
from sparsemb.optim import SparseAdam, SparseSGD

from .workloads import ZIPF_A, Inputs, zipf_indices

if TYPE_CHECKING:
    from .providers import Case


def _providers():
    """``bench.harness.providers``, reached at call time: it builds its GROUPS from
    ``bag_groups()`` while it is imported, so a module-level import here would be circular."""
    return importlib.import_module(f"{__package__}.providers")

BAGS, POOLING = 4096, 32
_BAG_INPUTS: dict[int, tuple] = {}  # id(inputs) -> (inputs, indices, offsets, grad)


def bag_inputs(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat indices (BAGS * POOLING,), boundaries (BAGS + 1,), bag gradient (BAGS, D))."""
    cached = _BAG_INPUTS.get(id(inputs))
    if cached is None or cached[0] is not inputs:
        w = inputs.workload
        g = torch.Generator().manual_seed(w.seed + 7)
        idx = zipf_indices(w.num_embeddings, BAGS * POOLING, ZIPF_A, g).to(inputs.device)
        offsets = torch.arange(BAGS + 1, device=inputs.device) * POOLING
        grad = torch.randn(BAGS, w.embedding_dim, generator=g) * 0.01
        cached = (inputs, idx, offsets, grad.to(inputs.weight.dtype).to(inputs.device))
        _BAG_INPUTS.clear()
        _BAG_INPUTS[id(inputs)] = cached
    return cached[1:]


def _table(cls, inputs: Inputs, mode: str, sparse: bool):
    v, d = inputs.weight.shape
    return cls(v, d, mode=mode, sparse=sparse, _weight=inputs.weight.clone())


def _forward(cls, mode: str):
    def build(inputs: Inputs) -> Case:
        table = _table(cls, inputs, mode, False)
        idx, bounds, _ = bag_inputs(inputs)
        offsets = bounds[:-1]

        def step():
            with torch.no_grad():
                return table(idx, offsets)

        return _providers().Case(step, params=[table.weight])

    return build


def _fbgemm_forward(mode: str):
    def build(inputs: Inputs) -> Case:
        tbe = _providers()._fbgemm_tbe(inputs, "sgd", pooling=mode.upper())
        idx, offsets, _ = bag_inputs(inputs)

        def step():
            with torch.no_grad():
                return tbe(idx, offsets)

        return _providers().Case(step, params=tbe.split_embedding_weights())

    return build


def _train(cls, make_opt, sparse: bool, fused: str | None = None):
    """A training step; ``fused``: the sparse rule ("adam", "sgd") applied inside backward."""

    def build(inputs: Inputs) -> Case:
        table = _table(cls, inputs, "sum", sparse)
        if fused:
            opt = _providers()._sparsemb_fused_backward(fused, table)
        else:
            opt = make_opt(table.parameters())
        idx, bounds, grad = bag_inputs(inputs)
        offsets = bounds[:-1]

        def optimizer():
            opt.step()
            opt.zero_grad(set_to_none=True)

        p = _providers()
        step, phases = p.train_phases(
            lambda: table(idx, offsets), lambda out: out.backward(grad), optimizer
        )
        return p.Case(step, params=[table.weight], optimizer=opt, phases=phases,
                      in_backward=bool(fused))

    return build


def _fbgemm_train(optimizer: str):
    def build(inputs: Inputs) -> Case:
        tbe = _providers()._fbgemm_tbe(inputs, optimizer, pooling="SUM")
        idx, offsets, grad = bag_inputs(inputs)

        p = _providers()  # the update is fused into FBGEMM's backward: no optimizer phase
        step, phases = p.train_phases(lambda: tbe(idx, offsets), lambda out: out.backward(grad))
        return p.Case(step, params=tbe.split_embedding_weights(),
                      extra_state=p._fbgemm_states(tbe), phases=phases, in_backward=True)

    return build


def _adam(rule):
    p = _providers()
    return lambda params: rule(params, lr=p.LR["adam"], betas=p.BETAS, eps=p.EPS["adam"])


def bag_groups() -> list:
    p = _providers()
    Group, Provider, LR = p.Group, p.Provider, p.LR
    shape = f"{BAGS}x{POOLING}"
    groups = []
    for mode in ("sum", "mean"):
        groups.append(Group(f"bag_forward_{mode}", f"EmbeddingBag forward ({mode}, {shape})",
                            "bag_forward", (
            Provider(f"sparsemb bag {mode}", "sparsemb", _forward(sparsemb.EmbeddingBag, mode),
                     ours=True),
            Provider(f"torch bag {mode}", "torch", _forward(torch.nn.EmbeddingBag, mode)),
            Provider(f"fbgemm TBE {mode.upper()}", "fbgemm", _fbgemm_forward(mode),
                     needs_fbgemm=True),
        )))  # fmt: skip
    groups.append(Group("bag_step_adam", f"EmbeddingBag training step: Adam (sum, {shape})",
                        "step", (
        Provider("sparsemb bag + SparseAdam", "sparsemb",
                 _train(sparsemb.EmbeddingBag, _adam(SparseAdam), True), ours=True,
                 table_copies=3),
        Provider("sparsemb bag fused-backward Adam", "sparsemb fused",
                 _train(sparsemb.EmbeddingBag, None, True, fused="adam"), table_copies=3),
        Provider("torch bag dense + Adam", "torch",
                 _train(torch.nn.EmbeddingBag, _adam(torch.optim.Adam), False), table_copies=6),
        Provider("torch bag sparse + SparseAdam", "torch sparse",
                 _train(torch.nn.EmbeddingBag, _adam(torch.optim.SparseAdam), True),
                 table_copies=3),
    )))  # fmt: skip
    groups.append(Group("bag_step_sgd", f"EmbeddingBag training step: SGD (sum, {shape})",
                        "step", (
        Provider("sparsemb bag + SparseSGD", "sparsemb",
                 _train(sparsemb.EmbeddingBag, lambda p: SparseSGD(p, lr=LR["sgd"]), True),
                 ours=True),
        Provider("sparsemb bag fused-backward SGD", "sparsemb fused",
                 _train(sparsemb.EmbeddingBag, None, True, fused="sgd")),
        Provider("torch bag sparse + SGD", "torch sparse",
                 _train(torch.nn.EmbeddingBag, lambda p: torch.optim.SGD(p, lr=LR["sgd"]), True)),
        Provider("fbgemm TBE SUM EXACT_SGD", "fbgemm", _fbgemm_train("sgd"), needs_fbgemm=True),
    )))  # fmt: skip
    return groups


BAG_GROUPS = ("bag_forward_sum", "bag_forward_mean", "bag_step_adam", "bag_step_sgd")

"""Benchmark workloads and providers shared by ``bench/`` (pytest-benchmark) and the report.

One place defines what is measured, so the pytest suites and the report command time the same
code on the same inputs:

- ``Workload``: table size, indices per step, index distribution, dtype; ``make_inputs`` builds
  its inputs from a fixed seed (normal weights, Zipf(1.2) indices over a shuffled vocabulary or
  uniform ones, a normal output gradient), so nothing is timed on zeros;
- ``GROUPS``: one group per kind of work (forward, forward + backward, full training step,
  optimizer step alone), each holding sparsemb ("ours") and every peer that computes the same
  thing: ``torch.nn.Embedding`` (dense and sparse gradient, torch optimizers), ``torch.compile``
  of that model, and FBGEMM's table-batched embedding (pooling NONE) where it imports;
- ``Provider.build`` returns a ``Case`` whose ``step()`` is one timed step; it raises
  ``Unavailable`` with a reason where the provider cannot run here (missing package, dtype);
- ``PeakMemory`` measures a provider's peak memory: CUDA ``max_memory_allocated`` over the
  baseline, or on CPU the process' peak RSS (VmHWM, reset through ``/proc/self/clear_refs``) over
  the RSS before the provider was built.

This module is private; its names may change with the benchmark.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NUM_INDICES = 65_536
ZIPF_A = 1.2
SEED = 0
MAX_NORM = 1.0
LR = {"sgd": 0.01, "adagrad": 0.01, "rowwise_adagrad": 0.01, "adam": 1e-3}
EPS = {"adagrad": 1e-10, "rowwise_adagrad": 1e-8, "adam": 1e-8}
BETAS = (0.9, 0.999)


class Unavailable(Exception):
    """A provider cannot run on this machine or for this workload; the message says why."""


# ----------------------------------------------------------------------------------------------
# Workloads and inputs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One benchmark input: a (V, D) table looked up with N indices per step."""

    num_embeddings: int
    embedding_dim: int
    num_indices: int = NUM_INDICES
    distribution: str = "zipf"  # "zipf" (a = 1.2 over a shuffled vocabulary) or "uniform"
    dtype: str = "float32"
    seed: int = SEED

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def element_size(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    @property
    def table_bytes(self) -> int:
        return self.num_embeddings * self.embedding_dim * self.element_size

    def label(self) -> str:
        return (
            f"V={human_count(self.num_embeddings)} D={self.embedding_dim} "
            f"N={self.num_indices:,} {self.distribution} {self.dtype}"
        )

    def slug(self) -> str:
        return (
            f"V{human_count(self.num_embeddings)}-D{self.embedding_dim}-N{self.num_indices}-"
            f"{self.distribution}-{self.dtype}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def human_count(n: int) -> str:
    """10**6 -> '1e6', 65536 -> '65536': exact powers of ten in short form."""
    if n >= 10 and 10 ** round(math.log10(n)) == n:
        return f"1e{round(math.log10(n))}"
    return str(n)


@dataclass
class Inputs:
    """The tensors of one workload, on the benchmark device."""

    workload: Workload
    device: torch.device
    weight: Tensor  # (V, D) initial weights; each provider clones it
    indices: Tensor  # (N,) int64
    grad_output: Tensor  # (N, D) gradient fed to backward
    unique_rows: int

    _offsets: Tensor | None = None
    _sparse_grad: Tensor | None = None

    @property
    def offsets(self) -> Tensor:
        """FBGEMM bag offsets for pooling NONE: N bags of one index each."""
        if self._offsets is None:
            n = self.indices.numel()
            self._offsets = torch.arange(n + 1, dtype=torch.int64, device=self.device)
        return self._offsets

    @property
    def sparse_grad(self) -> Tensor:
        """The coalesced (V, D) sparse gradient of one step, for the optimizer-only group."""
        if self._sparse_grad is None:
            v, d = self.weight.shape
            grad = torch.sparse_coo_tensor(
                self.indices.unsqueeze(0), self.grad_output, (v, d), check_invariants=False
            )
            self._sparse_grad = grad.coalesce()
        return self._sparse_grad


def zipf_indices(num_embeddings: int, n: int, a: float, generator: torch.Generator) -> Tensor:
    """``n`` draws of Zipf(a) ranks truncated to the vocabulary, mapped through a random shuffle.

    Rank r in 1..V has probability proportional to r**-a; the shuffle spreads the hot rows over
    the table as real vocabularies do (rank order is not row order).
    """
    ranks = torch.arange(1, num_embeddings + 1, dtype=torch.float64)
    cdf = torch.cumsum(ranks.pow_(-a), 0)
    u = torch.rand(n, dtype=torch.float64, generator=generator) * cdf[-1]
    rank = torch.searchsorted(cdf, u).clamp_(max=num_embeddings - 1)
    del cdf, ranks
    perm = torch.randperm(num_embeddings, generator=generator)
    return perm[rank]


def make_indices(workload: Workload) -> Tensor:
    g = torch.Generator().manual_seed(workload.seed)
    v, n = workload.num_embeddings, workload.num_indices
    if workload.distribution == "zipf":
        return zipf_indices(v, n, ZIPF_A, g)
    if workload.distribution == "uniform":
        return torch.randint(0, v, (n,), generator=g)
    raise ValueError(f"unknown distribution {workload.distribution!r}")


def make_inputs(workload: Workload, device: torch.device | str = "cpu") -> Inputs:
    """Inputs of ``workload`` from its seed: normal weights, indices, normal output gradient."""
    device = torch.device(device)
    dtype = workload.torch_dtype
    v, d, n = workload.num_embeddings, workload.embedding_dim, workload.num_indices
    indices = make_indices(workload)
    unique_rows = int(torch.unique(indices).numel())
    gen = torch.Generator(device=device).manual_seed(workload.seed + 1)
    weight = torch.empty(v, d, dtype=dtype, device=device)
    chunk = max(1, (1 << 24) // max(d, 1))  # fill in slices: no float32 copy of a bf16 table
    for start in range(0, v, chunk):
        rows = weight[start : start + chunk]
        rows.copy_(torch.randn(rows.shape, generator=gen, device=device, dtype=torch.float32))
    grad_output = (
        torch.randn(n, d, generator=gen, device=device, dtype=torch.float32) * 0.01
    ).to(dtype)
    return Inputs(workload, device, weight, indices.to(device), grad_output, unique_rows)


# ----------------------------------------------------------------------------------------------
# Cases and providers
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    """A built provider: ``step()`` runs one timed step (no device sync)."""

    step: Callable[[], object]
    params: list[Tensor] = field(default_factory=list)  # weights (counted as resident)
    optimizer: object | None = None  # its state tensors are counted as resident
    extra_state: list[Tensor] = field(default_factory=list)  # e.g. FBGEMM's momentum
    rows_updated: int | None = None  # rows the optimizer reads and writes per step (GB/s)
    note: str = ""

    def state_tensors(self) -> list[Tensor]:
        tensors = list(self.extra_state)
        opt = self.optimizer
        state = getattr(opt, "state", None)
        if isinstance(state, dict):
            for per_param in state.values():
                if isinstance(per_param, dict):
                    tensors += [t for t in per_param.values() if isinstance(t, Tensor)]
        inners = [getattr(opt, n, None) for n in ("sparse_optimizer", "dense_optimizer")]
        for inner in inners:  # a wrapper holding optimizers (SparseAware)
            if inner is not None:
                tensors += Case(lambda: None, optimizer=inner).state_tensors()
        return tensors

    def resident_bytes(self) -> tuple[int, int]:
        """(weight bytes, optimizer state bytes) the case keeps between steps."""
        seen: set[int] = set()

        def total(tensors: Iterable[Tensor]) -> int:
            out = 0
            for t in tensors:
                if t.is_sparse or t.data_ptr() in seen:
                    continue
                seen.add(t.data_ptr())
                out += t.numel() * t.element_size()
            return out

        return total(self.params), total(self.state_tensors())

    def state_row_bytes(self, num_rows: int) -> float:
        """Optimizer state bytes per table row (row-shaped state tensors only)."""
        out = 0.0
        for t in self.state_tensors():
            if t.dim() >= 1 and t.shape[0] == num_rows:
                out += t.numel() * t.element_size() / num_rows
        return out


@dataclass(frozen=True)
class Provider:
    """One system running one group's work; ``build(inputs)`` returns a ``Case``."""

    name: str
    system: str  # "sparsemb", "torch", "torch.compile", "fbgemm": lines of the plot
    build: Callable[[Inputs], Case]
    ours: bool = False
    table_copies: float = 1.0  # (V, D)-sized tensors it holds at its peak: memory pre-check
    needs_compile: bool = False
    needs_fbgemm: bool = False


@dataclass(frozen=True)
class Group:
    name: str
    title: str
    kind: str  # "forward", "fwd_bwd", "step", "optim"
    providers: tuple[Provider, ...]

    def provider(self, name: str) -> Provider:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(f"group {self.name} has no provider {name!r}")

    @property
    def ours(self) -> Provider:
        return next(p for p in self.providers if p.ours)


def _clone_weight(inputs: Inputs) -> Tensor:
    return inputs.weight.clone()


def sparsemb_optim():
    """``sparsemb.optim``, imported when a sparsemb step is built (it may be newer than us)."""
    try:
        return importlib.import_module("sparsemb.optim")
    except ImportError as exc:
        raise Unavailable(f"sparsemb.optim is not importable ({exc})") from exc


def _sparsemb_table(inputs: Inputs, sparse: bool, max_norm: float | None = None):
    import sparsemb

    v, d = inputs.weight.shape
    return sparsemb.Embedding(
        v, d, sparse=sparse, max_norm=max_norm, _weight=_clone_weight(inputs)
    )


def _torch_table(inputs: Inputs, sparse: bool, max_norm: float | None = None):
    v, d = inputs.weight.shape
    return torch.nn.Embedding(v, d, sparse=sparse, max_norm=max_norm, _weight=_clone_weight(inputs))


def _compiled(module: torch.nn.Module):
    if sys.platform == "win32":
        raise Unavailable("torch.compile is not supported on Windows here")
    import torch._dynamo.config as dynamo_config

    # many tables go through one nn.Embedding.forward: let them recompile instead of silently
    # falling back to eager at the default limit of 8
    for name in ("recompile_limit", "cache_size_limit"):
        if getattr(dynamo_config, name, 64) < 64:
            setattr(dynamo_config, name, 64)
    return torch.compile(module)


def _forward_case(module, inputs: Inputs, call=None) -> Case:
    idx = inputs.indices
    run = module if call is None else call

    def step():
        with torch.no_grad():
            return run(idx)

    return Case(step, params=[module.weight])


def _fwd_bwd_case(module, inputs: Inputs, call=None) -> Case:
    idx, go = inputs.indices, inputs.grad_output
    run = module if call is None else call
    weight = module.weight

    def step():
        run(idx).backward(go)
        weight.grad = None

    return Case(step, params=[weight])


def _train_case(module, opt, inputs: Inputs, call=None, rows_updated=None) -> Case:
    idx, go = inputs.indices, inputs.grad_output
    run = module if call is None else call

    def step():
        run(idx).backward(go)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Case(step, params=[module.weight], optimizer=opt, rows_updated=rows_updated)


# torch optimizers on a dense or sparse nn.Embedding -------------------------------------------


def _torch_optimizer(kind: str, params, sparse: bool, fused: bool = False):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=LR["sgd"])
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=LR["adagrad"], eps=EPS["adagrad"])
    if kind == "adam":
        if sparse:
            return torch.optim.SparseAdam(params, lr=LR["adam"], betas=BETAS, eps=EPS["adam"])
        return torch.optim.Adam(
            params, lr=LR["adam"], betas=BETAS, eps=EPS["adam"], fused=fused or None
        )
    raise ValueError(kind)


def _sparsemb_optimizer(kind: str, params):
    optim = sparsemb_optim()
    names = {
        "sgd": "SparseSGD",
        "adagrad": "SparseAdagrad",
        "rowwise_adagrad": "RowWiseAdagrad",
        "adam": "SparseAdam",
    }
    ctor = getattr(optim, names[kind], None)
    if ctor is None:
        raise Unavailable(f"sparsemb.optim has no {names[kind]}")
    if kind == "sgd":
        return ctor(params, lr=LR["sgd"])
    if kind == "adagrad":
        return ctor(params, lr=LR["adagrad"], eps=EPS["adagrad"])
    if kind == "rowwise_adagrad":
        return ctor(params, lr=LR["rowwise_adagrad"], eps=EPS["rowwise_adagrad"])
    return ctor(params, lr=LR["adam"], betas=BETAS, eps=EPS["adam"])


def _sparsemb_fused_backward(kind: str, module):
    """``SparseAware(model, sparse=kind, fused_backward=True)``: the update runs in backward."""
    optim = sparsemb_optim()
    wrapper = getattr(optim, "SparseAware", None)
    if wrapper is None:
        raise Unavailable("sparsemb.optim has no SparseAware")
    options = {"eps": EPS[kind]} if kind in EPS else {}
    if kind == "adam":
        options["betas"] = BETAS
    return wrapper(
        module, sparse=kind, lr=LR[kind], sparse_options=options, fused_backward=True
    )


# FBGEMM table-batched embedding -------------------------------------------------------------


def fbgemm_status() -> str | None:
    """None when FBGEMM's TBE imports with this torch, else the reason it does not."""
    try:
        importlib.import_module("fbgemm_gpu.split_table_batched_embeddings_ops_training")
    except ImportError as exc:
        if "fbgemm_gpu" in str(exc) and "No module named" in str(exc):
            return "fbgemm_gpu is not installed (CPU: pip install 'sparsemb[fbgemm]')"
        return f"fbgemm_gpu failed to import with torch {torch.__version__}: {exc}"
    except Exception as exc:  # a wheel built for another torch fails in many ways
        return f"fbgemm_gpu failed to import with torch {torch.__version__}: {exc!r}"
    return None


def _fbgemm_tbe(inputs: Inputs, optimizer: str):
    reason = fbgemm_status()
    if reason:
        raise Unavailable(reason)
    from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
        EmbeddingLocation,
        PoolingMode,
    )
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    dtype = inputs.weight.dtype
    on_cpu = inputs.device.type == "cpu"
    if on_cpu and dtype == torch.bfloat16:
        raise Unavailable("FBGEMM's CPU TBE has no bfloat16 kernels (float32/float16 only)")
    precision = {
        torch.float32: SparseType.FP32,
        torch.float16: SparseType.FP16,
        torch.bfloat16: SparseType.BF16,
    }[dtype]
    v, d = inputs.weight.shape
    if d % 4:
        raise Unavailable(f"FBGEMM TBE needs embedding_dim % 4 == 0, got {d}")
    opt = {"sgd": EmbOptimType.EXACT_SGD, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD}
    location = EmbeddingLocation.HOST if on_cpu else EmbeddingLocation.DEVICE
    compute = ComputeDevice.CPU if on_cpu else ComputeDevice.CUDA
    try:
        tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(v, d, location, compute)],
            optimizer=opt[optimizer],
            pooling_mode=PoolingMode.NONE,
            weights_precision=precision,
            output_dtype=precision,
            learning_rate=LR[optimizer],
            eps=EPS.get(optimizer, 1e-8),
            device=inputs.device,
        )
    except Exception as exc:
        raise Unavailable(f"FBGEMM TBE could not be built here: {exc!r}") from exc
    with torch.no_grad():  # FBGEMM initializes its table to zeros: load the shared weights
        tbe.split_embedding_weights()[0].copy_(inputs.weight)
    return tbe


def _fbgemm_states(tbe) -> list[Tensor]:
    try:
        return [t for table in tbe.split_optimizer_states() for t in table]
    except Exception:
        return []


def _fbgemm_forward(inputs: Inputs) -> Case:
    tbe = _fbgemm_tbe(inputs, "sgd")
    idx, off = inputs.indices, inputs.offsets

    def step():
        with torch.no_grad():
            return tbe(idx, off)

    return Case(step, params=tbe.split_embedding_weights(), note="optimizer fused in backward")


def _fbgemm_train(inputs: Inputs, optimizer: str) -> Case:
    tbe = _fbgemm_tbe(inputs, optimizer)
    idx, off, go = inputs.indices, inputs.offsets, inputs.grad_output

    def step():  # the optimizer update is fused into FBGEMM's backward
        tbe(idx, off).backward(go)

    return Case(
        step,
        params=tbe.split_embedding_weights(),
        extra_state=_fbgemm_states(tbe),
        rows_updated=inputs.unique_rows,
    )


# Group definitions --------------------------------------------------------------------------


def _forward_group() -> Group:
    return Group(
        "forward",
        "forward gather (no grad)",
        "forward",
        (
            Provider(
                "sparsemb",
                "sparsemb",
                lambda i: _forward_case(_sparsemb_table(i, False), i),
                ours=True,
            ),
            Provider("torch", "torch", lambda i: _forward_case(_torch_table(i, False), i)),
            Provider(
                "torch.compile",
                "torch.compile",
                lambda i: _compiled_forward(i, None),
                needs_compile=True,
            ),
            Provider("fbgemm TBE", "fbgemm", _fbgemm_forward, needs_fbgemm=True),
        ),
    )


def _compiled_forward(inputs: Inputs, max_norm):
    module = _torch_table(inputs, False, max_norm)
    return _forward_case(module, inputs, call=_compiled(module))


def _forward_max_norm_group() -> Group:
    return Group(
        "forward_max_norm",
        f"forward gather with max_norm={MAX_NORM} (no grad)",
        "forward",
        (
            Provider(
                "sparsemb max_norm",
                "sparsemb",
                lambda i: _forward_case(_sparsemb_table(i, False, MAX_NORM), i),
                ours=True,
            ),
            Provider(
                "torch max_norm",
                "torch",
                lambda i: _forward_case(_torch_table(i, False, MAX_NORM), i),
            ),
            Provider(
                "torch.compile max_norm",
                "torch.compile",
                lambda i: _compiled_forward(i, MAX_NORM),
                needs_compile=True,
            ),
        ),
    )


def _fwd_bwd_groups() -> list[Group]:
    def compiled(i: Inputs) -> Case:
        module = _torch_table(i, False)
        return _fwd_bwd_case(module, i, call=_compiled(module))

    return [
        Group(
            "fwd_bwd_sparse",
            "forward + backward, sparse gradient",
            "fwd_bwd",
            (
                Provider(
                    "sparsemb sparse",
                    "sparsemb",
                    lambda i: _fwd_bwd_case(_sparsemb_table(i, True), i),
                    ours=True,
                ),
                Provider(
                    "torch sparse",
                    "torch",
                    lambda i: _fwd_bwd_case(_torch_table(i, True), i),
                ),
            ),
        ),
        Group(
            "fwd_bwd_dense",
            "forward + backward, dense gradient",
            "fwd_bwd",
            (
                Provider(
                    "sparsemb dense",
                    "sparsemb",
                    lambda i: _fwd_bwd_case(_sparsemb_table(i, False), i),
                    ours=True,
                    table_copies=2,
                ),
                Provider(
                    "torch dense",
                    "torch",
                    lambda i: _fwd_bwd_case(_torch_table(i, False), i),
                    table_copies=2,
                ),
                Provider(
                    "torch.compile dense",
                    "torch.compile",
                    compiled,
                    needs_compile=True,
                    table_copies=2,
                ),
            ),
        ),
    ]


_OPT_LABEL = {
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "rowwise_adagrad": "RowWiseAdagrad",
    "adam": "Adam",
}
_SPARSEMB_OPT = {
    "sgd": "SparseSGD",
    "adagrad": "SparseAdagrad",
    "rowwise_adagrad": "RowWiseAdagrad",
    "adam": "SparseAdam",
}
# (V, D)-sized state tensors of each rule (row-wise Adagrad keeps one float per row)
_STATE_COPIES = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 0, "adam": 2}


def _step_group(kind: str) -> Group:
    copies = _STATE_COPIES[kind]

    def ours(i: Inputs) -> Case:
        module = _sparsemb_table(i, True)
        return _train_case(
            module, _sparsemb_optimizer(kind, module.parameters()), i, rows_updated=i.unique_rows
        )

    def ours_fused(i: Inputs) -> Case:
        module = _sparsemb_table(i, True)
        return _train_case(
            module, _sparsemb_fused_backward(kind, module), i, rows_updated=i.unique_rows
        )

    def torch_dense(fused: bool = False):
        def build(i: Inputs) -> Case:
            module = _torch_table(i, False)
            opt = _torch_optimizer(kind, module.parameters(), sparse=False, fused=fused)
            return _train_case(module, opt, i, rows_updated=i.workload.num_embeddings)

        return build

    def torch_sparse(i: Inputs) -> Case:
        module = _torch_table(i, True)
        opt = _torch_optimizer(kind, module.parameters(), sparse=True)
        return _train_case(module, opt, i, rows_updated=i.unique_rows)

    def compiled(i: Inputs) -> Case:
        module = _torch_table(i, False)
        opt = _torch_optimizer(kind, module.parameters(), sparse=False)
        return _train_case(
            module, opt, i, call=_compiled(module), rows_updated=i.workload.num_embeddings
        )

    label = _OPT_LABEL[kind]
    providers = [
        Provider(f"sparsemb + {_SPARSEMB_OPT[kind]}", "sparsemb", ours, ours=True,
                 table_copies=1 + copies),
        Provider(f"sparsemb fused-backward {label}", "sparsemb fused", ours_fused,
                 table_copies=1 + copies),
    ]
    if kind == "rowwise_adagrad":  # no torch rule computes it; FBGEMM's is the peer
        providers.append(
            Provider(
                "fbgemm TBE EXACT_ROWWISE_ADAGRAD",
                "fbgemm",
                lambda i: _fbgemm_train(i, "rowwise_adagrad"),
                needs_fbgemm=True,
            )
        )
        return Group(f"step_{kind}", f"training step: {label}", "step", tuple(providers))
    # dense single-tensor Adam keeps ~2 (V, D) temporaries besides weight, grad and state
    dense_copies = 2 + copies + (2 if kind == "adam" else 0)
    providers.append(
        Provider(f"torch dense + {label}", "torch", torch_dense(), table_copies=dense_copies)
    )
    if kind == "adam":
        providers.append(
            Provider(
                "torch dense + Adam(fused=True)",
                "torch fused",
                torch_dense(fused=True),
                table_copies=2 + copies,
            )
        )
    sparse_label = "SparseAdam" if kind == "adam" else label
    providers.append(
        Provider(f"torch sparse + {sparse_label}", "torch sparse", torch_sparse,
                 table_copies=1 + copies)
    )
    providers.append(
        Provider(
            f"torch.compile dense + {label}",
            "torch.compile",
            compiled,
            needs_compile=True,
            table_copies=dense_copies,
        )
    )
    if kind == "sgd":
        providers.append(
            Provider(
                "fbgemm TBE EXACT_SGD",
                "fbgemm",
                lambda i: _fbgemm_train(i, "sgd"),
                needs_fbgemm=True,
            )
        )
    return Group(f"step_{kind}", f"training step: {label}", "step", tuple(providers))


def _optim_group() -> Group:
    """The Adam update alone, fed one coalesced sparse gradient: its GB/s is the optimizer's."""

    def build(make_opt):
        def inner(i: Inputs) -> Case:
            weight = torch.nn.Parameter(_clone_weight(i))
            opt = make_opt([weight])
            grad = i.sparse_grad

            def step():
                weight.grad = grad
                opt.step()

            return Case(step, params=[weight], optimizer=opt, rows_updated=i.unique_rows)

        return inner

    return Group(
        "optim_adam",
        "optimizer step alone: Adam on one coalesced sparse gradient",
        "optim",
        (
            Provider(
                "sparsemb SparseAdam.step",
                "sparsemb",
                build(lambda p: _sparsemb_optimizer("adam", p)),
                ours=True,
                table_copies=3,
            ),
            Provider(
                "torch SparseAdam.step",
                "torch sparse",
                build(lambda p: _torch_optimizer("adam", p, sparse=True)),
                table_copies=3,
            ),
        ),
    )


def all_groups() -> dict[str, Group]:
    groups = [_forward_group(), _forward_max_norm_group(), *_fwd_bwd_groups()]
    groups += [_step_group(k) for k in ("sgd", "adagrad", "rowwise_adagrad", "adam")]
    groups.append(_optim_group())
    return {g.name: g for g in groups}


GROUPS = all_groups()
QUICK_GROUPS = (
    "forward",
    "forward_max_norm",
    "fwd_bwd_sparse",
    "fwd_bwd_dense",
    "step_sgd",
    "step_rowwise_adagrad",
    "step_adam",
    "optim_adam",
)


# ----------------------------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------------------------

FULL_V = (10**5, 10**6, 10**7)
FULL_D = (64, 128, 256)
FULL_DIST = ("zipf", "uniform")
FULL_DTYPES = ("float32", "bfloat16")


def grid(mode: str, dtypes: Iterable[str] | None = None) -> list[Workload]:
    """Workloads of a sweep: "smoke" (tiny), "quick" (the targets' sizes) or "full"."""
    if mode == "smoke":
        dts = tuple(dtypes or ("float32",))
        return [Workload(v, 16, 256, "zipf", dt) for dt in dts for v in (1000,)]
    if mode == "quick":
        dts = tuple(dtypes or ("float32",))
        # the targets' size first: a run cut short by a time limit still has it
        return [Workload(v, 128, NUM_INDICES, "zipf", dt) for dt in dts for v in (10**6, 10**5)]
    if mode == "full":
        dts = tuple(dtypes or FULL_DTYPES)
        return [
            Workload(v, d, NUM_INDICES, dist, dt)
            for dt in dts
            for dist in FULL_DIST
            for d in FULL_D
            for v in FULL_V
        ]
    raise ValueError(f"unknown grid {mode!r}")


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages)


def memory_check(provider: Provider, workload: Workload, device: torch.device) -> str | None:
    """A reason to skip when the provider's tables (plus the shared initial copy) won't fit."""
    need = (provider.table_copies + 1) * workload.table_bytes * 1.1
    have = available_memory(device)
    if need > have:
        return (
            f"needs ~{need / 2**30:.1f} GiB ({provider.table_copies:g}+1 tables of "
            f"{workload.table_bytes / 2**30:.1f} GiB), {have / 2**30:.1f} GiB available"
        )
    return None


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """The function the timers call: one step plus a device synchronize on GPU."""
    if device.type == "cuda":

        def run() -> None:
            step()
            torch.cuda.synchronize(device)

        return run

    def run_cpu() -> None:
        step()

    return run_cpu


def time_steps(
    step: Callable[[], object],
    device: torch.device,
    warmup: int = 2,
    repeat: int = 5,
    budget_s: float = 3.0,
    min_rounds: int = 3,
    min_round_s: float = 0.005,
    cpu_times: list[float] | None = None,
) -> list[float]:
    """Seconds per step of each timed round: ``repeat`` rounds, fewer (not under ``min_rounds``)
    when the rounds pass ``budget_s``; warmup rounds stop early (after two) when one takes over
    ``budget_s``.

    On CPU a round is one step. On CUDA a round is k back-to-back steps and one synchronize, k
    chosen so a round lasts about ``min_round_s``: a 30 us gather is not timed against a 10 us
    synchronize and the timer's own overhead. ``cpu_times``, when given, receives each round's
    process CPU time per step (all threads): the work done, whatever else runs on the machine.
    """
    run = timed(step, device)
    for i in range(warmup):
        t0 = time.perf_counter()
        run()
        # the first round may compile or allocate lazily; stop after a slow steady round
        if i >= 1 and time.perf_counter() - t0 > budget_s:
            break
    inner = 1
    if device.type == "cuda":
        t0 = time.perf_counter()
        run()
        probe = time.perf_counter() - t0
        inner = max(1, min(200, int(min_round_s / max(probe, 1e-7))))

    def round_() -> None:
        for _ in range(inner - 1):
            step()
        run()

    times: list[float] = []
    spent = 0.0
    while len(times) < repeat:
        c0, t0 = time.process_time(), time.perf_counter()
        round_()
        dt = time.perf_counter() - t0
        times.append(dt / inner)
        if cpu_times is not None:
            cpu_times.append((time.process_time() - c0) / inner)
        spent += dt
        if len(times) >= min_rounds and spent > budget_s:
            break
    return times


def summarize(times: list[float]) -> dict:
    ordered = sorted(times)

    def quantile(q: float) -> float:
        if len(ordered) == 1:
            return ordered[0]
        pos = q * (len(ordered) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    median = statistics.median(ordered)
    return {
        "median_s": median,
        "p20_s": quantile(0.2),
        "p80_s": quantile(0.8),
        "min_s": ordered[0],
        "rounds": len(ordered),
        "steps_per_s": 1.0 / median if median > 0 else float("inf"),
    }


def _rss_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def _malloc_trim() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "VmHWM" in _rss_status()
    except OSError:
        return False


_UNFREEZE_REGISTERED = False


def _unfreeze_at_exit() -> None:
    """Give frozen objects back to the collector at exit (bindings report them as leaks)."""
    global _UNFREEZE_REGISTERED
    if not _UNFREEZE_REGISTERED:
        atexit.register(gc.unfreeze)
        _UNFREEZE_REGISTERED = True


class PeakMemory:
    """Peak memory of a block over the memory in use when it starts.

    CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` at entry (tensors only).
    CPU: the process' peak resident set (VmHWM, reset at entry by writing 5 to
    ``/proc/self/clear_refs``) minus the resident set at entry, after a garbage collection and a
    ``malloc_trim`` so freed memory of earlier blocks is not reused unseen. ``method`` names the
    method; ``peak_bytes`` is None where neither works (e.g. no /proc).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self.method = "none"

    def __enter__(self) -> PeakMemory:
        gc.collect()  # free the tables of earlier blocks held in reference cycles, then
        gc.freeze()  # move the survivors out of the collector's sight: later collects stay fast
        _unfreeze_at_exit()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated over baseline"
        else:
            _malloc_trim()
            if can_reset_peak_rss():
                self._base = _rss_status()["VmRSS"]
                self.method = "peak RSS (VmHWM reset) over baseline RSS"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.method != "none":
            self.peak_bytes = max(0, _rss_status()["VmHWM"] - self._base)


def gather_bytes(workload: Workload, unique_rows: int, max_norm: bool) -> int:
    """Bytes a gather reads and writes: N rows read, N rows written, N indices (+ norm reads)."""
    row = workload.embedding_dim * workload.element_size
    n = workload.num_indices
    out = 2 * n * row + 8 * n
    if max_norm:
        out += unique_rows * row
    return out


def optimizer_bytes(workload: Workload, rows: int, state_row_bytes: float) -> int:
    """Bytes an update of ``rows`` rows reads and writes: weight (r+w), gradient (r), state (r+w),
    and the row ids."""
    row = workload.embedding_dim * workload.element_size
    return int(rows * (3 * row + 2 * state_row_bytes + 8))


def measure_copy_bandwidth(device: torch.device, nbytes: int | None = None, repeat: int = 10):
    """GB/s of ``dst.copy_(src)`` on a large buffer (bytes read + written), median of ``repeat``."""
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    run = timed(lambda: dst.copy_(src), device)
    run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"bytes": 2 * nbytes, "median_s": median, "gbps": 2 * nbytes / median / 1e9}


def run_provider(
    group: Group,
    provider: Provider,
    inputs: Inputs,
    warmup: int = 2,
    repeat: int = 5,
    budget_s: float = 3.0,
    compile_ok: bool = True,
) -> dict:
    """Build and time one provider on ``inputs``; a dict of the raw numbers (or a skip reason)."""
    w = inputs.workload
    row = {
        "group": group.name,
        "provider": provider.name,
        "system": provider.system,
        "ours": provider.ours,
        "workload": w.as_dict(),
        "workload_label": w.label(),
        "unique_rows": inputs.unique_rows,
        "skipped": None,
    }
    if provider.needs_compile and not compile_ok:
        row["skipped"] = "torch.compile peers are off in this run (--compile to include them)"
        return row
    reason = memory_check(provider, w, inputs.device)
    if reason:
        row["skipped"] = reason
        return row
    mem = PeakMemory(inputs.device)
    try:
        with mem:
            t_build = time.perf_counter()
            case = provider.build(inputs)
            build_s = time.perf_counter() - t_build
            cpu_times: list[float] = []
            times = time_steps(
                case.step, inputs.device, warmup, repeat, budget_s, cpu_times=cpu_times
            )
            weights_b, state_b = case.resident_bytes()
            state_row = case.state_row_bytes(w.num_embeddings)
    except Unavailable as exc:
        row["skipped"] = str(exc)
        return row
    finally:
        case = None  # noqa: F841  (free the tables before the next provider)
        gc.collect()
    row.update(summarize(times))
    row["times_s"] = times
    row["cpu_median_s"] = statistics.median(cpu_times)
    row["build_s"] = build_s
    row["memory_method"] = mem.method
    row["peak_bytes"] = mem.peak_bytes
    row["weights_bytes"] = weights_b
    row["state_bytes"] = state_b
    row["scratch_bytes"] = (
        None if mem.peak_bytes is None else mem.peak_bytes - weights_b - state_b
    )
    if group.kind == "forward":
        nbytes = gather_bytes(w, inputs.unique_rows, "max_norm" in group.name)
    elif group.kind == "optim":
        nbytes = optimizer_bytes(w, inputs.unique_rows, state_row)
    else:
        nbytes = None
    row["bytes_per_step"] = nbytes
    row["gbps"] = None if nbytes is None else nbytes / row["median_s"] / 1e9
    return row


def add_ratios(rows: list[dict]) -> None:
    """Set ``ratio`` (this provider's median / ours, >1: sparsemb is faster) on every timed row
    and ``peer_ratios`` ({peer: ratio}) on ours, within each (group, workload)."""
    by_key: dict[tuple, list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["group"], r["workload_label"]), []).append(r)
    for members in by_key.values():
        ours = next((r for r in members if r["ours"] and r.get("median_s")), None)
        for r in members:
            r["ratio"] = None
        if ours is None:
            continue
        ours["peer_ratios"] = {}
        for r in members:
            if r.get("median_s"):
                r["ratio"] = r["median_s"] / ours["median_s"]
                if r is not ours:
                    ours["peer_ratios"][r["provider"]] = r["ratio"]

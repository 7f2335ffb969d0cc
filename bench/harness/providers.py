"""Providers: each system that runs a group's work, built on a workload's inputs.

``GROUPS`` holds one ``Group`` per kind of work (forward, forward + backward, full training
step, optimizer step alone), each with sparsemb ("ours") and every peer that computes the same
thing: ``torch.nn.Embedding`` (dense and sparse gradient, torch optimizers), ``torch.compile`` of
that model, and FBGEMM's table-batched embedding (pooling NONE) where it imports.
``Provider.build`` returns a ``Case`` whose ``step()`` is one timed step; it raises
``Unavailable`` with a reason where the provider cannot run here (missing package, dtype).
The names other modules refer to (the targets, the smoke tests) are constants here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

import sparsemb
import sparsemb.optim

from .workloads import Inputs

MAX_NORM = 1.0
LR = {"sgd": 0.01, "adagrad": 0.01, "rowwise_adagrad": 0.01, "adam": 1e-3}
EPS = {"adagrad": 1e-10, "rowwise_adagrad": 1e-8, "adam": 1e-8}
BETAS = (0.9, 0.999)

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


# The names other modules refer to (targets, report, smoke tests): one spelling, here.
FORWARD = "forward"
FORWARD_MAX_NORM = "forward_max_norm"
SPARSEMB_FORWARD = "sparsemb"
SPARSEMB_MAX_NORM = "sparsemb max_norm"
TORCH_FORWARD = "torch"
TORCH_MAX_NORM = "torch max_norm"


def step_group_name(kind: str) -> str:
    return f"step_{kind}"


def ours_step_name(kind: str) -> str:
    return f"sparsemb + {_SPARSEMB_OPT[kind]}"


def ours_fused_step_name(kind: str) -> str:
    return f"sparsemb fused-backward {_OPT_LABEL[kind]}"


def torch_dense_step_name(kind: str, fused: bool = False) -> str:
    return f"torch dense + {_OPT_LABEL[kind]}" + ("(fused=True)" if fused else "")


def torch_sparse_step_name(kind: str) -> str:
    return "torch sparse + " + ("SparseAdam" if kind == "adam" else _OPT_LABEL[kind])


def fbgemm_step_name(kind: str) -> str:
    return f"fbgemm TBE EXACT_{kind.upper()}"


STEP_ADAM = step_group_name("adam")
STEP_ADAGRAD = step_group_name("adagrad")
STEP_SGD = step_group_name("sgd")
SPARSEMB_ADAGRAD = ours_step_name("adagrad")
SPARSEMB_SGD = ours_step_name("sgd")
TORCH_SPARSE_ADAGRAD = torch_sparse_step_name("adagrad")
TORCH_SPARSE_SGD = torch_sparse_step_name("sgd")
STEP_ROWWISE_ADAGRAD = step_group_name("rowwise_adagrad")
SPARSEMB_ADAM = ours_step_name("adam")
TORCH_DENSE_ADAM = torch_dense_step_name("adam")
TORCH_DENSE_ADAM_FUSED = torch_dense_step_name("adam", fused=True)
TORCH_SPARSE_ADAM = torch_sparse_step_name("adam")
SPARSEMB_ROWWISE_ADAGRAD = ours_step_name("rowwise_adagrad")
FBGEMM_ROWWISE_ADAGRAD = fbgemm_step_name("rowwise_adagrad")


class Unavailable(Exception):
    """A provider cannot run on this machine or for this workload; the message says why."""


# ----------------------------------------------------------------------------------------------
# Cases and providers
# ----------------------------------------------------------------------------------------------


PHASES = ("forward", "backward", "optimizer")  # a training step's phases, in order


@dataclass
class Case:
    """A built provider: ``step()`` runs one timed step (no device sync).

    A training step's case also has ``phases``: {phase name: callable}, in ``PHASES`` order, that
    run one step between them (the optimizer phase includes ``zero_grad``); the timer times each.
    A phase the provider does not run separately (FBGEMM's and the fused-backward optimizers,
    which update inside backward) is missing or named in ``in_backward``.
    """

    step: Callable[[], object]
    params: list[Tensor] = field(default_factory=list)  # weights (counted as resident)
    optimizer: object | None = None  # its state tensors are counted as resident
    extra_state: list[Tensor] = field(default_factory=list)  # e.g. FBGEMM's momentum
    rows_updated: int | None = None  # rows the optimizer reads and writes per step (GB/s)
    note: str = ""
    phases: dict[str, Callable[[], object]] | None = None
    in_backward: bool = False  # the optimizer update runs inside backward

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


def train_phases(forward, backward, optimizer=None) -> tuple[Callable[[], None], dict]:
    """One training step as phases: ``forward()`` returns the output, ``backward(out)`` runs
    backward on it, ``optimizer()`` (if any) steps and zeroes the gradients. Returns the step
    (the phases in order) and the phases, which pass the output through a cell."""
    cell: list = [None]

    def fwd():
        cell[0] = forward()

    def bwd():
        out, cell[0] = cell[0], None
        backward(out)

    phases = {"forward": fwd, "backward": bwd}
    if optimizer is not None:
        phases["optimizer"] = optimizer
    order = tuple(phases.values())

    def step():
        for phase in order:
            phase()

    return step, phases


def _train_case(module, opt, inputs: Inputs, call=None, rows_updated=None,
                in_backward=False) -> Case:
    idx, go = inputs.indices, inputs.grad_output
    run = module if call is None else call

    def optimizer():
        opt.step()
        opt.zero_grad(set_to_none=True)

    step, phases = train_phases(lambda: run(idx), lambda out: out.backward(go), optimizer)
    return Case(step, params=[module.weight], optimizer=opt, rows_updated=rows_updated,
                phases=phases, in_backward=in_backward)


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
    ctor = getattr(sparsemb.optim, _SPARSEMB_OPT[kind])
    if kind == "sgd":
        return ctor(params, lr=LR["sgd"])
    if kind == "adagrad":
        return ctor(params, lr=LR["adagrad"], eps=EPS["adagrad"])
    if kind == "rowwise_adagrad":
        return ctor(params, lr=LR["rowwise_adagrad"], eps=EPS["rowwise_adagrad"])
    return ctor(params, lr=LR["adam"], betas=BETAS, eps=EPS["adam"])


def _sparsemb_fused_backward(kind: str, module):
    """``SparseAware(model, sparse=kind, fused_backward=True)``: the update runs in backward."""
    options = {"eps": EPS[kind]} if kind in EPS else {}
    if kind == "adam":
        options["betas"] = BETAS
    return sparsemb.optim.SparseAware(
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


def _fbgemm_tbe(inputs: Inputs, optimizer: str, pooling: str = "NONE"):
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
            pooling_mode=getattr(PoolingMode, pooling),
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

    # the optimizer update is fused into FBGEMM's backward: no optimizer phase
    step, phases = train_phases(lambda: tbe(idx, off), lambda out: out.backward(go))
    return Case(
        step,
        params=tbe.split_embedding_weights(),
        extra_state=_fbgemm_states(tbe),
        rows_updated=inputs.unique_rows,
        phases=phases,
        in_backward=True,
    )


# Group definitions --------------------------------------------------------------------------


def _forward_group() -> Group:
    return Group(
        FORWARD,
        "forward gather (no grad)",
        "forward",
        (
            Provider(
                SPARSEMB_FORWARD,
                "sparsemb",
                lambda i: _forward_case(_sparsemb_table(i, False), i),
                ours=True,
            ),
            Provider(TORCH_FORWARD, "torch", lambda i: _forward_case(_torch_table(i, False), i)),
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
        FORWARD_MAX_NORM,
        f"forward gather with max_norm={MAX_NORM} (no grad)",
        "forward",
        (
            Provider(
                SPARSEMB_MAX_NORM,
                "sparsemb",
                lambda i: _forward_case(_sparsemb_table(i, False, MAX_NORM), i),
                ours=True,
            ),
            Provider(
                TORCH_MAX_NORM,
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
            module, _sparsemb_fused_backward(kind, module), i, rows_updated=i.unique_rows,
            in_backward=True,
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
        Provider(ours_step_name(kind), "sparsemb", ours, ours=True,
                 table_copies=1 + copies),
        Provider(ours_fused_step_name(kind), "sparsemb fused", ours_fused,
                 table_copies=1 + copies),
    ]
    if kind == "rowwise_adagrad":  # no torch rule computes it; FBGEMM's is the peer
        providers.append(
            Provider(
                fbgemm_step_name(kind),
                "fbgemm",
                lambda i: _fbgemm_train(i, "rowwise_adagrad"),
                needs_fbgemm=True,
            )
        )
        return Group(step_group_name(kind), f"training step: {label}", "step", tuple(providers))
    # dense single-tensor Adam keeps ~2 (V, D) temporaries besides weight, grad and state
    dense_copies = 2 + copies + (2 if kind == "adam" else 0)
    providers.append(
        Provider(torch_dense_step_name(kind), "torch", torch_dense(), table_copies=dense_copies)
    )
    if kind == "adam":
        providers.append(
            Provider(
                torch_dense_step_name(kind, fused=True),
                "torch fused",
                torch_dense(fused=True),
                table_copies=2 + copies,
            )
        )
    providers.append(
        Provider(torch_sparse_step_name(kind), "torch sparse", torch_sparse,
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
                fbgemm_step_name(kind),
                "fbgemm",
                lambda i: _fbgemm_train(i, "sgd"),
                needs_fbgemm=True,
            )
        )
    return Group(step_group_name(kind), f"training step: {label}", "step", tuple(providers))


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
    from .bag_providers import bag_groups  # EmbeddingBag groups (they build on this module)

    groups += bag_groups()
    return {g.name: g for g in groups}


GROUPS = all_groups()
QUICK_GROUPS = (
    "forward",
    "forward_max_norm",
    "fwd_bwd_sparse",
    "fwd_bwd_dense",
    "step_sgd",
    "step_adagrad",
    "step_rowwise_adagrad",
    "step_adam",
    "optim_adam",
)

QUICK_GROUPS += ("bag_forward_sum", "bag_step_adam")  # EmbeddingBag: bench/harness/bag_providers.py

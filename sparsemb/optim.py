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

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from itertools import chain
from numbers import Real
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from sparsemb import _sparse_rules
from sparsemb._backend import kernel_module, uses_triton
from sparsemb._sparse_rules import state_dtype
from sparsemb.functional import FUSED_UPDATE_ATTR

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


# ---------------------------------------------------------------------------------------------
# option checks
# ---------------------------------------------------------------------------------------------


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _non_negative(name: str, value: Any) -> None:
    if _real(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _betas(value: Any) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {value!r}")
    for i, beta in enumerate(value):
        if not 0.0 <= _real(f"betas[{i}]", beta) < 1.0:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {beta}")


def _common_options(options: dict[str, Any]) -> None:
    _non_negative("lr", options["lr"])
    if not isinstance(options["stochastic_rounding"], bool):
        raise ValueError(
            f"stochastic_rounding must be True or False, got {options['stochastic_rounding']!r}"
        )
    seed = options["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")


def _mix(*values: int) -> int:
    """A 31-bit seed from ints (splitmix64 steps): one stochastic-rounding stream per step."""
    state = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for value in values:
        state = (state ^ (value & mask)) & mask
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        state = z ^ (z >> 31)
    return state & 0x7FFFFFFF


def _check_rows(rows: Tensor, num_rows: int, what: Callable[[], str]) -> None:
    """IndexError naming the first bad value when a row lies outside ``[0, num_rows)``.

    One reduction and one host read: a row outside the table must not reach the kernels, which
    would write outside the weight (the CPU rules would raise half way through a table)."""
    if rows.numel() == 0:
        return
    low, high = (int(x) for x in torch.aminmax(rows))
    if low < 0 or high >= num_rows:
        bad = low if low < 0 else high
        raise IndexError(
            f"row {bad} of {what()} is outside the table's rows [0, {num_rows}); nothing was "
            "updated"
        )


# option names of the built-in rules: a checkpoint group carrying one this rule lacks (or lacking
# one it has) was saved by another rule
_RULE_OPTIONS = frozenset(
    {"lr", "weight_decay", "stochastic_rounding", "seed", "lr_decay",
     "initial_accumulator_value", "eps", "betas"}
)


# ---------------------------------------------------------------------------------------------
# the rules
# ---------------------------------------------------------------------------------------------


class SparseOptimizer(torch.optim.Optimizer):
    """Base of the sparse rules: validation, gradient rows, lazy state, fused backward.

    A subclass names its per-parameter state tensors (``_state_names``), checks its options
    (``_check_options``) and applies its update to one table (``_update``).
    """

    _state_names: tuple[str, ...] = ()
    _rowwise_state = False  # the state is one value per row (V,), not (V, D)

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._check_options(defaults)
        if defaults["stochastic_rounding"] and defaults["seed"] is None:
            defaults["seed"] = int(torch.randint(0, 2**31 - 1, ()).item())
        self._param_names: dict[int, str] = {}
        super().__init__(params, defaults)

    # ----- options and parameters

    def _check_options(self, options: dict[str, Any]) -> None:
        _common_options(options)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its options and that each parameter is a 2-D float table."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if isinstance(params, Tensor):
            params = [params]
        elif params is not None and not isinstance(params, set):
            params = list(params)
        options = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_options(options)
        for i, item in enumerate(params if isinstance(params, list) else []):
            name, p = item if isinstance(item, tuple) else (None, item)
            if not isinstance(p, Tensor):
                continue  # torch's add_param_group names the type
            label = name or f"parameter {i} of the new group"
            if p.layout != torch.strided or p.dim() != 2 or not p.is_floating_point():
                raise ValueError(
                    f"{type(self).__name__} updates 2-D floating-point embedding tables; "
                    f"{label} is {p.layout} {p.dtype} of shape {tuple(p.shape)}"
                )
        if (
            options["stochastic_rounding"]
            and options["seed"] is None
            and param_group.get("seed") is None
        ):
            param_group["seed"] = int(torch.randint(0, 2**31 - 1, ()).item())
        super().add_param_group({**param_group, "params": params})

    def _describe(self, group: dict[str, Any], index: int, p: Tensor) -> str:
        names = group.get("param_names")
        name = names[index] if names else self._param_names.get(id(p))
        if name is None:
            flat = [q for g in self.param_groups for q in g["params"]]
            position = next(i for i, q in enumerate(flat) if q is p)
            name = f"parameter {position}"
        return f"{name!r} (shape {tuple(p.shape)}, {p.dtype}, {p.device})"

    def _position(self, p: Tensor) -> int:
        return next(
            i for i, q in enumerate(q for g in self.param_groups for q in g["params"]) if q is p
        )

    def _group_of(self, p: Tensor) -> tuple[dict[str, Any], int]:
        for group in self.param_groups:
            for i, q in enumerate(group["params"]):
                if q is p:
                    return group, i
        raise ValueError("the parameter is not managed by this optimizer")

    # ----- state

    def _state_shape(self, p: Tensor) -> tuple[int, ...]:
        return (p.shape[0],) if self._rowwise_state else tuple(p.shape)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = 0
        for name in self._state_names:
            state[name] = torch.zeros(
                self._state_shape(p), dtype=state_dtype(p.dtype), device=p.device
            )

    def _check_state(self, group: dict[str, Any], index: int, p: Tensor) -> None:
        state = self.state.get(p)
        if not state:
            return
        shape, dtype = self._state_shape(p), state_dtype(p.dtype)
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(
                f"optimizer state 'step' of {self._describe(group, index, p)} is {step!r}; "
                "expected a count of updates (an int >= 0)"
            )
        for name in self._state_names:
            value = state.get(name)
            if not isinstance(value, Tensor):
                raise ValueError(f"optimizer state {name!r} of {self._describe(group, index, p)} "
                                 "is missing")
            if value.device != p.device:
                raise ValueError(
                    f"optimizer state {name!r} of {self._describe(group, index, p)} is on "
                    f"{value.device}; move the optimizer state to the parameter's device "
                    "(save its state_dict and load it into an optimizer of the moved model)"
                )
            if tuple(value.shape) != shape or value.dtype != dtype:
                raise ValueError(
                    f"optimizer state {name!r} of {self._describe(group, index, p)} is "
                    f"{value.dtype} of shape {tuple(value.shape)}, expected {dtype} of shape "
                    f"{shape} (was the table resized or cast after the optimizer was built?)"
                )

    # ----- gradients

    def _rows_of_grad(self, group: dict[str, Any], index: int, p: Tensor) -> tuple[Tensor, Tensor]:
        """(unique rows, values) of ``p.grad``, or ValueError naming the parameter."""
        grad = p.grad
        if grad.layout != torch.sparse_coo:
            raise ValueError(
                f"{type(self).__name__} got a dense gradient for {self._describe(group, index, p)}"
                f"; it updates tables with sparse gradients only: build the table with "
                "sparse=True (sparsemb.Embedding(..., sparse=True)) or give this parameter to a "
                "dense optimizer (sparsemb.optim.SparseAware routes each parameter for you)"
            )
        if tuple(grad.shape) != tuple(p.shape) or grad.sparse_dim() != 1:
            raise ValueError(
                f"the sparse gradient of {self._describe(group, index, p)} has shape "
                f"{tuple(grad.shape)} with {grad.sparse_dim()} sparse dims; expected the "
                "table's shape with 1 sparse dim (rows), as embedding backward produces"
            )
        if grad.device != p.device:
            raise ValueError(
                f"the gradient of {self._describe(group, index, p)} is on {grad.device}"
            )
        if not grad.is_floating_point():
            raise ValueError(f"the gradient of {self._describe(group, index, p)} is {grad.dtype}")
        _check_rows(
            grad._indices()[0], p.shape[0],
            lambda: f"the sparse gradient of {self._describe(group, index, p)}",
        )
        if not grad.is_coalesced():
            grad = grad.coalesce()
        return grad._indices()[0], grad._values()

    def _backend(self, p: Tensor) -> ModuleType:
        return kernel_module("optim") if uses_triton(p) else _sparse_rules

    def _sr_seed(self, group: dict[str, Any], p: Tensor, step: int) -> int | None:
        if not group["stochastic_rounding"] or p.dtype not in _sparse_rules.HALF_DTYPES:
            return None
        return _mix(group["seed"], self._position(p), step)

    # ----- steps

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update the rows of each table present in its sparse gradient.

        Every gradient, option and state tensor is checked first; an error leaves all weights
        and state untouched.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._write(self._prepare())
        return loss

    def _prepare(self) -> list[tuple[Any, ...]]:
        """Check every group, gradient and state; the work of a step, nothing written yet."""
        work = []
        for group in self.param_groups:
            self._check_options(group)
            for index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                rows, values = self._rows_of_grad(group, index, p)
                self._check_state(group, index, p)
                work.append((group, p, rows, values, self._backend(p)))
        return work

    def _write(self, work: list[tuple[Any, ...]]) -> None:
        """Apply checked work (from ``_prepare``): cannot fail on bad input."""
        for group, p, rows, values, backend in work:
            self._apply(group, p, rows, values, backend)

    @torch.no_grad()
    def fused_update(self, p: Tensor, rows: Tensor, values: Tensor) -> None:
        """Apply the rule to ``p`` from a deduplicated gradient: ascending unique ``rows`` (U,)
        int64 and ``values`` (U, D). The fused-backward hook calls this.

        Rows outside the table raise IndexError on CPU tensors (where the check is free); on a
        GPU the check would cost a host sync inside backward, so the kernels skip such rows
        instead (the embedding backward never passes them)."""
        group, index = self._group_of(p)
        self._check_options(group)
        if rows.dtype not in (torch.int32, torch.int64) or not values.is_floating_point():
            raise ValueError(
                f"fused update of {self._describe(group, index, p)}: rows must be int64 (got "
                f"{rows.dtype}) and values floating point (got {values.dtype})"
            )
        if rows.dim() != 1 or values.shape != (rows.shape[0], p.shape[1]):
            raise ValueError(
                f"fused update of {self._describe(group, index, p)}: rows {tuple(rows.shape)} "
                f"and values {tuple(values.shape)} do not match the table"
            )
        if rows.device != p.device or values.device != p.device:
            raise ValueError(
                f"fused update of {self._describe(group, index, p)}: gradient on {values.device}"
            )
        if not rows.is_cuda:
            _check_rows(rows, p.shape[0], lambda: f"the fused update of "
                        f"{self._describe(group, index, p)}")
        self._check_state(group, index, p)
        self._apply(group, p, rows, values, self._backend(p))

    def _apply(
        self, group: dict[str, Any], p: Tensor, rows: Tensor, values: Tensor, backend: ModuleType
    ) -> None:
        state = self.state[p]
        if not state:
            self._init_state(group, p, state)
        state["step"] += 1
        self._update(group, p, state, rows, values, backend, self._sr_seed(group, p, state["step"]))

    def _update(self, group, p, state, rows, values, backend, sr_seed) -> None:  # noqa: ANN001
        raise NotImplementedError

    # ----- fused backward

    def enable_fused_backward(self, params: Iterable[Tensor] | None = None) -> None:
        """Run the update inside the embedding backward of ``params`` (default: all).

        The backward of ``sparsemb.Embedding`` then calls :meth:`fused_update` with the
        deduplicated gradient and leaves ``.grad`` unset: no gradient is materialized. The result
        equals ``backward(); step()`` when each table is looked up once per backward (two lookups
        of one table give two updates). Gradient clipping and ``GradScaler`` cannot see these
        gradients, and the weight must be used only through lookups (it changes in backward).
        Takes effect on lookups run after this call; torch's own nn.Embedding ignores it. The
        hook (holding this optimizer) is an attribute of the weight: call
        :meth:`disable_fused_backward` before pickling or deep-copying the module.
        """
        managed = [q for g in self.param_groups for q in g["params"]]
        chosen = managed if params is None else list(params)
        for p in chosen:  # every parameter checked before the first hook is set
            if not any(p is q for q in managed):
                raise ValueError("enable_fused_backward: a parameter is not in this optimizer")
        for p in chosen:
            setattr(p, FUSED_UPDATE_ATTR, _FusedUpdate(self, p))

    def disable_fused_backward(self) -> None:
        """Remove the hooks: the tables produce ``.grad`` again on their next lookup."""
        for group in self.param_groups:
            for p in group["params"]:
                hook = getattr(p, FUSED_UPDATE_ATTR, None)
                if isinstance(hook, _FusedUpdate) and hook.optimizer is self:
                    delattr(p, FUSED_UPDATE_ATTR)

    # ----- checkpoints

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loading, except that the state keeps its own dtype (float32 for 16-bit tables)
        and is copied, never aliased with ``state_dict``.

        Everything is checked before anything is replaced: the groups' options must be this
        rule's (a SparseSGD checkpoint has no ``betas`` for SparseAdam, a SparseAdamW one has a
        ``weight_decay`` SparseAdam would silently drop), each state entry must hold exactly
        this rule's tensors, of its tables' shapes, and a ``step`` count. A mismatch raises
        ValueError with the optimizer as it was."""
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError("not an optimizer state dict (expected 'state' and 'param_groups')")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"])
            for s, g in zip(saved_groups, self.param_groups, strict=True)
        ):
            raise ValueError("loaded state dict does not match this optimizer's parameter groups")
        rule, ours = type(self).__name__, set(self.defaults)
        for i, saved in enumerate(saved_groups):
            keys = set(saved) - {"params", "param_names"}
            missing, foreign = ours - keys, (keys & _RULE_OPTIONS) - ours
            if missing or foreign:
                raise ValueError(
                    f"loaded param group {i} was not saved by {rule}: it lacks options "
                    f"{sorted(missing)} and has options {sorted(foreign)} {rule} does not take"
                )
            self._check_options({**saved})
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in self.param_groups),
                strict=True,
            )
        )
        expected = {"step", *self._state_names}
        restored = {}
        for key, saved in state_dict["state"].items():
            if key not in id_map:
                raise ValueError(f"loaded state of parameter {key!r}, which no group lists")
            p = id_map[key]
            if set(saved) != expected:
                raise ValueError(
                    f"loaded state of parameter {key} has {sorted(saved)}, {rule} keeps "
                    f"{sorted(expected)}"
                )
            step = saved["step"]
            if isinstance(step, Tensor) and step.numel() == 1 and float(step) == int(step):
                step = int(step)
            if isinstance(step, bool) or not isinstance(step, int) or step < 0:
                raise ValueError(f"loaded state 'step' of parameter {key} is {step!r}")
            entry = {"step": step}
            for name in self._state_names:
                value, shape = saved[name], self._state_shape(p)
                if (
                    not isinstance(value, Tensor)
                    or tuple(value.shape) != shape
                    or not value.is_floating_point()
                ):
                    raise ValueError(
                        f"loaded state {name!r} of parameter {key} is not a float tensor of the "
                        f"shape {shape} of its table"
                    )
                entry[name] = value.to(device=p.device, dtype=state_dtype(p.dtype), copy=True)
            restored[p] = entry
        super().load_state_dict(state_dict)
        for p, entry in restored.items():
            self.state[p] = entry


class _FusedUpdate:
    """The callable stored on a weight for fused backward (see ``FUSED_UPDATE_ATTR``)."""

    def __init__(self, optimizer: SparseOptimizer, param: Tensor) -> None:
        self.optimizer = optimizer
        self.param = param

    def __call__(self, rows: Tensor, values: Tensor) -> None:
        self.optimizer.fused_update(self.param, rows, values)


class SparseSGD(SparseOptimizer):
    """torch.optim.SGD on sparse gradients: ``w_r -= lr * (g_r + weight_decay * w_r)``.

    Only the rows in the gradient move. ``weight_decay`` is L2 added to the gradient of the
    touched rows only (torch's SGD cannot apply it to sparse gradients at all): a row decays in
    the steps that look it up. Momentum is not offered: torch's momentum on a sparse gradient keeps
    moving every row ever touched, which is a dense update.
    """

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0, *,
        stochastic_rounding: bool = False, seed: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, weight_decay=weight_decay, stochastic_rounding=stochastic_rounding, seed=seed
        )
        super().__init__(params, defaults)

    def _check_options(self, options: dict[str, Any]) -> None:
        _common_options(options)
        _non_negative("weight_decay", options["weight_decay"])

    def _update(self, group, p, state, rows, values, backend, sr_seed) -> None:  # noqa: ANN001
        backend.sgd_update_(
            p, rows, values, neg_lr=-group["lr"], weight_decay=group["weight_decay"],
            sr_seed=sr_seed,
        )


class SparseAdagrad(SparseOptimizer):
    """torch.optim.Adagrad's sparse semantics, elementwise state ``sum`` (V, D).

    ``sum_r += g_r^2; w_r -= clr * g_r / (sqrt(sum_r) + eps)`` with
    ``clr = lr / (1 + (step - 1) * lr_decay)`` and ``step`` counting this table's updates.
    ``weight_decay`` (which torch rejects for sparse gradients) adds ``weight_decay * w_r`` to the
    gradient of the touched rows only.
    """

    _state_names = ("sum",)

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-2, lr_decay: float = 0.0,
        weight_decay: float = 0.0, initial_accumulator_value: float = 0.0, eps: float = 1e-10,
        *, stochastic_rounding: bool = False, seed: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps,
            stochastic_rounding=stochastic_rounding, seed=seed,
        )
        super().__init__(params, defaults)

    def _check_options(self, options: dict[str, Any]) -> None:
        _common_options(options)
        for name in ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            _non_negative(name, options[name])

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = 0
        state["sum"] = torch.full(
            tuple(p.shape), float(group["initial_accumulator_value"]),
            dtype=state_dtype(p.dtype), device=p.device,
        )

    def _update(self, group, p, state, rows, values, backend, sr_seed) -> None:  # noqa: ANN001
        clr = group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])
        backend.adagrad_update_(
            p, rows, values, state["sum"], neg_clr=-clr, eps=group["eps"],
            weight_decay=group["weight_decay"], sr_seed=sr_seed,
        )


class RowWiseAdagrad(SparseOptimizer):
    """Row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD): one float32 state per row.

    ``sum[r] += mean(g_r^2); w_r -= lr * g_r / (sqrt(sum[r]) + eps)``: the state costs V floats
    instead of V * D, the memory-lean choice for huge vocabularies. ``weight_decay`` is L2 added
    to the gradient of the touched rows only.
    """

    _state_names = ("sum",)
    _rowwise_state = True

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-2, eps: float = 1e-10,
        weight_decay: float = 0.0, *, stochastic_rounding: bool = False, seed: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, eps=eps, weight_decay=weight_decay, stochastic_rounding=stochastic_rounding,
            seed=seed,
        )
        super().__init__(params, defaults)

    def _check_options(self, options: dict[str, Any]) -> None:
        _common_options(options)
        _non_negative("eps", options["eps"])
        _non_negative("weight_decay", options["weight_decay"])

    def _update(self, group, p, state, rows, values, backend, sr_seed) -> None:  # noqa: ANN001
        backend.rowwise_adagrad_update_(
            p, rows, values, state["sum"], neg_lr=-group["lr"], eps=group["eps"],
            weight_decay=group["weight_decay"], sr_seed=sr_seed,
        )


class SparseAdam(SparseOptimizer):
    """torch.optim.SparseAdam: lazy Adam, moments ``exp_avg``/``exp_avg_sq`` (V, D).

    Only the touched rows' moments are decayed and updated; the bias correction uses ``step``, the
    number of updates of this table (torch's count), not a per-row count.
    """

    _state_names = ("exp_avg", "exp_avg_sq")

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, *, stochastic_rounding: bool = False, seed: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
            stochastic_rounding=stochastic_rounding, seed=seed,
        )
        super().__init__(params, defaults)

    def _check_options(self, options: dict[str, Any]) -> None:
        _common_options(options)
        _betas(options["betas"])
        _non_negative("eps", options["eps"])

    def _decay(self, group: dict[str, Any]) -> float:
        return 1.0

    def _update(self, group, p, state, rows, values, backend, sr_seed) -> None:  # noqa: ANN001
        beta1, beta2 = group["betas"]
        step = state["step"]
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        backend.adam_update_(
            p, rows, values, state["exp_avg"], state["exp_avg_sq"],
            one_minus_beta1=1 - beta1, one_minus_beta2=1 - beta2, eps=group["eps"],
            neg_step_size=-step_size, decay=self._decay(group), sr_seed=sr_seed,
        )


class SparseAdamW(SparseAdam):
    """SparseAdam plus decoupled weight decay, ``w_r *= 1 - lr * weight_decay``, before the step.

    The decay is applied to the touched rows only, in the steps that touch them (a row seen
    once in a hundred steps decays once, not a hundred times): the lazy counterpart of
    torch.optim.AdamW, as in FBGEMM and TensorFlow's lazy optimizers.
    """

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, weight_decay: float = 1e-2, *, stochastic_rounding: bool = False,
        seed: int | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
            weight_decay=weight_decay, stochastic_rounding=stochastic_rounding, seed=seed,
        )
        SparseOptimizer.__init__(self, params, defaults)

    def _check_options(self, options: dict[str, Any]) -> None:
        super()._check_options(options)
        _non_negative("weight_decay", options["weight_decay"])

    def _decay(self, group: dict[str, Any]) -> float:
        return 1.0 - group["lr"] * group["weight_decay"]


SPARSE_RULES: dict[str, type[SparseOptimizer]] = {
    "sgd": SparseSGD,
    "adagrad": SparseAdagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "adam": SparseAdam,
    "adamw": SparseAdamW,
}


# ---------------------------------------------------------------------------------------------
# the whole-model wrapper
# ---------------------------------------------------------------------------------------------


def _is_sparse_table(module: nn.Module) -> bool:
    """A lookup table whose weight gets a sparse gradient (sparsemb's or torch's)."""
    return (
        isinstance(module, (nn.Embedding, nn.EmbeddingBag))
        and bool(module.sparse)
        and module.weight.requires_grad
    )


class SparseAware(torch.optim.Optimizer):
    """One optimizer for a whole model: sparse tables get a sparse rule, the rest a torch one.

    ``model_or_params``: an ``nn.Module`` (the weights of ``sparse=True`` embedding tables, of
    sparsemb or torch, get the sparse rule; every other trainable parameter the dense optimizer),
    or an iterable of parameters / param-group dicts, where a group with ``"sparse": True`` goes
    to the sparse rule and everything else is dense.
    ``sparse``: "sgd", "adagrad", "rowwise_adagrad", "adam", "adamw" or an optimizer class.
    ``dense``: a torch optimizer class (or any ``callable(params, **options)``).
    ``lr``: both sides' learning rate (None: each optimizer's default); ``sparse_options`` and
    ``dense_options`` are extra keyword arguments (they override ``lr``).
    ``fused_backward``: the sparsemb tables are updated inside backward (see
    ``SparseOptimizer.enable_fused_backward``); ``step()`` then updates the rest.

    ``param_groups`` lists the sparse groups then the dense groups: views of the dicts the two
    optimizers use, so lr schedulers and GradScaler act on both. Each view reads and writes the
    first-moment coefficient under both of torch's names, ``momentum`` and ``betas[0]``, so a
    scheduler that cycles momentum (OneCycleLR, CyclicLR) reaches torch SGD's ``momentum`` and
    Adam's ``betas[0]`` alike; a group whose rule has no momentum (SparseSGD, the Adagrads) reads
    0 and ignores the writes. ``defaults`` names ``betas`` or ``momentum`` when a group has one,
    as those schedulers require. ``state_dict`` holds both optimizers' states.
    """

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        sparse: str | type[torch.optim.Optimizer] = "adam",
        dense: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        lr: float | None = None,
        sparse_options: dict[str, Any] | None = None,
        dense_options: dict[str, Any] | None = None,
        fused_backward: bool = False,
    ) -> None:
        sparse_cls = self._resolve_rule(sparse)
        if not callable(dense):
            raise TypeError(f"dense must be an optimizer class, got {dense!r}")
        if lr is not None:
            _non_negative("lr", lr)
        sparse_groups, dense_groups, names, fusable = _split(model_or_params)
        if not sparse_groups and not dense_groups:
            raise ValueError("SparseAware got no trainable parameters")
        if fused_backward and not issubclass(sparse_cls, SparseOptimizer):
            raise ValueError(
                f"fused_backward needs a sparsemb rule ({sorted(SPARSE_RULES)}), got {sparse_cls}"
            )
        base = {} if lr is None else {"lr": lr}
        self._sparse_kwargs = {**base, **(sparse_options or {})}
        self._dense_kwargs = {**base, **(dense_options or {})}
        self._sparse_cls, self._dense_cls = sparse_cls, dense
        self.sparse_optimizer: torch.optim.Optimizer | None = None
        self.dense_optimizer: torch.optim.Optimizer | None = None
        if sparse_groups:
            self.sparse_optimizer = sparse_cls(sparse_groups, **self._sparse_kwargs)
            if isinstance(self.sparse_optimizer, SparseOptimizer):
                self.sparse_optimizer._param_names.update(names)
        if dense_groups:
            self.dense_optimizer = dense(dense_groups, **self._dense_kwargs)
        self.fused_backward = bool(fused_backward)
        if self.fused_backward and self.sparse_optimizer is not None:
            self.sparse_optimizer.enable_fused_backward(fusable)
        self._names = names
        self._base_defaults = dict(base)
        # what torch.optim.Optimizer.__init__ sets up for hooks and profiling (not called: the
        # groups and the state live in the two inner optimizers)
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    @staticmethod
    def _resolve_rule(sparse: Any) -> type[torch.optim.Optimizer]:
        if isinstance(sparse, str):
            key = sparse.strip().lower()
            if key not in SPARSE_RULES:
                raise ValueError(f"sparse must be one of {sorted(SPARSE_RULES)}, got {sparse!r}")
            return SPARSE_RULES[key]
        if isinstance(sparse, type) and issubclass(sparse, torch.optim.Optimizer):
            return sparse
        raise ValueError(
            f"sparse must be a rule name {sorted(SPARSE_RULES)} or an optimizer class, "
            f"got {sparse!r}"
        )

    def _parts(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.sparse_optimizer, self.dense_optimizer) if o is not None]

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [_GroupView(group) for opt in self._parts() for group in opt.param_groups]

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        """The shared options, plus ``betas`` / ``momentum`` where a group has it: momentum
        schedulers look here to decide whether (and under which name) to cycle momentum."""
        merged = dict(self._base_defaults)
        for key in ("momentum", "betas"):
            for opt in self._parts():
                if key in opt.defaults:
                    merged.setdefault(key, opt.defaults[key])
        return merged

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._base_defaults = dict(value)

    @property
    def state(self) -> dict[Tensor, Any]:  # type: ignore[override]
        merged: dict[Tensor, Any] = {}
        for opt in self._parts():
            merged.update(opt.state)
        return merged

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        parts = ",\n  ".join(repr(opt).replace("\n", "\n  ") for opt in self._parts())
        return f"SparseAware(\n  {parts}\n)"

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self._parts():
            opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Step both optimizers, all or nothing as far as torch allows.

        Order: (1) check that no dense-side parameter has a sparse gradient; (2) run every check
        of the sparsemb rule (gradients, rows, options, state) without writing; (3) step the
        dense optimizer; (4) write the sparse update. Checks (1)-(2) fail before anything is
        written; the dense step (3) is torch's and may raise (its own checks, a custom
        optimizer's error), which leaves the tables untouched because nothing sparse has been
        written yet; (4) was checked in (2), so it does not fail on bad input. Running
        the sparse writes first would leave them applied when the dense step raises, which is
        why they come last. With a torch sparse rule (e.g. ``torch.optim.SparseAdam``), which
        cannot be checked apart from its step, the dense step runs first and the rule's own
        checks may still fail after it. With ``fused_backward`` the tables were already updated
        inside backward: an exception raised later in that backward, or in this step, cannot
        undo those updates.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.dense_optimizer is not None:
            for group in self.dense_optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None and p.grad.is_sparse:
                        name = self._names.get(id(p), tuple(p.shape))
                        raise ValueError(
                            f"parameter {name!r} has a sparse gradient but is on the dense side "
                            f"({type(self.dense_optimizer).__name__}); put it in a group with "
                            "'sparse': True"
                        )
        sparse = self.sparse_optimizer
        work = sparse._prepare() if isinstance(sparse, SparseOptimizer) else None
        if self.dense_optimizer is not None:
            self.dense_optimizer.step()
        if isinstance(sparse, SparseOptimizer):
            sparse._write(work)
        elif sparse is not None:
            sparse.step()
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; ``"sparse": True`` sends it to the sparse rule, else to the dense side."""
        group = dict(param_group)
        is_sparse = bool(group.pop("sparse", False))
        attr, cls, kwargs = (
            ("sparse_optimizer", self._sparse_cls, self._sparse_kwargs)
            if is_sparse
            else ("dense_optimizer", self._dense_cls, self._dense_kwargs)
        )
        opt = getattr(self, attr)
        if opt is None:
            setattr(self, attr, cls([group], **kwargs))
        else:
            opt.add_param_group(group)

    def state_dict(self) -> dict[str, Any]:
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state = {
            "sparse_rule": self._sparse_cls.__name__,
            "sparse": None if self.sparse_optimizer is None else self.sparse_optimizer.state_dict(),
            "dense": None if self.dense_optimizer is None else self.dense_optimizer.state_dict(),
        }
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state)
            if result is not None:
                state = result
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        if not isinstance(state_dict, dict) or not {"sparse", "dense"} <= state_dict.keys():
            raise ValueError("not a SparseAware state dict (expected keys 'sparse' and 'dense')")
        if state_dict.get("sparse_rule") != self._sparse_cls.__name__:
            raise ValueError(
                f"the checkpoint was saved with sparse rule {state_dict.get('sparse_rule')}, "
                f"this optimizer uses {self._sparse_cls.__name__}"
            )
        for side in ("sparse", "dense"):
            opt, saved = getattr(self, f"{side}_optimizer"), state_dict[side]
            if (opt is None) != (saved is None):
                raise ValueError(f"the checkpoint's {side} part does not match this model")
        # each side checks before it replaces anything; if the second side refuses, the first
        # side's previous state and groups are put back, so a failed load changes nothing
        saved = [(opt, opt.state, opt.param_groups) for opt in self._parts()]
        try:
            for side in ("sparse", "dense"):
                opt = getattr(self, f"{side}_optimizer")
                if opt is not None:
                    opt.load_state_dict(state_dict[side])
        except Exception:
            for opt, state, groups in saved:
                opt.state, opt.param_groups = state, groups
            raise
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)


class _GroupView(MutableMapping):
    """A param group of ``SparseAware``: the inner optimizer's own dict, with the first-moment
    coefficient under both of torch's names.

    torch's momentum schedulers write one key to every group: ``momentum`` (SGD, RMSprop) or
    ``betas`` as ``(m, *betas[1:])`` (the Adams), chosen from ``optimizer.defaults``. A wrapper
    whose two sides differ (SparseAdam with torch SGD, SparseSGD with AdamW) needs each write
    to land in its group's own key: ``momentum`` reads ``betas[0]`` of an Adam group, ``betas``
    reads ``(momentum,)`` of an SGD group, and writes go back the same way. A group with neither
    (a rule without momentum) reads momentum 0 and drops the writes, so its dict keeps only its
    rule's options (and its checkpoints load into the rule again).
    """

    _ALIASES = ("momentum", "betas")

    def __init__(self, group: dict[str, Any]) -> None:
        self.group = group

    def __getitem__(self, key: str) -> Any:
        group = self.group
        if key in group or key not in self._ALIASES:
            return group[key]
        if key == "momentum":
            return group["betas"][0] if "betas" in group else 0.0
        return (group["momentum"],) if "momentum" in group else (0.0,)

    def __setitem__(self, key: str, value: Any) -> None:
        group = self.group
        if key in group or key not in self._ALIASES:
            group[key] = value
        elif key == "momentum" and "betas" in group:
            group["betas"] = (value, *group["betas"][1:])
        elif key == "betas" and "momentum" in group:
            group["momentum"] = value[0]

    def __delitem__(self, key: str) -> None:
        del self.group[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.group)

    def __len__(self) -> int:
        return len(self.group)

    def __repr__(self) -> str:
        return repr(self.group)


def _split(
    model_or_params: nn.Module | Iterable[Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[int, str], list[Tensor]]:
    """(sparse groups, dense groups, {id(param): name}, weights that can take fused backward)."""
    from sparsemb.nn import Embedding  # a sparsemb table: its backward honours the fused hook

    if isinstance(model_or_params, Tensor):
        raise TypeError("model_or_params must be a module or an iterable of parameters, "
                        "not a single tensor")
    if isinstance(model_or_params, nn.Module):
        tables = [m for m in model_or_params.modules() if _is_sparse_table(m)]
        sparse_ids = {id(m.weight) for m in tables}
        fusable = [m.weight for m in tables if isinstance(m, Embedding)]
        sparse, dense, names = [], [], {}
        for name, p in model_or_params.named_parameters():
            if not p.requires_grad:
                continue
            names[id(p)] = name
            (sparse if id(p) in sparse_ids else dense).append(p)
        return (
            [{"params": sparse}] if sparse else [],
            [{"params": dense}] if dense else [],
            names,
            fusable,
        )
    sparse_groups, dense_groups, names, loose = [], [], {}, []
    for item in model_or_params:
        if isinstance(item, dict):
            group = dict(item)
            params = group["params"]
            params = [params] if isinstance(params, Tensor) else list(params)
            plain = []
            for entry in params:
                if isinstance(entry, tuple):
                    names[id(entry[1])] = entry[0]
                    entry = entry[1]
                plain.append(entry)
            group["params"] = plain
            target = sparse_groups if group.pop("sparse", False) else dense_groups
            target.append(group)
        else:
            if isinstance(item, tuple):
                names[id(item[1])] = item[0]
                item = item[1]
            loose.append(item)
    if loose:
        dense_groups.insert(0, {"params": loose})
    fusable = [p for g in sparse_groups for p in g["params"]]
    return sparse_groups, dense_groups, names, fusable


# ---------------------------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over dense and sparse gradients together.

    The norm of a sparse gradient is that of its coalesced values (duplicates summed first);
    an uncoalesced sparse ``.grad`` is replaced by its coalesced form (the optimizer would
    coalesce it anyway). Each gradient is scaled in place by ``min(1, max_norm / (norm + 1e-6))``
    and the total norm is returned, as torch does. 16-bit gradients' norms are taken in float32.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    max_norm = _real("max_norm", max_norm)
    norm_type = float(norm_type)
    if not (norm_type > 0):
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    pieces = []
    for p in params:
        grad = p.grad
        if grad.is_sparse:
            if not grad.is_coalesced():
                grad = grad.coalesce()
                p.grad = grad
            grad = grad._values()
        pieces.append(grad)
    device = pieces[0].device
    norms = [
        torch.linalg.vector_norm(g, norm_type, dtype=state_dtype(g.dtype)).to(device)
        for g in pieces
    ]
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    total = torch.linalg.vector_norm(torch.stack([n.to(dtype) for n in norms]), norm_type)
    if error_if_nonfinite and not bool(torch.isfinite(total)):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite, so they cannot "
            "be clipped; set error_if_nonfinite=False to skip this check"
        )
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in pieces:
        g.mul_(coef.to(g.device))
    return total

"""``SparseOptimizer``: the base of the sparse rules (validation, gradient rows, lazy state,
fused backward, checkpoints). A rule names its state tensors, checks its options and applies its
update to one table; the CPU path is ``sparsemb.torch_backend.optim``, the GPU path
``sparsemb.kernels.optim``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from sparsemb import _memory
from sparsemb._autograd import fused_update_of, grad_is_sparsemb_output, set_fused_update
from sparsemb._backend import kernel_module, uses_triton
from sparsemb._checks import check_common_options, check_grad_rows
from sparsemb._dtypes import HALF_DTYPES, state_dtype
from sparsemb.torch_backend import optim as torch_rules


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


# option names of the built-in rules: a checkpoint group carrying one this rule lacks (or lacking
# one it has) was saved by another rule
_RULE_OPTIONS = frozenset(
    {"lr", "weight_decay", "stochastic_rounding", "seed", "lr_decay",
     "initial_accumulator_value", "eps", "betas"}
)


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
        check_common_options(options)

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
            state[name] = _memory.zeros(  # huge pages: rows are read at random
                *self._state_shape(p), dtype=state_dtype(p.dtype), device=p.device
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
                "; it updates tables with sparse gradients only. Either the table was built with "
                "sparse=False (use sparse=True, or sparsemb.convert(model, sparse=True)), or its "
                "weight is also used outside its lookups (tied to an output layer, or read by "
                "F.linear / a matmul), which adds a dense gradient: give this weight to a dense "
                "optimizer (SparseAware(model) does so for ties between modules, with a warning)"
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
        if not grad_is_sparsemb_output(p):  # sparsemb's own gradients hold only table rows
            check_grad_rows(
                grad._indices()[0], p.shape[0],
                lambda: f"the sparse gradient of {self._describe(group, index, p)}",
            )
        if not grad.is_coalesced():
            grad = grad.coalesce()
        return grad._indices()[0], grad._values()

    def _backend(self, p: Tensor) -> ModuleType:
        return kernel_module("optim") if uses_triton(p) else torch_rules

    def _sr_seed(self, group: dict[str, Any], p: Tensor, step: int) -> int | None:
        if not group["stochastic_rounding"] or p.dtype not in HALF_DTYPES:
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
        rows = rows.long()  # int32 rows too: the CPU path's index_copy_ takes int64 only
        if not rows.is_cuda:
            check_grad_rows(rows, p.shape[0], lambda: f"the fused update of "
                        f"{self._describe(group, index, p)}")
        self._check_state(group, index, p)
        self._apply(group, p, rows, values, self._backend(p))

    def _apply(
        self, group: dict[str, Any], p: Tensor, rows: Tensor, values: Tensor, backend: ModuleType
    ) -> None:
        state = self.state[p]
        if not state:
            self._init_state(group, p, state)
            # its rows are read and written at random from now on: huge pages (CPU, once)
            _memory.collapse_to_huge_pages(p.detach())
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
            set_fused_update(p, _FusedUpdate(self, p))

    def disable_fused_backward(self) -> None:
        """Remove the hooks: the tables produce ``.grad`` again on their next lookup."""
        for group in self.param_groups:
            for p in group["params"]:
                hook = fused_update_of(p)
                if isinstance(hook, _FusedUpdate) and hook.optimizer is self:
                    set_fused_update(p, None)

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
    """The callable stored on a weight for fused backward (``_autograd.set_fused_update``)."""

    def __init__(self, optimizer: SparseOptimizer, param: Tensor) -> None:
        self.optimizer = optimizer
        self.param = param

    def __call__(self, rows: Tensor, values: Tensor) -> None:
        self.optimizer.fused_update(self.param, rows, values)

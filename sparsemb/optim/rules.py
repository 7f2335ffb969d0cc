"""The sparse rules: SGD, Adagrad, row-wise Adagrad, Adam (lazy moments) and AdamW.

Each checks its options, creates its state lazily and hands one table's update to the backend
(``sparsemb.torch_backend.optim`` on CPU, ``sparsemb.kernels.optim`` on GPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from torch import Tensor

from sparsemb import _memory
from sparsemb._checks import check_betas, check_common_options, check_non_negative
from sparsemb._dtypes import state_dtype
from sparsemb.optim.base import SparseOptimizer


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
        check_common_options(options)
        check_non_negative("weight_decay", options["weight_decay"])

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
        check_common_options(options)
        for name in ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            check_non_negative(name, options[name])

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = 0
        state["sum"] = _memory.empty(  # huge pages: rows are read at random
            *p.shape, dtype=state_dtype(p.dtype), device=p.device
        ).fill_(float(group["initial_accumulator_value"]))

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
        check_common_options(options)
        check_non_negative("eps", options["eps"])
        check_non_negative("weight_decay", options["weight_decay"])

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
        check_common_options(options)
        check_betas(options["betas"])
        check_non_negative("eps", options["eps"])

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
        check_non_negative("weight_decay", options["weight_decay"])

    def _decay(self, group: dict[str, Any]) -> float:
        return 1.0 - group["lr"] * group["weight_decay"]


SPARSE_RULES: dict[str, type[SparseOptimizer]] = {
    "sgd": SparseSGD,
    "adagrad": SparseAdagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "adam": SparseAdam,
    "adamw": SparseAdamW,
}

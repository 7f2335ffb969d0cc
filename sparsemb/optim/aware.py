"""``SparseAware``: one optimizer for a whole model, sparse tables on a sparse rule and every
other parameter on a torch optimizer, driven by torch's lr schedulers as one optimizer."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any

import torch
from torch import Tensor, nn

from sparsemb import _ties
from sparsemb._checks import check_non_negative
from sparsemb.optim.base import SparseOptimizer
from sparsemb.optim.rules import SPARSE_RULES


def _is_sparse_table(module: nn.Module) -> bool:
    """A lookup table whose weight gets a sparse gradient (sparsemb's or torch's)."""
    return (
        (isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or _is_sparsemb_lookup(module))
        and bool(module.sparse)
        and module.weight.requires_grad
    )


def _is_sparsemb_lookup(module: nn.Module) -> bool:
    """A module whose weight is read through sparsemb's lookup, so its backward honours the
    fused-update hook: ``sparsemb.Embedding``, ``sparsemb.EmbeddingBag``, or one that says so
    (``sparsemb_lookup = True``, e.g. ``sparsemb.distributed.ShardedEmbedding``, whose weight is a
    local shard)."""
    from sparsemb.bag import EmbeddingBag
    from sparsemb.nn import Embedding

    return isinstance(module, (Embedding, EmbeddingBag)) or bool(
        getattr(type(module), "sparsemb_lookup", False)
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
    ``tied``: a ``sparse=True`` table whose weight another module also uses (an output layer
    tied to the input embedding) gets a dense gradient from that module. ``"dense"`` (default)
    sets the table to ``sparse=False`` and gives its weight the dense optimizer, with a warning;
    ``"raise"`` raises ValueError naming the tie. A table whose storage a distinct Parameter
    shares (two optimizer states over one memory) always raises.

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
        tied: str = "dense",
    ) -> None:
        sparse_cls = self._resolve_rule(sparse)
        if tied not in ("dense", "raise"):
            raise ValueError(f"tied must be 'dense' or 'raise', got {tied!r}")
        if not callable(dense):
            raise TypeError(f"dense must be an optimizer class, got {dense!r}")
        if lr is not None:
            check_non_negative("lr", lr)
        if fused_backward and not issubclass(sparse_cls, SparseOptimizer):
            raise ValueError(
                f"fused_backward needs a sparsemb rule ({sorted(SPARSE_RULES)}), got {sparse_cls}"
            )
        sparse_groups, dense_groups, names, fusable, untie = _split(model_or_params, tied)
        if not sparse_groups and not dense_groups:
            raise ValueError("SparseAware got no trainable parameters")
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
        _untie(untie)  # both optimizers built: only now change the tied tables
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


def _find_ties(model: nn.Module, tied: str) -> list[tuple[nn.Module, str, list[str]]]:
    """Check the sparse tables' weights for ties and shared storage (see ``sparsemb._ties``):
    the tables tied to a non-table module, as (module, weight name, other owners); with
    tied="raise" such a tie is an error, and shared storage always is."""
    uses = _ties.parameter_uses(model)
    untie = []
    for name, module in model.named_modules():
        if not _is_sparse_table(module):
            continue
        entry = uses[id(module.weight)]
        label = f"{name}.weight" if name else "weight"
        if entry.sharing:
            raise ValueError(_ties.describe_sharing(label, entry))
        outside = entry.tied_outside_tables
        if not outside:
            continue
        if tied == "raise":
            raise ValueError(
                f"the sparse table {label!r} is tied to {outside}: those modules add a dense "
                "gradient, so a sparse rule cannot update it. Pass tied='dense' (the table gets "
                "sparse=False and the dense optimizer), untie the weights, or build the table "
                "with sparse=False"
            )
        untie.append((module, label, outside))
    return untie


def _untie(untie: list[tuple[nn.Module, str, list[str]]]) -> None:
    """Give each tied table a dense gradient, with a warning naming the tie."""
    for module, label, outside in untie:
        module.sparse = False
        warnings.warn(
            f"SparseAware: the sparse table {label!r} is tied to {outside}, which add a dense "
            "gradient; the table now has sparse=False and its weight the dense optimizer "
            "(tied='raise' makes this an error)",
            stacklevel=4,
        )


def _check_no_shared_storage(sparse_groups, dense_groups, names) -> None:
    """Sparse-side parameters must not share storage with any other parameter given."""
    seen: dict[tuple[str, int], Tensor] = {}
    sparse_ids = {id(p) for g in sparse_groups for p in g["params"]}
    for p in (p for g in [*sparse_groups, *dense_groups] for p in g["params"]):
        key = _ties._storage_key(p)
        if key is None:
            continue
        other = seen.setdefault(key, p)
        if other is not p and (id(p) in sparse_ids or id(other) in sparse_ids):
            first, second = names.get(id(other), "a parameter"), names.get(id(p), "another")
            raise ValueError(
                f"{first!r} and {second!r} are distinct Parameters over the same storage: an "
                "optimizer would keep two states and update that memory twice per step; tie "
                "them with the very same Parameter, or use sparsemb.convert(model)"
            )


def _split(
    model_or_params: nn.Module | Iterable[Any], tied: str = "dense"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[int, str], list[Tensor], list]:
    """(sparse groups, dense groups, {id(param): name}, weights that can take fused backward,
    tied tables to make dense once the optimizers are built)."""
    if isinstance(model_or_params, Tensor):
        raise TypeError("model_or_params must be a module or an iterable of parameters, "
                        "not a single tensor")
    if isinstance(model_or_params, nn.Module):
        untie = _find_ties(model_or_params, tied)
        tied_ids = {id(m) for m, _, _ in untie}
        tables = [
            m for m in model_or_params.modules() if _is_sparse_table(m) and id(m) not in tied_ids
        ]
        sparse_ids = {id(m.weight) for m in tables}
        fusable = [m.weight for m in tables if _is_sparsemb_lookup(m)]
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
            untie,
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
    _check_no_shared_storage(sparse_groups, dense_groups, names)
    fusable = [p for g in sparse_groups for p in g["params"]]
    return sparse_groups, dense_groups, names, fusable, []

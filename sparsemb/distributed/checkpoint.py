"""Checkpoints of sharded tables that ``torch.distributed.checkpoint`` (DCP) can reshard.

A shard (weight or optimizer state) is published as a DTensor placed ``Shard(0)`` over the
group: the blocks layout is exactly DTensor's split, so DCP writes each rank's rows with their
global offsets and loads them back into any world size, or into a plain (V, D) tensor of a
single-process ``sparsemb.Embedding`` (and the reverse: a plain tensor loads into the shards).

``sharded_state_dict(model, optimizer)`` is ``{"model": ..., "optim": {fqn: {"step", state}}}``
for the sparse tables of a sparsemb rule; pass it to ``dcp.save``, or fill it with
``dcp.load`` and hand it to ``load_sharded_state_dict``. The same two calls work for a model
of plain ``sparsemb.Embedding`` tables (plain tensors then). The dense side of a
``SparseAware`` is torch's business: ``torch.distributed.checkpoint.state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _mesh(module):
    mesh = getattr(module, "_device_mesh", None)
    if mesh is None:
        import torch.distributed as dist
        from torch.distributed.device_mesh import DeviceMesh

        group = module.group if module.group is not None else dist.group.WORLD
        mesh = DeviceMesh.from_group(group, module.weight.device.type)
        module._device_mesh = mesh
    return mesh


def as_global(module, local: Tensor) -> Tensor:
    """The shard ``local`` (rows first) as a DTensor of the whole table's shape."""
    from torch.distributed.tensor import DTensor, Shard

    if not module.layout.is_blocks:
        raise NotImplementedError(
            "checkpoints of a row_map layout are not supported yet (DCP reshards contiguous "
            "blocks only); save full_weight() instead"
        )
    shape = torch.Size((module.num_embeddings, *local.shape[1:]))
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(local, _mesh(module), [Shard(0)], run_check=False, shape=shape,
                              stride=stride)


def local_part(module, value: Tensor) -> Tensor:
    """This rank's rows of ``value``: a DTensor of the whole table, or a plain (V, ...) one."""
    from torch.distributed.tensor import DTensor, Shard

    rows = module.local_rows
    if isinstance(value, DTensor):
        same_split = (
            value.placements == (Shard(0),)
            and value.device_mesh.size() == module.world_size
            and value.to_local().shape[0] == rows.numel()
            and module.layout.is_blocks
        )
        if same_split and value.shape[0] == module.num_embeddings:
            return value.to_local()
        value = value.full_tensor()  # another split: every rank gathers the whole tensor
    if not isinstance(value, Tensor) or value.dim() < 1 or value.shape[0] != module.num_embeddings:
        raise ValueError(
            f"expected a tensor of {module.num_embeddings} rows (the whole table), got "
            f"{type(value).__name__} of shape {tuple(getattr(value, 'shape', ()))}"
        )
    return value[rows.to(value.device)]


def _sparse_tables(model: nn.Module, optimizer):
    """(name, module or None, weight, sparse rule) for each table a sparsemb rule updates."""
    from sparsemb.distributed.embedding import ShardedEmbedding
    from sparsemb.optim import SparseAware, SparseOptimizer

    rule = optimizer.sparse_optimizer if isinstance(optimizer, SparseAware) else optimizer
    if not isinstance(rule, SparseOptimizer):
        raise TypeError("optimizer must be a sparsemb.optim rule or a SparseAware using one")
    owned = {id(p) for g in rule.param_groups for p in g["params"]}
    sharded = {id(m.weight): m for m in model.modules() if isinstance(m, ShardedEmbedding)}
    for name, p in model.named_parameters():
        if id(p) in owned:
            yield name, sharded.get(id(p)), p, rule


def sharded_state_dict(model: nn.Module, optimizer=None) -> dict[str, Any]:
    """The model's state dict and its sparse tables' optimizer state, DCP-ready.

    Optimizer state not created yet (no step taken) is created here as the rule's fresh state,
    so that ``dcp.load`` has tensors of the right shapes to load into.
    """
    result: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is None:
        return result
    optim: dict[str, Any] = {}
    for name, module, p, rule in _sparse_tables(model, optimizer):
        state = rule.state[p]
        if not state:
            rule._init_state(rule._group_of(p)[0], p, state)
        entry = {"step": torch.tensor(state["step"], dtype=torch.int64)}
        for key in rule._state_names:
            entry[key] = state[key] if module is None else as_global(module, state[key])
        optim[name] = entry
    result["optim"] = optim
    return result


def load_sharded_state_dict(model: nn.Module, optimizer, state_dict: dict[str, Any]) -> None:
    """Load what ``sharded_state_dict`` produced (after ``dcp.load`` filled it)."""
    model.load_state_dict(state_dict["model"])
    if optimizer is None:
        return
    saved = state_dict.get("optim")
    if saved is None:
        raise ValueError("the state dict has no optimizer part ('optim')")
    tables = list(_sparse_tables(model, optimizer))
    for name, _module, _p, rule in tables:  # check everything before writing anything
        if name not in saved or set(saved[name]) != {"step", *rule._state_names}:
            raise ValueError(f"the optimizer part has no state for {name!r} of "
                             f"{type(rule).__name__}")
    with torch.no_grad():
        for name, module, p, rule in tables:
            state = rule.state[p]
            if not state:
                rule._init_state(rule._group_of(p)[0], p, state)
            state["step"] = int(saved[name]["step"])
            for key in rule._state_names:
                value = saved[name][key]
                local = value if module is None else local_part(module, value)
                if local.data_ptr() != state[key].data_ptr():
                    state[key].copy_(local)

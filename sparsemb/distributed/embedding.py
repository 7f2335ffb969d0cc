"""``ShardedEmbedding``: one table's rows split over the ranks of a process group.

A lookup (every rank calls it, as with any collective):
  1. deduplicate the batch's indices (``torch.unique``: sorted, so grouped by owner for the
     blocks layout) and count them per owner;
  2. all-to-all the counts (with a bad-index flag: a bad index raises on every rank, before
     anything is written), then the indices as positions in the owners' shards;
  3. on the owner, ``sparsemb.embedding`` on the local shard (max_norm renorm, padding row and
     the deduplicated sparse gradient or fused optimizer update, all sparsemb's own);
  4. all-to-all the rows back and expand them to the batch's order (``sparsemb.embedding``
     with the inverse of step 1, whose dense gradient sums a rank's duplicates before sending).
Backward runs the mirror image: gradient rows go back to their owners, which deduplicate them
across ranks and update with the sparse rules. No rank holds the full table or a full-size
gradient; each rank sends at most its batch's unique rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sparsemb._checks import INDEX_DTYPES, check_renorm_args, normalize_padding_idx
from sparsemb.distributed.checkpoint import as_global, local_part
from sparsemb.distributed.exchange import ExchangeRows, exchange, exchange_counts
from sparsemb.distributed.layout import RowLayout
from sparsemb.functional import embedding

GRAD_REDUCTIONS = ("sum", "mean")


def pretrained_shard(embeddings: Tensor, options: dict) -> Tensor:
    """This rank's rows (a copy) of the full (V, D) table ``embeddings``, for the layout that
    ``options`` (a sharded table's ``process_group`` and ``row_map`` keywords) gives."""
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        raise ValueError("embeddings must be a 2-D tensor (the full table)")
    group = options.get("process_group")
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    row_map = options.get("row_map")
    num = embeddings.shape[0]
    layout = RowLayout.blocks(num, world) if row_map is None else RowLayout.from_map(
        row_map, world)
    return embeddings.detach()[layout.rows_of(rank).to(embeddings.device)].clone()


class ShardedEmbedding(nn.Module):
    """An embedding table whose rows live on the ranks of ``process_group`` (default: WORLD).

    Same lookup semantics as ``sparsemb.Embedding`` (padding_idx, max_norm applied by the
    owner, bad indices raise ``IndexError``) but ``weight`` is this rank's shard: rows
    ``layout.rows_of(rank)`` of the global table. ``row_map`` (a (V,) tensor of ranks) replaces
    the default contiguous blocks. The table's gradient is that of the *sum* of the ranks'
    losses (TorchRec's convention); ``grad_reduction="mean"`` gives that of their mean, which
    is what ``DistributedDataParallel`` gives the dense layers. Every rank must call forward
    and backward for each lookup, in the same order (the lookups are collectives).
    """

    sparsemb_lookup = True  # the weight's backward is sparsemb's: SparseAware may fuse it

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        sparse: bool = False,
        _weight: Tensor | None = None,
        _freeze: bool = False,
        device=None,
        dtype=None,
        *,
        process_group: dist.ProcessGroup | None = None,
        row_map: Tensor | None = None,
        grad_reduction: str = "sum",
    ) -> None:
        super().__init__()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "ShardedEmbedding needs an initialized process group: call "
                "torch.distributed.init_process_group first (or launch with torchrun)"
            )
        for name, value in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        check_renorm_args(max_norm, norm_type)
        if grad_reduction not in GRAD_REDUCTIONS:
            raise ValueError(f"grad_reduction must be one of {GRAD_REDUCTIONS}, "
                             f"got {grad_reduction!r}")
        self.group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if row_map is None:
            self.layout = RowLayout.blocks(num_embeddings, self.world_size)
        else:
            if row_map.numel() != num_embeddings:
                raise ValueError(f"row_map has {row_map.numel()} entries for "
                                 f"{num_embeddings} rows")
            self.layout = RowLayout.from_map(row_map, self.world_size, device)
        padding = normalize_padding_idx(padding_idx, num_embeddings)
        self.padding_idx = None if padding < 0 else padding
        self.max_norm, self.norm_type = max_norm, float(norm_type)
        self.sparse, self.grad_reduction = bool(sparse), grad_reduction
        self.scale_grad_by_freq = False  # not offered: the owner sees each rank's rows once
        self.local_rows = self.layout.rows_of(self.rank)  # global ids of this shard's rows
        self._padding_local = self._local_padding()  # the padding row's place here, if here
        shape = (self.local_rows.numel(), embedding_dim)
        if _weight is None:
            weight = torch.empty(shape, device=device, dtype=dtype).normal_()
            if self._padding_local is not None:
                weight[self._padding_local] = 0
        else:
            if tuple(_weight.shape) != shape:
                raise ValueError(f"_weight is this rank's shard: expected shape {shape}, "
                                 f"got {tuple(_weight.shape)}")
            weight = _weight
        self.weight = nn.Parameter(weight, requires_grad=not _freeze)

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        sparse: bool = False,
        **options,
    ) -> ShardedEmbedding:
        """Every rank passes the full (V, D) table and keeps a copy of its own rows."""
        local = pretrained_shard(embeddings, options)
        num, dim = embeddings.shape
        return cls(num, dim, padding_idx, max_norm, norm_type, sparse, _weight=local,
                   _freeze=freeze, **options)

    def _local_padding(self) -> int | None:
        if self.padding_idx is None:
            return None
        row = torch.tensor([self.padding_idx], device=self.layout.row_map.device
                           if self.layout.row_map is not None else "cpu")
        owner, local = self.layout.owner_and_local(row)
        return int(local) if int(owner) == self.rank else None

    def forward(self, input: Tensor) -> Tensor:
        flat = self._flat_indices(input)
        rows, inverse, _ = self._fetch_unique(flat)
        out = embedding(inverse, rows, bounds_check="none")
        return out.view(*input.shape, self.embedding_dim)

    def _flat_indices(self, input: Tensor) -> Tensor:
        """``input`` as flat int64 indices, after the checks that read no values."""
        if not isinstance(input, Tensor) or input.dtype not in INDEX_DTYPES:
            raise TypeError("indices must be an int32 or int64 tensor")
        if input.device != self.weight.device:
            raise ValueError(f"indices are on {input.device} but the shard is on "
                             f"{self.weight.device}")
        return input.reshape(-1).to(torch.int64)

    def _fetch_unique(
        self, flat: Tensor, error: Exception | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, inverse, unique): the batch's unique rows fetched from their owners (steps 1-4
        above; differentiable: their gradient goes back to the owners), ``rows[inverse]`` being
        the batch's rows and ``unique`` the global ids of ``rows``. A collective.

        ``error``: a problem the caller found in its arguments' values (bad offsets); like a bad
        index, it makes every rank raise (this rank raises ``error``) before anything is written.
        """
        device = self.weight.device
        out_of_range = (flat < 0) | (flat >= self.num_embeddings)
        bad = error is not None or bool(out_of_range.any())
        if bad:  # still join the count exchange, so the other ranks learn it and raise too
            unique = inverse = local = flat.new_empty(0)
            send_counts = torch.zeros(self.world_size, dtype=torch.int64, device=device)
        else:
            unique, inverse = torch.unique(flat, sorted=True, return_inverse=True)
            owner, local = self.layout.owner_and_local(unique)
            if not self.layout.is_blocks:  # sorted ids are grouped by owner only for blocks
                order = torch.argsort(owner, stable=True)
                owner, local, unique = owner[order], local[order], unique[order]
                inverse = torch.argsort(order)[inverse]
            send_counts = torch.bincount(owner, minlength=self.world_size)
        recv_counts, bad_ranks = exchange_counts(send_counts, bad, self.group)
        if bad_ranks:
            if error is not None:
                raise error
            if bad:
                value = int(flat[out_of_range][0])
                raise IndexError(
                    f"index {value} is out of range for a sharded table of "
                    f"{self.num_embeddings} rows (rank {self.rank}); no rank looked anything up"
                )
            raise IndexError(
                f"rank(s) {bad_ranks} looked up an index outside [0, {self.num_embeddings}) "
                f"or passed bad offsets; the lookup was abandoned on every rank (rank "
                f"{self.rank} here)"
            )
        send_splits = send_counts.tolist()
        wanted = exchange(local, send_splits, recv_counts, self.group)
        rows = embedding(
            wanted, self.weight, self._padding_local, self.max_norm, self.norm_type,
            sparse=self.sparse, bounds_check="none",
        )
        scale = 1.0 / self.world_size if self.grad_reduction == "mean" else 1.0
        mine = ExchangeRows.apply(rows, recv_counts, send_splits, self.group, scale)
        return mine, inverse, unique

    @torch.no_grad()
    def full_weight(self) -> Tensor:
        """The whole (V, D) table on every rank (a collective: every rank must call it)."""
        counts = [self.layout.num_rows_of(r) for r in range(self.world_size)]
        width = max(counts, default=0)
        local = self.weight.detach()
        padded = local.new_zeros((width, self.embedding_dim))
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded, group=self.group)
        full = local.new_empty((self.num_embeddings, self.embedding_dim))
        for r, (part, count) in enumerate(zip(gathered, counts, strict=True)):
            full[self.layout.rows_of(r).to(full.device)] = part[:count]
        return full

    # ----- checkpoints: the shard as a DTensor, so torch.distributed.checkpoint reshards it

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        weight = self.weight if keep_vars else self.weight.detach()
        destination[prefix + "weight"] = as_global(self, weight)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
        error_msgs,
    ) -> None:
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        try:
            local = local_part(self, state_dict[key])
        except ValueError as error:
            error_msgs.append(f"{key}: {error}")
            return
        with torch.no_grad():
            if local.data_ptr() != self.weight.data_ptr():
                self.weight.copy_(local)

    def extra_repr(self) -> str:
        text = (f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}/"
                f"{self.world_size}, local_rows={self.weight.shape[0]}")
        for name in ("padding_idx", "max_norm"):
            if getattr(self, name) is not None:
                text += f", {name}={getattr(self, name)}"
        if self.sparse:
            text += ", sparse=True"
        if self.grad_reduction != "sum":
            text += f", grad_reduction={self.grad_reduction!r}"
        return text

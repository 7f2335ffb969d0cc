"""``ShardedEmbeddingBag``: ``sparsemb.EmbeddingBag`` over a row-sharded table.

The rows are sharded and exchanged exactly as ``ShardedEmbedding`` does (its layout, its
collectives, its owner-side lookup with max_norm): the batch's unique rows are fetched from
their owners, then pooled here, on the requesting rank, by ``sparsemb.embedding_bag`` over the
fetched rows with the indices remapped to them. The pooled gradient comes back as one row per
unique index and travels to the owners through the same exchange. One exchange code path;
a rank sends at most its batch's unique rows, never per-bag or per-index rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from sparsemb._checks import bag_mode, check_bag_args
from sparsemb.distributed.embedding import ShardedEmbedding, pretrained_shard
from sparsemb.functional_bag import bag_layout, embedding_bag


class ShardedEmbeddingBag(ShardedEmbedding):
    """``sparsemb.EmbeddingBag`` (modes sum / mean / max, offsets or 2-D input,
    ``per_sample_weights`` for sum, ``padding_idx``, ``include_last_offset``) whose rows live on
    the ranks of ``process_group``, sharded like ``ShardedEmbedding`` (a subclass: same
    ``weight`` shard, ``row_map``, ``grad_reduction``, ``full_weight()`` and checkpoints).
    ``scale_grad_by_freq`` is not offered. Every rank must call forward and backward.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Tensor | None = None,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        device=None,
        dtype=None,
        *,
        _freeze: bool = False,
        process_group: dist.ProcessGroup | None = None,
        row_map: Tensor | None = None,
        grad_reduction: str = "sum",
    ) -> None:
        bag_mode(mode)
        if scale_grad_by_freq:
            raise ValueError("scale_grad_by_freq is not offered by sharded tables (the owner "
                             "sees each rank's rows once, not their frequency)")
        super().__init__(
            num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, sparse, _weight,
            _freeze, device, dtype, process_group=process_group, row_map=row_map,
            grad_reduction=grad_reduction,
        )  # fmt: skip
        self.mode, self.include_last_offset = mode, bool(include_last_offset)

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        **options,
    ) -> ShardedEmbeddingBag:
        """Every rank passes the full (V, D) table and keeps a copy of its own rows."""
        local = pretrained_shard(embeddings, options)
        num, dim = embeddings.shape
        return cls(num, dim, max_norm, norm_type, scale_grad_by_freq, mode, sparse, local,
                   include_last_offset, padding_idx, _freeze=freeze, **options)

    def forward(
        self,
        input: Tensor,
        offsets: Tensor | None = None,
        per_sample_weights: Tensor | None = None,
    ) -> Tensor:
        check_bag_args(input, self.weight, offsets, per_sample_weights, self.mode, False,
                       self.max_norm, self.norm_type, "raise")
        flat = self._flat_indices(input)
        error, bag_offsets = None, None
        try:  # bad offsets values: every rank abandons the lookup, as for a bad index
            _, bag_offsets = bag_layout(input, offsets, self.include_last_offset)
        except ValueError as caught:
            error = caught
        rows, inverse, unique = self._fetch_unique(flat, error)
        padding = None  # the padding row's place among the fetched rows, if the batch has it
        if self.padding_idx is not None:
            hit = torch.nonzero(unique == self.padding_idx)
            padding = int(hit[0, 0]) if hit.numel() else None
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
        return embedding_bag(
            inverse, rows, bag_offsets, mode=self.mode, per_sample_weights=per_sample_weights,
            include_last_offset=True, padding_idx=padding, bounds_check="none",
        )

    def extra_repr(self) -> str:
        text = super().extra_repr() + f", mode={self.mode!r}"
        return text + (", include_last_offset=True" if self.include_last_offset else "")
